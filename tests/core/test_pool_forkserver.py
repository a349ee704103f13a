"""Workers forked from curate's fork server (curate.core.pool, start method ``forkserver``) keep every
guarantee of spawned ones: same results, a killed worker named, workers gone when the main process is
killed (with the server's parent-death signal, and without it), a script without a ``__main__`` guard
run once, the driver's environment and polars thread setting in workers, no polars compute threads in
the server, and a choice of start method."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import wait as sentinel_ready
from pathlib import Path

import polars as pl
import pytest
from pipeline_corpus import EXAMPLE
from proc_tree import alive, ppid, wait_until

from curate import Pipeline, read, read_output, write
from curate.core.errors import CurateError
from curate.core.pool import iter_tasks, resolve_start_method, shared_pool
from curate.filters.c4 import C4Quality, FineWebQuality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality, GopherRepetition

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or "forkserver" not in mp.get_all_start_methods(),
                                reason="the fork server's guarantees are Linux ones (PR_SET_PDEATHSIG, /proc)")
pytestmark = linux_only




# -- tasks (top-level: the workers import them from this module) -------------------------------------------

def _whoami(_: int) -> dict:
    df = pl.DataFrame({"a": list(range(2000))}).with_columns(b=pl.col("a") * 3)  # a real polars query
    return {"pid": os.getpid(), "ppid": os.getppid(), "sum": int(df["b"].sum()),
            "threads_env": os.environ.get("POLARS_MAX_THREADS"), "pool": pl.thread_pool_size(),
            "marker": os.environ.get("CURATE_TEST_MARKER"), "cmd": Path("/proc/self/cmdline").read_bytes()}


def _kill_self(i: int) -> int:
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)
    return i


def _fail(i: int) -> int:
    (Path(os.environ["CURATE_TEST_PIDS"]) / f"{os.getpid()}.pid").write_text(str(i))
    if i == 0:
        time.sleep(1.0)  # the other worker is in its task by then
        raise ValueError("task 0 failed on purpose")
    time.sleep(30)
    return i


def _server_threads() -> list[str]:
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid  # private, but the test needs the server's pid
    return sorted(Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task"))


def _cores() -> int:
    return len(os.sched_getaffinity(0))


# -- results and start method ------------------------------------------------------------------------------

def _pipeline_run(src: Path, root: Path, method: str) -> dict[str, str]:
    os.environ["CURATE_START_METHOD"] = method
    try:
        Pipeline(read(str(src / "*.jsonl"), batch_size=100), GopherRepetition(), GopherQuality(), C4Quality(),
                 FineWebQuality(), ExactDedup(), write(str(root / "out"), format="parquet")).run(
            work_dir=str(root / "work"), workers=2, progress=False)
    finally:
        del os.environ["CURATE_START_METHOD"]
    files = sorted(p for d in ("out", "work/rejects") for p in (root / d).rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_forkserver_workers_give_the_same_output_and_rejects_as_spawned_ones(tmp_path: Path):
    import gzip

    rows = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")][:400]
    src = tmp_path / "in"
    src.mkdir()
    for k in range(4):  # four shards, planted exact copies across them
        part = rows[k::4] + [dict(rows[j], id=f"copy-{k}-{j}") for j in range(0, 40, 8)]
        (src / f"p{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    forked = _pipeline_run(src, tmp_path / "fork", "forkserver")
    spawned = _pipeline_run(src, tmp_path / "spawn", "spawn")
    assert forked == spawned and any(k.startswith("work/rejects/") for k in forked)
    out = read_output(tmp_path / "fork" / "out")
    assert 0 < out.height < 420


def test_forked_workers_run_polars_with_the_drivers_environment(monkeypatch):
    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    with shared_pool("forkserver"):
        first = list(iter_tasks(_whoami, [(i,) for i in range(4)], 2))
        server = ppid(first[0]["pid"])
        # set after the server started: a worker started later must still see it, as a spawned one would
        monkeypatch.setenv("CURATE_TEST_MARKER", "after-start")
        later = list(iter_tasks(_whoami, [(i,) for i in range(4)], 3))  # 3 workers: a new pool
        assert ppid(later[0]["pid"]) == server  # forked by the same server
        threads = _server_threads()
    want = str(max(1, _cores() // 2))
    assert {r["sum"] for r in first + later} == {3 * sum(range(2000))}
    assert {r["threads_env"] for r in first} == {want} and {r["pool"] for r in first} == {int(want)}
    assert {r["marker"] for r in later} == {"after-start"} and {r["marker"] for r in first} == {None}
    assert all(r["ppid"] == server != os.getpid() for r in first)
    assert all(b"multiprocessing.forkserver" in r["cmd"] for r in first)
    # the server imported polars but never ran a query: no thread of polars' compute pool (polars-0, ...)
    assert not [t for t in threads if t.startswith("polars-") and t[7:].isdigit()], threads
    assert "curate.core._forkserver" in sys.modules  # imported by the pool (an ordinary import: no boot)


def test_start_method_is_chosen_by_option_then_environment(monkeypatch):
    monkeypatch.delenv("CURATE_START_METHOD", raising=False)
    assert resolve_start_method(None) == resolve_start_method("auto") == "forkserver"
    monkeypatch.setenv("CURATE_START_METHOD", "spawn")
    assert resolve_start_method(None) == "spawn" and resolve_start_method("forkserver") == "forkserver"
    with shared_pool():
        spawned = list(iter_tasks(_whoami, [(i,) for i in range(2)], 2))
    assert all(b"spawn_main" in r["cmd"] and r["ppid"] == os.getpid() for r in spawned)
    monkeypatch.setenv("CURATE_START_METHOD", "fork")
    with pytest.raises(CurateError, match="CURATE_START_METHOD='fork'"):
        resolve_start_method(None)


def test_executor_start_method_option_is_validated_and_recorded(tmp_path: Path):
    from curate.core.config import ExecutorSpec

    assert ExecutorSpec().start_method == "auto" and ExecutorSpec(start_method="spawn").start_method == "spawn"
    with pytest.raises(ValueError):
        ExecutorSpec(start_method="fork")


# -- dead workers and errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "tries"), [("forkserver", 10), ("spawn", 1)])
def test_a_killed_worker_is_an_error_naming_its_task_even_when_it_dies_at_once(method: str, tries: int):
    """The task's "started" message is read before the error is built: it was lost when the worker died
    within the progress thread's 50 ms poll ("a task that had not started"; forked workers start fast
    enough to hit that in about one run in three, hence the repeats)."""
    for _ in range(tries):
        with pytest.raises(CurateError) as e:
            with shared_pool(method):
                list(iter_tasks(_kill_self, [(i,) for i in range(4)], 2, labels=[f"shard {i}" for i in range(4)]))
        assert "while running shard 1" in str(e.value) and "SIGKILL" in str(e.value)


def test_a_killed_spawned_worker_is_named_by_its_signal_while_the_pool_reaps_it(monkeypatch):
    """The pool's manager thread reaps the dead worker itself (``Popen.poll``: ``waitpid``, then the exit
    code is stored). Reading the exit code inside that window got ECHILD and None: the error said "died"
    instead of "was killed by SIGKILL" (seen in CI under load). The window is widened here on purpose."""
    import concurrent.futures.process as cfp

    original = cfp._ExecutorManagerThread.terminate_broken

    def reap_first(self, cause):
        reaped = {}
        for p in self.processes.values():  # the dead worker: reaped now, its exit code stored later
            if p._popen is not None and p._popen.returncode is None and sentinel_ready([p.sentinel], 0):
                reaped[p] = os.waitpid(p.pid, 0)[1]  # its pipes close just before it can be waited for
        join = self.join_executor_internals

        def store_late():
            time.sleep(2.0)  # past the driver's wait for its progress thread (up to 1 s)
            for p, status in reaped.items():
                p._popen.returncode = os.waitstatus_to_exitcode(status)
            join()

        self.join_executor_internals = store_late
        original(self, cause)  # fails the futures (the driver wakes), stops the others, joins

    monkeypatch.setattr(cfp._ExecutorManagerThread, "terminate_broken", reap_first)
    with pytest.raises(CurateError) as e:
        with shared_pool("spawn"):
            list(iter_tasks(_kill_self, [(i,) for i in range(4)], 2, labels=[f"shard {i}" for i in range(4)]))
    assert "while running shard 1" in str(e.value) and "killed by SIGKILL" in str(e.value)


def test_a_failing_task_stops_the_other_forked_workers(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CURATE_TEST_PIDS", str(tmp_path))  # reaches the workers through the env hand-over
    t0 = time.time()
    with pytest.raises(ValueError, match="on purpose"):
        with shared_pool("forkserver"):
            list(iter_tasks(_fail, [(i,) for i in range(3)], 2))
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2 and os.getpid() not in pids
    wait_until(lambda: not [p for p in pids if alive(p)], 10, "the other worker to be stopped")
    assert time.time() - t0 < 30  # it was killed, not waited for (it sleeps 30 s)


# -- the main process killed -------------------------------------------------------------------------------

_DRIVER = '''
import os, sys, threading, time
from multiprocessing.connection import wait as sentinel_ready
from pathlib import Path
from curate.core.pool import iter_tasks, shared_pool


def task(i):
    (Path(os.environ["CURATE_TEST_PIDS"]) / f"{os.getpid()}.pid").write_text(str(os.getppid()))
    time.sleep(120)


def run():
    with shared_pool("forkserver"):
        list(iter_tasks(task, [(i,) for i in range(4)], 2))


if __name__ == "__main__":
    if sys.argv[1] == "thread":
        th = threading.Thread(target=run)
        th.start()
        th.join()
    else:
        run()
'''


@pytest.mark.parametrize("where", ["main", "thread"])
def test_killing_the_main_process_ends_forked_workers_and_the_server(tmp_path: Path, where: str):
    """``main``: the server's PR_SET_PDEATHSIG kills it, and the kernel then kills the workers (their own
    parent-death signal). ``thread``: a server started from another thread asks for no such signal (it
    would die with that thread); the workers' watch of the main process's pipe ends them, then the server."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "driver.py").write_text(_DRIVER)
    env = dict(ENV, CURATE_TEST_PIDS=str(tmp_path / "pids"))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), where], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(list((tmp_path / "pids").glob("*.pid"))) >= 2 or proc.poll() is not None, 120,
              "two forked workers")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        workers = [int(p.stem) for p in (tmp_path / "pids").glob("*.pid")]
        servers = {int(p.read_text()) for p in (tmp_path / "pids").glob("*.pid")}
        assert len(servers) == 1 and proc.pid not in servers and ppid(next(iter(servers))) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not [p for p in workers + list(servers) if alive(p)], 15, "workers and server to exit")
    finally:
        if proc.poll() is None:
            proc.kill()


# -- a user's script ---------------------------------------------------------------------------------------

_BARE_SCRIPT = '''
from multiprocessing.connection import wait as sentinel_ready
from pathlib import Path
from curate import Pipeline, read, write
from curate.filters.gopher import GopherQuality

with open("runs.txt", "a") as f:  # once per import of this script: the workers and the server must not
    f.write("ran\\n")
result = Pipeline(read("data/*.jsonl"), GopherQuality(), write("out/")).run(work_dir="w", workers=2,
                                                                            progress=False)
print(result.docs_in)
'''


def test_a_script_without_main_guard_runs_once_with_forked_workers(tmp_path: Path):
    import gzip

    rows = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")][:120]
    (tmp_path / "data").mkdir()
    for k in range(2):
        (tmp_path / "data" / f"p{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[k::2]))
    (tmp_path / "bare.py").write_text(_BARE_SCRIPT)
    r = subprocess.run([sys.executable, "bare.py"], cwd=tmp_path, env=dict(ENV, CURATE_START_METHOD="forkserver"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bootstrapping" not in r.stderr and "spawned instead" not in r.stderr
    assert int(r.stdout.strip().splitlines()[-1]) == 120
    assert (tmp_path / "runs.txt").read_text() == "ran\n"
    assert read_output(tmp_path / "out").height > 0
