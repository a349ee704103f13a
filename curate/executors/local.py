"""The default executor: a pool of spawn-started worker processes over input shards on one machine."""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Callable

from curate.core.runner import ShardTask, run_shard
from curate.executors.base import Executor, RunResult
from curate.executors.pool import run_tasks

__all__ = ["LocalExecutor", "RunResult"]


def _run_with_queue(task: ShardTask, q) -> None:
    run_shard(task, progress=q.put)


class LocalExecutor(Executor):
    """Runs shards in ``workers`` processes (in-process when 1); memory is bounded by the batch size
    times the number of workers, not by the corpus."""

    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        if self.workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                run_shard(t, progress)
            return
        with mp.get_context("spawn").Manager() as manager:
            q = manager.Queue()
            stop = threading.Event()

            def pump() -> None:
                while not stop.is_set():
                    try:
                        progress(q.get(timeout=0.2))
                    except queue.Empty:
                        continue

            th = threading.Thread(target=pump, daemon=True)
            th.start()
            try:
                run_tasks(_run_with_queue, [(t, q) for t in tasks], self.workers)
            finally:
                stop.set()
                th.join()
