"""curate.executors: run a :class:`curate.core.run.RunSpec` locally (processes) or on Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from curate.core.run import RunSpec
    from curate.executors.base import RunResult
    from curate.io.storage import RemoteRoot


def run_spec(spec: RunSpec, *, progress: bool = True) -> RunResult:
    """Run ``spec`` on the executor its ``executor.type`` names (Ray is imported only when asked for).

    An output or rejects path that is a URI (``s3://...``) is locked for this run on this machine
    (:func:`curate.io.storage.prefix_lock`) and checked (a non-empty prefix curate did not write is refused
    unless ``output.overwrite``), the run writes to its local stage in the work dir, and the stage is
    uploaded when the run is complete (:mod:`curate.io.storage`)."""
    from curate.io.storage import is_uri

    if is_uri(spec.output.path) or is_uri(spec.rejects_spec.path):
        return _run_remote(spec, progress=progress)
    return _run_local(spec, progress=progress)


def stage_remote(spec: RunSpec) -> tuple[RunSpec, list[tuple[RemoteRoot, Path]]]:
    """``spec`` with every URI output (and rejects) path replaced by its local stage in the work dir, and
    the (remote root, stage) pairs to sync after the run. Touches no storage."""
    import dataclasses

    from curate.io.storage import RemoteRoot, is_uri, stage_dir

    remotes: list[tuple[RemoteRoot, Path]] = []
    changes: dict = {}
    for sp, key in ((spec.output, "output"), (spec.rejects_spec, "rejects")):
        if is_uri(sp.path):
            stage = stage_dir(spec.work_dir, sp.path)
            remotes.append((RemoteRoot(sp.path, dict(sp.storage_options)), stage))
            changes[key] = sp.model_copy(update={"path": str(stage), "storage_options": {}})
    return (dataclasses.replace(spec, **changes) if changes else spec), remotes


def _run_remote(spec: RunSpec, *, progress: bool) -> RunResult:
    import contextlib

    from curate.core.errors import ConfigError
    from curate.io.storage import prefix_lock

    staged, remotes = stage_remote(spec)
    with contextlib.ExitStack() as held:
        # one run per remote prefix on this machine, whatever its work dir (the work dir's own lock only
        # sees runs sharing it): taken before the prefix is checked, released after the upload
        for uri in sorted({root.uri.rstrip("/") for root, _ in remotes}):
            lock = prefix_lock(uri, "output.path" if uri == spec.output.path.rstrip("/") else "rejects.path")
            lock.acquire()
            held.callback(lock.release)
        problems: list[str] = []
        for root, _ in remotes:
            name = "output.path" if root.uri == spec.output.path else "rejects.path"
            problems += root.problems(name, overwrite=spec.output.overwrite)
        if problems:
            raise ConfigError(problems)
        result = _run_local(staged, progress=progress)
        # after a complete run only: a failed run leaves the prefix as it was, and its rerun resumes locally
        result.remote = {root.uri: root.sync(stage) for root, stage in remotes}  # type: ignore[arg-type]
    return result


def _run_local(spec: RunSpec, *, progress: bool) -> RunResult:
    if spec.executor.type == "ray":
        from curate.executors.ray import RayExecutor

        return RayExecutor(spec).run(progress=progress)
    from curate.executors.local import LocalExecutor

    return LocalExecutor(spec).run(progress=progress)
