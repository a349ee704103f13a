"""Ray executor: the same shard tasks as the local executor, run as Ray tasks across a cluster.

Each shard of a segment becomes one Ray task running :func:`curate.core.runner.run_shard`, so outputs,
rejects, stats and resume markers are byte-for-byte those of the local executor. The work dir and the
output paths must be on storage every node sees (a shared filesystem). Global-stage fits run on the
driver; their per-shard work (``FitContext.map_shards``) uses the driver's processes.
"""

from __future__ import annotations

from collections.abc import Callable

from curate.core.errors import MissingDependencyError
from curate.core.run import RunSpec
from curate.core.runner import ShardTask, run_shard
from curate.executors.base import Executor


def _remote_run(task: ShardTask) -> int:
    stats = run_shard(task)
    return stats[0].docs_in if stats else 0


class RayExecutor(Executor):
    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        self.address = spec.executor.address

    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("executor: ray", "ray", "ray") from None
        if not ray.is_initialized():
            local = self.address is None
            ray.init(address=self.address, num_cpus=self.workers if local else None, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        remote = ray.remote(_remote_run)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                progress(ray.get(ref))
