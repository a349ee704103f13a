"""A small process pool for shard tasks: results as tasks complete, serial in-process when one worker is
asked for.

How workers start (:func:`resolve_start_method`; the executor option ``start_method`` or the environment
variable ``CURATE_START_METHOD``: ``auto``, ``forkserver`` or ``spawn``):

- ``forkserver`` (``auto`` on Linux): one server process per run imports polars, numpy, pydantic, numba's
  registries and curate's core and executor modules once (:mod:`curate.core._forkserver`), and every
  worker is a fork of it, so a worker does not pay that import again (~1.4 CPU-seconds per spawned
  worker; a fork costs ~0.02). The server starts with the run and is stopped and reaped at its end.
  No polars query ever runs in the server, so polars' compute thread pool, which is not fork-safe,
  never exists there; a worker gets the driver's environment as it was when the worker started (as
  under spawn, where it is inherited), so ``POLARS_MAX_THREADS`` and the rest apply.
- ``spawn`` (``auto`` elsewhere, and the fallback when the fork server cannot start): each worker is a
  fresh interpreter.

What it guarantees, whatever happens to the run:

- Ctrl-C: workers ignore SIGINT (it reaches the whole process group), so only the main process sees it;
  it stops the workers and the CLI prints one line. SIGINT and SIGTERM are blocked while workers start,
  so a signal during their start-up cannot print a traceback from inside one either.
- No orphans: every worker asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``, Linux;
  a watchdog thread elsewhere). Under spawn the parent is the main process; under forkserver it is the
  fork server, which asks the same against the main process, and each worker also watches the main
  process through the pipe multiprocessing keeps open to it (a thread blocked on it exits the worker
  when it closes), so a worker never outlives the main process even if the server was killed. The main
  process kills its workers on any exception (Ctrl-C, SIGTERM turned into an exception by the CLI, an
  error in one shard).
- A worker killed from outside (SIGKILL, the out-of-memory killer) is a :class:`CurateError` naming the
  task it was running, not a ``BrokenProcessPool`` traceback.
- A script without ``if __name__ == "__main__":`` works: when no task needs a class or function defined
  in ``__main__``, workers start without re-running the user's script (multiprocessing decides that
  from ``sys.modules['__main__']``, under spawn and forkserver alike; the fork server itself never
  imports ``__main__``); when one does and the run is not under that guard, a
  :class:`CurateError` says to add it (instead of ``RuntimeError ... bootstrapping phase``).
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import io
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from curate.core import _forkserver
from curate.core.errors import CurateError
from curate.core.jit import freeze_gc_at_exit

log = logging.getLogger("curate")

_QUEUE: Any = None  # in a worker: where progress and "started task" messages go

START_METHOD_ENV = "CURATE_START_METHOD"
START_METHODS = ("auto", "forkserver", "spawn")


def resolve_start_method(requested: str | None = None) -> str:
    """The start method workers get: ``requested`` (the executor's ``start_method``) unless it is None or
    ``auto``, else ``$CURATE_START_METHOD`` unless unset or ``auto``; ``auto`` is ``forkserver`` on Linux
    (where the fork server's guarantees above hold: ``PR_SET_PDEATHSIG``, /proc) and ``spawn`` elsewhere
    (macOS, Windows). Asking for ``forkserver`` where multiprocessing has none is a :class:`CurateError`."""
    method = requested if requested not in (None, "auto") else os.environ.get(START_METHOD_ENV, "auto") or "auto"
    if method not in START_METHODS:
        raise CurateError(f"{START_METHOD_ENV}={method!r}: expected one of {', '.join(START_METHODS)}")
    if method == "auto":
        return "forkserver" if sys.platform.startswith("linux") and _has_forkserver() else "spawn"
    if method == "forkserver" and not _has_forkserver():
        raise CurateError(f"start method 'forkserver' is not available on {sys.platform}: use 'spawn' or 'auto'")
    return method


def _has_forkserver() -> bool:
    return "forkserver" in mp.get_all_start_methods()


def _init_worker(q: Any, parent: int, env: dict[str, str] | None) -> None:
    global _QUEUE
    if env is not None:  # forkserver: the server's environment is the driver's of long ago
        os.environ.clear()
        os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process alone answers Ctrl-C
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while spawning (see _signals_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(parent, forked=env is not None)
    freeze_gc_at_exit()  # a worker holds only curate's objects (curate/core/jit.py)
    _QUEUE = q


def _die_with_parent(parent: int, *, forked: bool = False) -> None:
    """Make this worker die with the main process ``parent``, even when that one is SIGKILLed.

    Spawned (``forked=False``): the worker's parent is the main process; ``PR_SET_PDEATHSIG`` ties it to
    it, a thread polling ``getppid`` where that is not available. Forked by the fork server
    (``forked=True``): ``PR_SET_PDEATHSIG`` ties it to the server, which dies with the main process (see
    :mod:`curate.core._forkserver`); and a thread waits on the pipe multiprocessing keeps from the main
    process (``parent_process().sentinel``: at EOF once the main process is gone, whatever its pid is
    reused for), which covers a server that could not ask for its own parent-death signal."""
    armed = _forkserver.arm_parent_death()
    if forked:
        main = mp.parent_process()
        if main is None or not main.is_alive():  # the main process died before the request took effect
            os._exit(1)
        sentinel = main.sentinel

        def wait_for_main() -> None:
            from multiprocessing.connection import wait as wait_fds

            wait_fds([sentinel])
            os._exit(1)

        threading.Thread(target=wait_for_main, daemon=True, name="curate-parent-watch").start()
        return
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
    """Workers, their message queue and the thread that forwards progress: kept for a whole run when
    :func:`shared_pool` is open (workers then start once, not once per segment and per fit)."""

    def __init__(self, workers: int, method: str = "spawn"):
        self.workers = workers
        self.asked = method  # what the run asked for; ``method`` is what the workers got
        self.method = method
        self.q = mp.get_context("spawn").SimpleQueue()  # a pipe and a lock: the same under either method
        self.running: dict[int, str] = {}
        self.progress: Callable[[int], None] | None = None
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._pump, daemon=True, name="curate-progress")
        self.th.start()
        self.ex: ProcessPoolExecutor | None = None  # made by the first run(): the fork server is checked then
        #: forkserver: the driver's environment, filled in just before the workers start (pickled then)
        self.env: dict[str, str] | None = {} if method == "forkserver" else None
        self.procs: dict[int, Any] = {}
        self.broken = False

    def _executor(self) -> ProcessPoolExecutor:
        """The executor, made on first use (inside the blocks of :meth:`run` that workers start in)."""
        if self.ex is None:
            if self.method == "forkserver" and not _start_server():
                log.warning("curate: the fork server did not start; worker processes are spawned instead")
                self.method, self.env = "spawn", None
            self.ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context(self.method),
                                          initializer=_init_worker, initargs=(self.q, os.getpid(), self.env))
        return self.ex

    def _drain(self) -> None:
        """Read the "started task" messages the pump thread (stopped) had not read yet."""
        while not self.q.empty():
            kind, pid, value = self.q.get()
            if kind == "start":
                self.running[pid] = value

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
                ex = self._executor()
                if self.env is not None:  # what a spawned worker would inherit now
                    self.env.clear()
                    self.env.update(os.environ)
                futures = {ex.submit(_call, fn, name, t): name for name, t in zip(names, tasks)}
            pending = set(futures)
            self.procs.update(getattr(ex, "_processes", None) or {})  # workers start on submit (not fork)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    try:
                        result = f.result()
                    except BrokenProcessPool:
                        self.broken = True
                        self.stop.set()
                        self.th.join(timeout=1.0)
                        self._drain()  # a task that died at once: its "start" may still be in the queue
                        raise _dead_worker_error(self.procs, self.running, ex) from None
                    yield result
        except BaseException:
            # no Future.cancel(): the pool's manager thread would then fail setting their exception
            # (InvalidStateError traceback); killing the workers makes it fail every pending future itself
            self.broken = True
            if self.ex is not None:
                _kill_workers(self.ex)
            pending = set(wait(pending, timeout=10.0).not_done) if pending else set()
            self.close(wait_for=not pending, cancel=bool(pending))
            raise
        finally:
            self.progress = None

    def close(self, *, wait_for: bool = True, cancel: bool = False) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=wait_for, cancel_futures=cancel)
        self.stop.set()
        self.th.join(timeout=1.0)


_SHARED: dict[str, Any] = {"open": 0, "pool": None, "method": None}


@contextlib.contextmanager
def shared_pool(start_method: str | None = None, *, workers: int = 1) -> Iterator[None]:
    """Within this block, :func:`iter_tasks` keeps its worker processes between calls (an executor's run:
    its segments and global-stage fits), so workers start and import curate, polars and numba once per
    run instead of once per segment. Closed (workers stopped) at the end of the block. ``start_method``
    (the executor's option: ``auto``, ``forkserver``, ``spawn``; see :func:`resolve_start_method`) holds
    for every pool started inside, shared or not. With ``workers > 1`` (the run's) the fork server starts
    at once, importing while the driver plans the run; it is stopped with the block."""
    method = resolve_start_method(start_method)
    outer = _SHARED["method"]
    _SHARED["open"] += 1
    _SHARED["method"] = method
    try:
        if workers > 1 and method == "forkserver" and _SHARED["open"] == 1:
            _launch_server()
        yield
    finally:
        _SHARED["open"] -= 1
        _SHARED["method"] = outer
        if _SHARED["open"] == 0:
            if _SHARED["pool"] is not None:
                pool, _SHARED["pool"] = _SHARED["pool"], None
                pool.close(wait_for=not pool.broken)
            _stop_server()


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
    method = _SHARED["method"] or resolve_start_method()
    if pool is not None and (pool.broken or pool.workers != workers or pool.asked != method):
        pool.close(wait_for=not pool.broken)
        pool = _SHARED["pool"] = None
    if pool is None:
        pool = _Pool(workers if share else min(workers, len(tasks)), method)
        if share:
            _SHARED["pool"] = pool
    try:
        yield from pool.run(fn, tasks, names, progress)
    finally:
        if not share:
            pool.close(wait_for=not pool.broken)
            if _SHARED["open"] == 0:
                _stop_server()  # a pool outside any run: its server goes with it, as spawned workers do
        elif pool.broken:
            _SHARED["pool"] = None


_SERVER: dict[str, Any] = {"checked": None, "ours": None}
_SERVER_LOCK = threading.Lock()


def _launch_server() -> None:
    """Start multiprocessing's fork server as curate's (:mod:`curate.core._forkserver` preloaded) unless it
    runs; returns at once (the server imports in the background, overlapping the driver's own set-up)."""
    from multiprocessing import forkserver

    import curate

    with _SERVER_LOCK:
        # curate's module alone: the default, ['__main__'], would make the server import the user's script
        forkserver.set_forkserver_preload(["curate.core._forkserver"])
        env = {_forkserver.PARENT_ENV: str(os.getpid()),
               _forkserver.CURATE_ENV: os.path.dirname(os.path.abspath(curate.__file__)),
               # a server started from another thread must not die with that thread (PR_SET_PDEATHSIG
               # follows the thread that started it); its workers still watch the main process
               _forkserver.ARM_ENV: "1" if threading.current_thread() is threading.main_thread() else "0"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        before = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
        try:
            with _signals_blocked():  # the server keeps this mask; workers unblock them in _init_worker
                forkserver.ensure_running()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        after = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
        if after != before:  # started now, by curate (one some other code started stays theirs)
            _SERVER["ours"] = after
        if not _SERVER.get("atexit"):
            atexit.register(_stop_server)
            _SERVER["atexit"] = True


def _start_server() -> bool:
    """Make sure curate's fork server runs and can fork a worker; False when it cannot (the pool then
    spawns). Called with ``__main__`` hidden or checked (:func:`spawn_guard`) and signals blocked."""
    from multiprocessing import forkserver

    _launch_server()
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid is not None and pid == _SERVER["checked"]:
        return True
    # one trivial worker: a server that refused to serve (_forkserver: threads it cannot fork) or failed to
    # start shows here, before the pool depends on it
    probe = mp.get_context("forkserver").Process(target=os.getpid, name="curate-forkserver-probe")
    try:
        probe.start()
        probe.join(timeout=120)
    except (OSError, EOFError):
        return False
    if probe.exitcode != 0:
        return False
    _SERVER["checked"] = pid
    return True


def _stop_server() -> None:
    """Close the fork server curate started and reap it (it exits once no process holds its pipe): at the
    end of a run (:func:`shared_pool`) and at exit. Its CPU time and its workers' then count as this
    process's children (``wait4``, ``RUSAGE_CHILDREN``), as spawned workers' do, and no server outlives
    the run that needed it. Waits at most 2 seconds: a worker still alive would keep the server up."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    with _SERVER_LOCK:
        pid, fd = getattr(server, "_forkserver_pid", None), getattr(server, "_forkserver_alive_fd", None)
        if pid is None or fd is None or pid != _SERVER["ours"]:
            return  # none, or one some other code started: theirs to stop
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
        server._forkserver_pid = None  # type: ignore[union-attr]
        _SERVER["ours"] = None
        os.close(fd)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)


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


def _dead_worker_error(procs: dict[int, Any], running: dict[int, str],
                       ex: ProcessPoolExecutor | None = None) -> CurateError:
    # The pool's manager thread fails the futures first and then reaps every worker itself. Reading exit
    # codes while it reaps races it for waitpid(): the loser sees ECHILD and an exit code of None (the
    # worker then read "died" instead of "was killed by SIGKILL" under load), so let it finish first.
    manager = getattr(ex, "_executor_manager_thread", None)  # private: CPython 3.9-3.14
    if manager is not None and manager is not threading.current_thread():
        manager.join(timeout=10.0)
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
