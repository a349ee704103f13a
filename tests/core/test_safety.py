"""Nothing lost, nothing clobbered (issue 11, items 1-4, 15, 16): curate deletes or replaces only files it
recorded as its own; resume trusts only markers whose files are there; input edits that keep size and
mtime are seen; one run per work dir; Ctrl-C, SIGTERM, a killed worker and a failing write end cleanly;
the README's Python tour runs as written. Every case runs real runs on the bundled sample, most through
a real ``curate`` process."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import polars as pl
import pytest
from proc_tree import alive, descendants, ppid, wait_until

from curate import ConfigError, Pipeline, RejectsSpec, read, read_output, write
from curate.cli import main as cli_main
from curate.filters.length import LengthFilter

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "web_sample.jsonl.gz"
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")


@cache
def _rows() -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in gzip.open(EXAMPLE, "rt"))


def _corpus(d: Path, files: int = 2, copies: int = 1, gz: bool = False, limit: int | None = None) -> Path:
    """``files`` jsonl files of real web text (the first ``limit`` rows of the sample, each ``copies``
    times, ids made unique)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = _rows()[:limit]
    for k in range(files):
        lines = [json.dumps(dict(r, id=f"{r['id']}-{k}-{c}")) + "\n" for c in range(copies) for r in rows[k::files]]
        name = d / (f"part{k}.jsonl.gz" if gz else f"part{k}.jsonl")
        if gz:
            with gzip.open(name, "wt") as f:
                f.writelines(lines)
        else:
            name.write_text("".join(lines))
    return d


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(src: Path, out: Path, work: Path, **out_kw) -> object:
    return Pipeline(read(str(src)), LengthFilter(min_words=50), write(str(out), **out_kw)).run(
        work_dir=str(work), workers=1, progress=False)


def _yaml(path: Path, src: Path, out: Path, work: Path, *, workers: int = 1, extra: str = "",
          steps: str = "[{gopher_repetition: {}}, {gopher_quality: {}}]", batch: int = 200) -> Path:
    path.write_text(f"""input: {{path: "{src}", batch_size: {batch}}}
steps: {steps}
output: {{path: "{out}"{extra}}}
work_dir: "{work}"
executor: {{workers: {workers}}}
""")
    return path


def _curate(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "curate.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _workers(pid: int) -> list[int]:
    """Pool workers (not multiprocessing's resource tracker or fork server) among the descendants of
    ``pid``: spawned ones run ``spawn_main``; forked ones are children of a fork server started by ``pid``
    (they share its command line)."""
    cmds: dict[int, bytes] = {}
    for c in descendants(pid):
        try:
            cmds[c] = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
    servers = {c for c, cmd in cmds.items() if b"multiprocessing.forkserver" in cmd and ppid(c) == pid}
    return sorted(c for c, cmd in cmds.items() if b"spawn_main" in cmd or ppid(c) in servers)




needs_proc = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find workers")


# -- 1. curate deletes or replaces only what it wrote --------------------------------------------------

def test_output_in_the_input_folder_is_refused_before_any_work(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()[:50]))
    before = _tree(data)
    with pytest.raises(ConfigError) as e:
        _run(data, data, tmp_path / "w")
    assert str(data.resolve()) in str(e.value) and "input" in str(e.value)
    assert _tree(data) == before  # the reported data loss: the writer unlinked part-00000* first
    assert not (tmp_path / "w").exists()  # refused before any work
    with pytest.raises(ConfigError, match="input folder"):
        _run(data, data / "out", tmp_path / "w")  # the next run would read its own output
    assert _tree(data) == before


def test_foreign_files_next_to_the_output_are_never_touched(tmp_path):
    src = _corpus(tmp_path / "in", files=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000-notes.txt").write_text("my notes on shard 0")
    (out / "part-00000-3f2a-c000.snappy.parquet").write_bytes(b"PAR1 a spark part file PAR1")
    foreign = _tree(out)
    with pytest.raises(ConfigError, match="not empty"):  # a folder curate did not create
        _run(src, out, tmp_path / "w", format="parquet")
    assert _tree(out) == foreign
    first = _run(src, out, tmp_path / "w", format="parquet", overwrite=True)
    assert first.docs_out > 0 and pl.read_parquet(out / "part-00000.parquet").height == first.docs_out
    assert {k: v for k, v in _tree(out).items() if k in foreign} == foreign
    # a rerun with another configuration replaces curate's part file, and only that
    Pipeline(read(str(src)), LengthFilter(min_words=80), write(str(out), format="parquet", overwrite=True)).run(
        work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert {k: v for k, v in _tree(out).items() if k in foreign} == foreign
    assert 0 < pl.read_parquet(out / "part-00000.parquet").height < first.docs_out
    # a foreign file under exactly the name curate would write: refused, before any work, file intact
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "part-00000.parquet").write_bytes(b"someone else's parquet")
    with pytest.raises(ConfigError, match="part-00000.parquet.*not written by curate"):
        _run(src, out2, tmp_path / "w2", format="parquet", overwrite=True)
    assert (out2 / "part-00000.parquet").read_bytes() == b"someone else's parquet"


def test_work_dir_dot_keeps_the_users_pipeline_and_stats(tmp_path, monkeypatch):
    src = _corpus(tmp_path / "in", files=1)
    proj = tmp_path / "proj"
    proj.mkdir()
    _yaml(proj / "pipeline.yaml", src, tmp_path / "out", tmp_path / "unused")
    _yaml(proj / "forced.yaml", src, tmp_path / "out", tmp_path / "unused", extra=", overwrite: true")
    (proj / "stats.json").write_text('{"my": "own stats"}')
    before = _tree(proj)
    monkeypatch.chdir(proj)
    assert cli_main(["run", "pipeline.yaml", "--work-dir", ".", "--no-progress"]) == 2  # not empty
    assert _tree(proj) == before
    assert cli_main(["run", "forced.yaml", "--work-dir", ".", "--no-progress"]) == 2  # clashes, even so
    assert _tree(proj) == before
    assert not (tmp_path / "out").exists()


def test_check_run_paths_names_both_paths(tmp_path):
    from curate.core.ownership import check_run_paths  # also called by `curate validate`

    data = _corpus(tmp_path / "data", files=1)
    f = str(data / "part0.jsonl")
    assert check_run_paths(str(data), tmp_path / "out", tmp_path / "w" / "rejects", tmp_path / "w") == []
    same = check_run_paths(str(data), data, tmp_path / "r", tmp_path / "w")
    assert len(same) == 1 and str(data.resolve()) in same[0]
    (tmp_path / "link").symlink_to(data)  # an alias of the input folder is the input folder
    assert check_run_paths(f, tmp_path / "link", tmp_path / "r", tmp_path / "w")
    holds = check_run_paths(f, tmp_path / "o", tmp_path / "r", data)
    assert len(holds) == 1 and "work_dir" in holds[0] and f in holds[0]
    assert check_run_paths(f, tmp_path / "o", tmp_path / "o", tmp_path / "w")  # output == rejects
    inside = check_run_paths(f, tmp_path / "w" / "segments", tmp_path / "r", tmp_path / "w")
    assert len(inside) == 1 and "segments" in inside[0] and str(tmp_path / "w") in inside[0]
    assert check_run_paths(f, tmp_path / "w", tmp_path / "r", tmp_path / "w")  # output == work dir


def test_leftovers_of_killed_runs_are_cleaned_only_under_curate_names(tmp_path):
    src = _corpus(tmp_path / "in", files=1)
    out, work = tmp_path / "out", tmp_path / "w"
    _run(src, out, work)
    ref = _tree(out)
    mine = [out / ".tmp-4242-part-00000.jsonl", work / "rejects" / "length_filter" / ".tmp-4242-part-00000.jsonl",
            work / ".tmp-4242-stats.json", work / "segments" / "000" / "_done" / ".tmp-4242-shard-00000.json"]
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half-written by a killed run")
    theirs = [out / ".tmp-4242-notes.txt", work / ".tmp-4242-my-pipeline.yaml"]
    for p in theirs:
        p.write_text("not curate's")
    res = _run(src, out, work)
    assert res.resumed_shards == 1
    assert not any(p.exists() for p in mine)
    assert all(p.read_text() == "not curate's" for p in theirs)
    assert {k: v for k, v in _tree(out).items() if not k.startswith(".tmp-")} == ref


# -- 2. a marker counts only while its files are there ---------------------------------------------------

def test_resume_checks_the_files_a_marker_vouches_for(tmp_path):
    src = _corpus(tmp_path / "in", files=2)
    out, work = tmp_path / "out", tmp_path / "w"
    first = _run(src, out, work, format="parquet")
    ref = _tree(out)
    dropped = first.steps[-1].docs_in - first.steps[-1].docs_out
    assert dropped > 0
    shutil.rmtree(out)
    again = _run(src, out, work, format="parquet")
    assert _tree(out) == ref and again.resumed_shards == 0
    part = out / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:100])  # damaged behind curate's back: that shard reruns
    again = _run(src, out, work, format="parquet")
    assert _tree(out) == ref and again.resumed_shards == 1
    # the rejects spec is part of the fingerprint: a new rejects folder gets the rejects
    Pipeline(read(str(src)), LengthFilter(min_words=50), write(str(out), format="parquet"),
             RejectsSpec(path=str(tmp_path / "rej2"))).run(work_dir=str(work), workers=1, progress=False)
    assert read_output(tmp_path / "rej2" / "length_filter").height == dropped
    assert _tree(out) == ref


def test_a_global_stage_whose_state_is_gone_is_fitted_again(tmp_path):
    from curate.filters.exact_dedup import ExactDedup

    src = _corpus(tmp_path / "in", files=2)
    (src / "part2.jsonl").write_text((src / "part0.jsonl").read_text())  # exact duplicates to find
    out, work = tmp_path / "out", tmp_path / "w"

    def run():
        return Pipeline(read(str(src), id_field=None), ExactDedup(), write(str(out))).run(
            work_dir=str(work), workers=1, progress=False)

    first = run()
    ref = _tree(out)
    assert first.docs_out < first.docs_in
    state = work / "stages" / "001" / "state"
    assert any(p.is_file() for p in state.rglob("*"))
    shutil.rmtree(state)
    shutil.rmtree(out)  # the apply segment reruns and needs the fitted state
    again = run()
    assert _tree(out) == ref and again.docs_out == first.docs_out


def test_parts_of_shards_no_longer_in_the_input_are_removed(tmp_path):
    src = _corpus(tmp_path / "in", files=2)
    out, work = tmp_path / "out", tmp_path / "w"
    _run(src, out, work)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.jsonl", "part-00001.jsonl"]
    (out / "part-00001-mine.jsonl").write_text("a user's file under a similar name\n")
    (src / "part1.jsonl").unlink()
    res = _run(src, out, work)
    # the output holds the current input's documents only (not shard 1 of the earlier input)...
    assert sorted(p.name for p in out.glob("part-0000?.jsonl")) == ["part-00000.jsonl"]
    assert pl.read_ndjson(out / "part-00000.jsonl", infer_schema_length=None).height == res.docs_out
    assert sorted(p.name for p in (work / "rejects" / "length_filter").glob("part-*")) == ["part-00000.jsonl"]
    # ...and a file curate did not write stays
    assert (out / "part-00001-mine.jsonl").read_text() == "a user's file under a similar name\n"


# -- 3. inputs are fingerprinted by content ----------------------------------------------------------------

def test_an_edit_that_keeps_size_and_mtime_reruns(tmp_path):
    src = tmp_path / "in.jsonl"
    words = " ".join(["alpha"] * 60)
    src.write_text(json.dumps({"id": "a", "text": words}) + "\n")
    stamp = tmp_path / "stamp"
    stamp.touch()

    def run(work: str, **kw) -> tuple[list[str], int]:
        res = Pipeline(read(str(src), **kw), LengthFilter(min_words=50), write(str(tmp_path / f"o-{work}"))).run(
            work_dir=str(tmp_path / work), workers=1, progress=False)
        return read_output(tmp_path / f"o-{work}")["text"].to_list(), res.resumed_shards

    def edit(old: str, new: str) -> None:  # same size, then the old mtime back: `touch -r`
        size = src.stat().st_size
        subprocess.run(["touch", "-r", str(src), str(stamp)], check=True)
        src.write_text(src.read_text().replace(old, new))
        subprocess.run(["touch", "-r", str(stamp), str(src)], check=True)
        assert src.stat().st_size == size and src.stat().st_mtime_ns == stamp.stat().st_mtime_ns

    assert run("w") == ([words], 0)
    edit("alpha", "omega")
    assert run("w") == ([words.replace("alpha", "omega")], 0)  # default: by content, so it reran
    # the explicit stat mode compares size and mtime_ns only: the documented blind spot
    assert run("ws", fingerprint="stat") == ([words.replace("alpha", "omega")], 0)
    edit("omega", "alpha")
    assert run("ws", fingerprint="stat") == ([words.replace("alpha", "omega")], 1)


# -- 4. one run per work dir ---------------------------------------------------------------------------

def test_second_run_on_a_busy_work_dir_fails_at_once_naming_the_holder(tmp_path):
    src = _corpus(tmp_path / "in", files=4, copies=4)
    work = tmp_path / "w"
    a_cfg = _yaml(tmp_path / "a.yaml", src, tmp_path / "out", work)
    b_cfg = _yaml(tmp_path / "b.yaml", src, tmp_path / "out", work,
                  steps="[{gopher_quality: {min_doc_words: 200}}]")
    a = _curate("run", str(a_cfg), "--no-progress")
    lock = work / ".curate-lock"
    try:
        wait_until(lambda: lock.exists() and str(a.pid) in lock.read_text(), what="run A to take the lock")
        os.kill(a.pid, signal.SIGSTOP)  # A holds the lock, mid-run, for as long as B needs
        t0 = time.time()
        b = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(b_cfg), "--no-progress"], env=ENV,
                           capture_output=True, text=True, timeout=120)
        b_seconds = time.time() - t0
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _, a_err = a.communicate(timeout=300)
    assert b.returncode == 2, b.stderr
    assert f"pid {a.pid}" in b.stderr and platform.node() in b.stderr and "started" in b.stderr
    assert "Traceback" not in b.stderr
    assert b_seconds < 30  # at once: before reading any input
    assert a.returncode == 0, a_err
    stats = json.loads((work / "stats.json").read_text())
    assert [s["step"] for s in stats["steps"]] == ["read", "gopher_repetition", "gopher_quality"]
    assert read_output(tmp_path / "out").height == stats["docs_out"]  # A's documents, A's counts


# -- 15. Ctrl-C, SIGTERM, a killed worker, a failing write -------------------------------------------------

BUSY_COPIES = 30


def _busy_run(tmp_path: Path, workers: int = 2, **kw) -> tuple[subprocess.Popen, Path]:
    # big enough that the run is still in its shards a second after the workers start: forked workers
    # (the fork server) start in well under a second, and 6 copies finished before the signal came
    src = _corpus(tmp_path / "in", files=4, copies=BUSY_COPIES)
    cfg = _yaml(tmp_path / "p.yaml", src, tmp_path / "out", tmp_path / "w", workers=workers)
    return _curate("run", str(cfg), "--no-progress", **kw), tmp_path / "out"


@needs_proc
def test_sigterm_leaves_no_orphan_workers(tmp_path):
    proc, _ = _busy_run(tmp_path)
    wait_until(lambda: len(_workers(proc.pid)) >= 2 or proc.poll() is not None, what="two workers")
    time.sleep(1.0)  # into the shards
    kids = descendants(proc.pid)
    assert proc.poll() is None and len(kids) >= 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(k) for k in kids):
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)], "worker processes outlived the main process"
    assert proc.returncode == 143 and "Traceback" not in err and "terminated" in err


@needs_proc
def test_ctrl_c_prints_one_line_and_stops_the_workers(tmp_path):
    proc, _ = _busy_run(tmp_path, start_new_session=True)
    wait_until(lambda: len(_workers(proc.pid)) >= 2 or proc.poll() is not None, what="two workers")
    time.sleep(1.0)
    kids = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group gets it
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: finished shards are kept; rerun the same command to resume"]
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(k) for k in kids):
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)]


@needs_proc
def test_a_killed_worker_is_an_error_naming_its_shard_and_the_rerun_completes(tmp_path):
    proc, out = _busy_run(tmp_path)
    writing: list[Path] = []

    def a_worker_writes() -> bool:
        writing[:] = sorted(out.glob(".tmp-*-part-*.jsonl")) if out.exists() else []
        return bool(writing) or proc.poll() is not None

    wait_until(a_worker_writes, what="a worker writing its shard")
    tmp = writing[0].name  # .tmp-<pid>-part-<shard>.jsonl
    pid, shard = int(tmp.split("-")[1]), int(tmp.split("-")[3].split(".")[0])
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert f"shard-{shard:05d}" in err and "SIGKILL" in err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    rerun = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(tmp_path / "p.yaml"), "--no-progress"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.glob(".tmp-*"))  # the killed worker's half-written part is gone
    stats = json.loads((tmp_path / "w" / "stats.json").read_text())
    assert read_output(out).height == stats["docs_out"] and stats["docs_in"] == BUSY_COPIES * len(_rows())


def test_a_failing_write_names_the_path(tmp_path):
    src = _corpus(tmp_path / "in", files=1)
    cfg = _yaml(tmp_path / "p.yaml", src, tmp_path / "out", tmp_path / "w")

    def limit() -> None:  # files may not grow past 64 KB: writes fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    r = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(cfg), "--no-progress"], env=ENV,
                       capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    m = re.search(r"cannot write '(.+?)': File too large", r.stderr)
    assert m is not None, r.stderr
    where = Path(m[1])  # the file being written (output part or rejects part), under the run's folders
    assert where.name == "part-00000.jsonl" and where.parent.is_dir() and tmp_path.resolve() in where.resolve().parents


# -- 16. the README's Python tour, as written --------------------------------------------------------------

def _readme_tour() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n", text.index("## A quick tour")) + len("```python\n")
    return text[start:text.index("```", start)]


def test_readme_tour_runs_as_a_script_without_main_guard_and_prints_a_table(tmp_path):
    tour = _readme_tour()
    assert "__main__" not in tour and "workers=2" in tour
    m = re.search(r'read\("([^"*]*)/\*\.jsonl\.gz"', tour)
    assert m is not None, "the tour reads a folder of *.jsonl.gz"
    _corpus(tmp_path / m[1], files=2, gz=True, limit=120)  # a multi-file input where the tour reads
    (tmp_path / "tour.py").write_text(tour + "print(result)\n")
    r = subprocess.run([sys.executable, "tour.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bootstrapping" not in r.stderr and "<rich.table.Table" not in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if ln.lstrip("│| ").startswith("gopher_quality ")]
    assert len(rows) == 2 and r.stdout.count("curate run - ") == 2  # print(result.table()), then print(result)
    assert all(re.search(r"gopher_quality\W+\d[\d,]* \W+\d[\d,]* ", row) for row in rows)  # docs in, docs out
    out = re.search(r'write\("([^"]+)"', tour)
    assert out is not None and read_output(tmp_path / out[1]).height > 0


_SCRIPT = '''
import polars as pl
from pydantic import Field
from curate import Filter, OpParams, Pipeline, Rule, read, register, write

@register("max_url_count_test")
class MaxUrlCount(Filter):
    """Drops documents with more than `max_urls` URLs."""

    class Params(OpParams):
        max_urls: int = Field(0, ge=0, description="most URLs a document may contain")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(n_urls=pl.col("text").str.count_matches(r"https?://"))

    def rules(self) -> list[Rule]:
        return [Rule("too_many_urls", "n_urls", ">", self.params.max_urls)]

def main():
    result = Pipeline(read("data/*.jsonl"), MaxUrlCount(), write("out/")).run(work_dir="w", workers=2,
                                                                               progress=False)
    print(result.docs_out)
'''


def test_a_script_defining_its_own_operator_is_told_to_add_the_guard(tmp_path):
    _corpus(tmp_path / "data", files=2)
    (tmp_path / "bare.py").write_text(_SCRIPT + "main()\n")
    r = subprocess.run([sys.executable, "bare.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "bootstrapping" not in r.stderr and "EOFError" not in r.stderr
    assert "MaxUrlCount" in r.stderr and 'if __name__ == "__main__":' in r.stderr
    (tmp_path / "guarded.py").write_text(_SCRIPT + 'if __name__ == "__main__":\n    main()\n')
    r = subprocess.run([sys.executable, "guarded.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip().splitlines()[-1]) == read_output(tmp_path / "out").height > 0
    assert pl.read_ndjson(next((tmp_path / "w" / "rejects" / "max_url_count_test").glob("*.jsonl")))["reason"][0] \
        == "too_many_urls"
