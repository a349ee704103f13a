"""curate.executors: run a :class:`curate.core.run.RunSpec` locally (processes) or on Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curate.core.run import RunSpec
    from curate.executors.base import RunResult


def run_spec(spec: RunSpec, *, progress: bool = True) -> RunResult:
    """Run ``spec`` on the executor its ``executor.type`` names (Ray is imported only when asked for).

    An output or rejects path that is a URI (``s3://...``) is checked first (a non-empty prefix curate did
    not write is refused unless ``output.overwrite``), the run writes to its local stage in the work dir,
    and the stage is uploaded when the run is complete (:mod:`curate.io.storage`)."""
    from curate.io.storage import is_uri

    if is_uri(spec.output.path) or is_uri(spec.rejects_spec.path):
        return _run_remote(spec, progress=progress)
    return _run_local(spec, progress=progress)


def _run_remote(spec: RunSpec, *, progress: bool) -> RunResult:
    import dataclasses

    from curate.core.errors import ConfigError
    from curate.io.storage import RemoteRoot, is_uri, stage_dir

    remotes: list[tuple[RemoteRoot, object]] = []
    problems: list[str] = []
    changes: dict = {}
    for name, sp, key in (("output.path", spec.output, "output"), ("rejects.path", spec.rejects_spec, "rejects")):
        if not is_uri(sp.path):
            continue
        root = RemoteRoot(sp.path, dict(sp.storage_options))
        problems += root.problems(name, overwrite=spec.output.overwrite)
        stage = stage_dir(spec.work_dir, sp.path)
        remotes.append((root, stage))
        changes[key] = sp.model_copy(update={"path": str(stage), "storage_options": {}})
    if problems:
        raise ConfigError(problems)
    result = _run_local(dataclasses.replace(spec, **changes), progress=progress)
    # after a complete run only: a failed run leaves the prefix as it was, and its rerun resumes locally
    result.remote = {root.uri: root.sync(stage) for root, stage in remotes}  # type: ignore[arg-type]
    return result


def _run_local(spec: RunSpec, *, progress: bool) -> RunResult:
    if spec.executor.type == "ray":
        from curate.executors.ray import RayExecutor

        return RayExecutor(spec).run(progress=progress)
    from curate.executors.local import LocalExecutor

    return LocalExecutor(spec).run(progress=progress)
