"""A small process pool for shard tasks: spawn-started workers (polars' thread pool is not fork-safe),
results in submission order, serial in-process when one worker is asked for."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any


def iter_tasks(fn: Callable[..., Any], tasks: Iterable[tuple], workers: int) -> Iterator[Any]:
    """Yield ``fn(*task)`` results as tasks complete (serially when ``workers == 1``)."""
    tasks = list(tasks)
    if not tasks:
        return
    if workers <= 1 or len(tasks) == 1:
        for t in tasks:
            yield fn(*t)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as ex:
        pending = {ex.submit(fn, *t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def run_tasks(fn: Callable[..., Any], tasks: Iterable[tuple], workers: int) -> list[Any]:
    return list(iter_tasks(fn, tasks, workers))
