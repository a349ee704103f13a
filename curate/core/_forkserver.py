"""What curate's fork server does when it starts (imported by it through ``set_forkserver_preload``).

The local executor's workers are forks of one server process (:mod:`curate.core.pool`, start method
``forkserver``) that has imported what every worker needs, so each worker starts with polars, numpy,
pydantic and curate's core and executor modules already loaded instead of importing them again (about
1 CPU-second per spawned worker, measured in ``benchmarks/RESULTS.md``, "Rule filters").

Importing this module does nothing unless the importing process is that server: the driver sets
``CURATE_FORKSERVER_PARENT`` to its own pid only while it launches the server, and the server's parent is
the driver. Then, in order:

1. ``PR_SET_PDEATHSIG`` (Linux; only when the driver started the server from its main thread, since the
   signal follows the thread that started the process: ``CURATE_FORKSERVER_ARM``): the kernel kills the
   server when the driver dies. Workers set the same against their parent, the server, so the chain
   driver -> server -> workers needs no thread in any of them; a driver that died before the request
   took effect makes the server exit at once. (Workers also watch the driver's pipe: curate.core.pool.)
2. The server imports only from the same ``curate`` the driver runs (``CURATE_FORKSERVER_CURATE``):
   Python 3.11's fork server ignores the driver's ``sys.path``, so a driver that put another checkout
   first would otherwise get workers running other code. On a mismatch the curate modules are dropped
   again and each worker imports the driver's (through multiprocessing's preparation data).
3. The imports (:data:`PRELOAD`) and numba's registries (:func:`curate.core.jit.prepare`, which starts
   no thread) - none of them runs a polars query, so polars' compute thread pool (not
   fork-safe) never starts in the server. polars does start three threads at import (two jemalloc
   background threads, whose allocator handles fork itself, and its out-of-core spill cleaner, parked
   on a channel): the server waits until they are parked before it serves, and :func:`unsafe_threads`
   names any other thread, which makes the server exit rather than fork it (the driver then falls back
   to spawn).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import os
import re
import signal
import sys
import time

PARENT_ENV = "CURATE_FORKSERVER_PARENT"  # the driver's pid
CURATE_ENV = "CURATE_FORKSERVER_CURATE"  # the driver's curate package folder
ARM_ENV = "CURATE_FORKSERVER_ARM"  # "1": tie the server's life to the driver (see pool._start_server)

#: what every worker imports anyway (curate.executors.local holds the task function the pool pickles)
PRELOAD = ("numpy", "polars", "pyarrow", "pydantic", "curate.core.operator", "curate.core.runner",
           "curate.executors.local")

#: threads a bare ``import polars`` (1.x-2.x) and ``import pyarrow`` start; anything else is refused
_IMPORT_THREADS = re.compile(r"jemalloc_bg_thd|polars-ooc-clea.*")


def thread_names() -> dict[int, str]:
    """This process's threads other than the calling one, by id (Linux /proc; empty elsewhere)."""
    me = str(getattr(os, "gettid", lambda: os.getpid())())
    out: dict[int, str] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                out[int(tid)] = f.read().strip()
        except OSError:
            continue  # ended meanwhile
    return out


def unsafe_threads(allowed: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Names of threads in this process that a fork could leave holding a lock or a task: any but
    ``allowed`` (ids) and polars' and pyarrow's import-time threads, e.g. ``polars-0`` of polars' compute
    pool."""
    return sorted(n for t, n in thread_names().items() if t not in allowed and not _IMPORT_THREADS.fullmatch(n))


def _parked(timeout: float = 2.0) -> bool:
    """Wait until every other thread sleeps (state S) twice in a row 5 ms apart: none is mid-way through
    its start (the spill cleaner first scans the spill folder), so none holds a lock when the server forks."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        states = []
        for tid in thread_names():
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue
        calm = calm + 1 if all(s == "S" for s in states) else 0
        if calm >= 2:
            return True
        time.sleep(0.005)
    return False


def arm_parent_death() -> bool:
    """Ask the kernel to SIGKILL this process when its parent (the thread that started it) ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _boot() -> None:
    driver = os.environ.get(PARENT_ENV, "")
    if not driver.isdigit() or int(driver) != os.getppid() or "multiprocessing.forkserver" not in sys.modules:
        return  # an ordinary import
    if os.environ.get(ARM_ENV) == "1":
        arm_parent_death()
    if os.getppid() != int(driver):  # the driver died before the request took effect
        os._exit(1)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the curate package folder
    same = os.environ.get(CURATE_ENV, here) == here
    import numpy  # noqa: F401 - first, alone: see below

    # OpenBLAS (numpy's BLAS) starts its threads when numpy is imported, unnamed; it shuts them down
    # before every fork itself (its pthread_atfork handler) and the child starts them again when it needs them
    allowed = set(thread_names())
    for name in PRELOAD if same else [m for m in PRELOAD if not m.startswith("curate")]:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional module: the worker imports (or misses) it itself, as under spawn
    if same:
        try:  # numba's import and CPU registries (0.6 CPU-s), which every kernel's first call needs
            from curate.core import jit

            jit.prepare()
        except ImportError:
            pass
    bad = unsafe_threads(allowed)
    if bad or not _parked():
        sys.stderr.write(f"curate: the fork server has threads it cannot fork safely ({', '.join(bad) or 'busy'}); "
                         "workers fall back to spawn\n")
        os._exit(3)
    # the server's own exit (once the driver closed its pipe) skips interpreter teardown: it wrote nothing
    # and holds nothing to flush, and the driver waits for it at exit (pool._stop_server); its workers
    # leave through os._exit and never run these handlers
    atexit.register(os._exit, 0)
    if not same:
        for name in [m for m in sys.modules if m == "curate" or m.startswith("curate.")]:
            del sys.modules[name]
        # the fork server skips a preload module that raises ImportError, and importlib forgets this one
        raise ImportError(f"the fork server found curate in {here}, not the driver's {os.environ[CURATE_ENV]}: "
                          "each worker imports the driver's")


_boot()
