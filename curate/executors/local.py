"""The default executor: a pool of worker processes over input shards on one machine (forks of a fork
server that has imported curate once, or spawned; ``executor.start_method``, :mod:`curate.core.pool`)."""

from __future__ import annotations

from collections.abc import Callable

from curate.core import pool
from curate.core.runner import ShardTask, run_shard
from curate.executors.base import Executor, RunResult

__all__ = ["LocalExecutor", "RunResult"]


def _run_in_worker(task: ShardTask) -> None:
    run_shard(task, progress=pool.report)


def _label(t: ShardTask) -> str:
    return f"{t.shard.name} of segment {t.segment} (input {t.shard.path})"


class LocalExecutor(Executor):
    """Runs shards in ``workers`` processes (in-process when 1); memory is bounded by the batch size
    times the number of workers, not by the corpus. See :mod:`curate.core.pool` for what happens
    on Ctrl-C, SIGTERM and a worker that dies."""

    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        if self.workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                run_shard(t, progress)
            return
        pool.run_tasks(_run_in_worker, [(t,) for t in tasks], self.workers, progress=progress,
                       labels=[_label(t) for t in tasks])
