"""A small process pool for shard tasks: spawn-started workers (polars' thread pool is not fork-safe),
results as tasks complete, serial in-process when one worker is asked for.

What it guarantees, whatever happens to the run:

- Ctrl-C: workers ignore SIGINT (it reaches the whole process group), so only the main process sees it;
  it stops the workers and the CLI prints one line. SIGINT and SIGTERM are blocked while workers start,
  so a signal during their start-up cannot print a traceback from inside one either.
- No orphans: every worker asks the kernel to kill it when the main process dies
  (``PR_SET_PDEATHSIG``, Linux; a watchdog thread elsewhere), and the main process kills its workers on
  any exception (Ctrl-C, SIGTERM turned into an exception by the CLI, an error in one shard).
- A worker killed from outside (SIGKILL, the out-of-memory killer) is a :class:`CurateError` naming the
  task it was running, not a ``BrokenProcessPool`` traceback.
- A script without ``if __name__ == "__main__":`` works: when no task needs a class or function defined
  in ``__main__``, workers start without re-running the user's script (multiprocessing's spawn decides
  that from ``sys.modules['__main__']``); when one does and the run is not under that guard, a
  :class:`CurateError` says to add it (instead of ``RuntimeError ... bootstrapping phase``).
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import io
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from curate.core.errors import CurateError

_QUEUE: Any = None  # in a worker: where progress and "started task" messages go


def _init_worker(q: Any, parent: int) -> None:
    global _QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process alone answers Ctrl-C
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while spawning (see _signals_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(parent)
    _QUEUE = q


def _die_with_parent(parent: int) -> None:
    """Make this worker die with the main process, even when that one is SIGKILLed."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="curate-parent-watch").start()


def report(n: int) -> None:
    """Progress from inside a task (documents done), passed to the ``progress`` callback of the main
    process; does nothing outside a pool worker."""
    if _QUEUE is not None:
        _QUEUE.put(("n", os.getpid(), n))


def _call(fn: Callable[..., Any], label: str, args: tuple) -> Any:
    if _QUEUE is not None:
        _QUEUE.put(("start", os.getpid(), label))  # synchronous: known before the task can die
    return fn(*args)


def _default_label(i: int, task: tuple) -> str:
    paths = [str(a) for a in task if isinstance(a, (str, Path))]
    return f"task {i} ({', '.join(paths)})" if paths else f"task {i}"


class _Pool:
    """Spawned workers, their message queue and the thread that forwards progress: kept for a whole run
    when :func:`shared_pool` is open (workers then start once, not once per segment and per fit)."""

    def __init__(self, workers: int):
        self.workers = workers
        ctx = mp.get_context("spawn")
        self.q = ctx.SimpleQueue()
        self.running: dict[int, str] = {}
        self.progress: Callable[[int], None] | None = None
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._pump, daemon=True, name="curate-progress")
        self.th.start()
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=(self.q, os.getpid()))
        self.procs: dict[int, Any] = {}
        self.broken = False

    def _pump(self) -> None:
        while not self.stop.is_set():
            if self.q.empty():
                self.stop.wait(0.05)
                continue
            kind, pid, value = self.q.get()
            if kind == "start":
                self.running[pid] = value
            elif self.progress is not None:
                self.progress(value)

    def run(self, fn: Callable[..., Any], tasks: list[tuple], names: list[str],
            progress: Callable[[int], None] | None) -> Iterator[Any]:
        self.progress = progress
        pending: set = set()
        try:
            with spawn_guard((fn, tasks)), _signals_blocked(), _polars_threads(self.workers):
                futures = {self.ex.submit(_call, fn, name, t): name for name, t in zip(names, tasks)}
            pending = set(futures)
            self.procs.update(getattr(self.ex, "_processes", None) or {})  # spawn starts every worker on submit
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    try:
                        result = f.result()
                    except BrokenProcessPool:
                        self.broken = True
                        self.stop.set()
                        self.th.join(timeout=1.0)
                        raise _dead_worker_error(self.procs, self.running) from None
                    yield result
        except BaseException:
            # no Future.cancel(): the pool's manager thread would then fail setting their exception
            # (InvalidStateError traceback); killing the workers makes it fail every pending future itself
            self.broken = True
            _kill_workers(self.ex)
            pending = set(wait(pending, timeout=10.0).not_done) if pending else set()
            self.close(wait_for=not pending, cancel=bool(pending))
            raise
        finally:
            self.progress = None

    def close(self, *, wait_for: bool = True, cancel: bool = False) -> None:
        self.ex.shutdown(wait=wait_for, cancel_futures=cancel)
        self.stop.set()
        self.th.join(timeout=1.0)


_SHARED: dict[str, Any] = {"open": 0, "pool": None}


@contextlib.contextmanager
def shared_pool() -> Iterator[None]:
    """Within this block, :func:`iter_tasks` keeps its worker processes between calls (an executor's run:
    its segments and global-stage fits), so workers are spawned and import curate, polars and numba once
    per run instead of once per segment. Closed (workers stopped) at the end of the block."""
    _SHARED["open"] += 1
    try:
        yield
    finally:
        _SHARED["open"] -= 1
        if _SHARED["open"] == 0 and _SHARED["pool"] is not None:
            pool, _SHARED["pool"] = _SHARED["pool"], None
            pool.close(wait_for=not pool.broken)


def iter_tasks(fn: Callable[..., Any], tasks: Iterable[tuple], workers: int, *,
               progress: Callable[[int], None] | None = None, labels: list[str] | None = None) -> Iterator[Any]:
    """Yield ``fn(*task)`` results as tasks complete (serially when ``workers == 1``). In workers,
    ``report(n)`` reaches ``progress(n)``; ``labels`` name the tasks in errors (a worker that died).
    Inside :func:`shared_pool` the workers are reused by later calls with the same number of workers."""
    tasks = list(tasks)
    if not tasks:
        return
    if workers <= 1 or len(tasks) == 1:
        for t in tasks:
            yield fn(*t)
        return
    names = labels if labels is not None else [_default_label(i, t) for i, t in enumerate(tasks)]
    # a payload that needs the user's __main__ gets its own workers (shared ones started without it)
    share = _SHARED["open"] > 0 and not main_references((fn, tasks))
    pool = _SHARED["pool"] if share else None
    if pool is not None and (pool.broken or pool.workers != workers):
        pool.close(wait_for=not pool.broken)
        pool = _SHARED["pool"] = None
    if pool is None:
        pool = _Pool(workers if share else min(workers, len(tasks)))
        if share:
            _SHARED["pool"] = pool
    try:
        yield from pool.run(fn, tasks, names, progress)
    finally:
        if not share:
            pool.close(wait_for=not pool.broken)
        elif pool.broken:
            _SHARED["pool"] = None


@contextlib.contextmanager
def _polars_threads(workers: int) -> Iterator[None]:
    """Workers started inside get ``POLARS_MAX_THREADS`` = cores / workers (at least 1) unless the user set
    it: each worker's polars would otherwise start one thread per core, and ``workers`` processes then
    fight over the cores (measured: 2 workers on 2 cores ran 1.2x one worker, not 2x)."""
    if "POLARS_MAX_THREADS" in os.environ:
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["POLARS_MAX_THREADS"] = str(max(1, cores // max(1, workers)))
    try:
        yield
    finally:
        del os.environ["POLARS_MAX_THREADS"]


def run_tasks(fn: Callable[..., Any], tasks: Iterable[tuple], workers: int, *,
              progress: Callable[[int], None] | None = None, labels: list[str] | None = None) -> list[Any]:
    return list(iter_tasks(fn, tasks, workers, progress=progress, labels=labels))


def _kill_workers(ex: ProcessPoolExecutor) -> None:
    """Stop every worker now (a shard may run for minutes; waiting for it would ignore Ctrl-C). Their
    temporary files are removed at the start of the next run."""
    procs = list((getattr(ex, "_processes", None) or {}).values())  # public only from Python 3.14
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=1.0)


def _dead_worker_error(procs: dict[int, Any], running: dict[int, str]) -> CurateError:
    dead = []
    for pid, p in procs.items():
        p.join(timeout=2.0)
        if p.exitcode not in (None, 0, -signal.SIGTERM):  # SIGTERM: stopped by the pool after the death
            dead.append((pid, p.exitcode))
    if not dead:
        dead = [(pid, None) for pid in running]
    parts = []
    for pid, code in dead:
        if code is None:
            how = "died"
        elif code < 0:
            name = signal.Signals(-code).name
            how = f"was killed by {name}" + (" (often the out-of-memory killer)" if name == "SIGKILL" else "")
        else:
            how = f"exited with code {code}"
        parts.append(f"worker process {pid} {how} while running {running.get(pid, 'a task that had not started')}")
    return CurateError("; ".join(parts) + ". Finished shards are kept: rerun the same command to resume.")


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM while workers are spawned: the pool is never interrupted half-built, and
    the workers (which inherit the mask) ignore SIGINT before they unblock it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _MainFinder(pickle.Pickler):
    """Pickles into nothing, noting every class or function from ``__main__`` it meets."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.found: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            self.found.add(getattr(obj, "__qualname__", repr(obj)))
        return NotImplemented


def main_references(payload: object) -> set[str]:
    """Names of the classes and functions defined in ``__main__`` that pickling ``payload`` needs."""
    finder = _MainFinder()
    try:
        finder.dump(payload)
    except Exception:  # noqa: BLE001 - unpicklable: submit reports it; nothing more to learn here
        pass
    return finder.found


@contextlib.contextmanager
def spawn_guard(payload: object) -> Iterator[None]:
    """Start spawn workers (inside this block) so that a user's script without a ``__main__`` guard works.

    If ``payload`` (what the workers will unpickle) needs nothing from ``__main__``, ``__main__`` is hidden
    from multiprocessing while workers start, so they do not re-run the script. Otherwise the workers must
    import the script; that is safe only if the run is under ``if __name__ == "__main__":`` - if not, a
    :class:`CurateError` says so (spawn would re-run the script in every worker and fail).
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    needed = main_references(payload)
    path = getattr(main, "__file__", None)
    if not needed:
        stub = types.ModuleType("__main__")  # no __file__, no __spec__: spawn imports no main module
        sys.modules["__main__"] = stub
        try:
            yield
        finally:
            sys.modules["__main__"] = main
        return
    names = ", ".join(sorted(needed))
    if path is None and getattr(main, "__spec__", None) is None:
        raise CurateError(f"{names} is defined interactively (in __main__ without a file), so worker processes "
                          "cannot import it: define it in a module, or run with workers=1")
    if not _run_is_guarded(main):
        raise CurateError(f"{names} is defined in the script {path}, which every worker process must import; "
                          'put the code that runs the pipeline under `if __name__ == "__main__":` (or move '
                          f"{names} into a module, or run with workers=1)")
    yield


def _run_is_guarded(main: types.ModuleType) -> bool:
    """Whether the top-level statement of ``__main__`` now running is ``if __name__ == "__main__":``."""
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:
        return True  # the script is not running its top level now: re-importing it runs no pipeline
    try:
        tree = ast.parse(Path(main.__file__ or "").read_text())
    except (OSError, SyntaxError, ValueError):
        return True
    line = frame.f_lineno
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return isinstance(node, ast.If) and _is_main_test(node.test)
    return True


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
