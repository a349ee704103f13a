"""curate.executors: run a :class:`curate.core.run.RunSpec` locally (processes) or on Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curate.core.run import RunSpec
    from curate.executors.base import RunResult


def run_spec(spec: RunSpec, *, progress: bool = True) -> RunResult:
    """Run ``spec`` on the executor its ``executor.type`` names (Ray is imported only when asked for)."""
    if spec.executor.type == "ray":
        from curate.executors.ray import RayExecutor

        return RayExecutor(spec).run(progress=progress)
    from curate.executors.local import LocalExecutor

    return LocalExecutor(spec).run(progress=progress)
