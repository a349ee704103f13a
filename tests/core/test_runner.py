"""The runner end to end: output, rejects and stats; worker-count independence; kill and resume; bad rows."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from pipeline_corpus import EXAMPLE, REPO, pipeline, tree_digest

from curate import InputError, Pipeline, read, read_output, write
from curate.cli import main as cli_main
from curate.filters.length import LengthFilter


def test_python_run_writes_output_rejects_and_stats(corpus, tmp_path):
    res = pipeline(corpus, tmp_path / "out").run(work_dir=str(tmp_path / "work"), workers=1, progress=False)
    out = read_output(tmp_path / "out")
    assert out.height == res.docs_out > 0
    assert not any(c.startswith("__") for c in out.columns)
    stats = json.loads((tmp_path / "work" / "stats.json").read_text())
    steps = {s["step"]: s for s in stats["steps"]}
    assert list(steps) == ["read", "length_filter", "gopher_repetition", "gopher_quality", "exact_dedup", "c4_quality"]
    for s in stats["steps"]:
        assert s["docs_out"] <= s["docs_in"] and s["seconds"] >= 0
        assert s["docs_in"] - s["docs_out"] == sum(s["dropped"].values())
    rej = read_output(tmp_path / "work" / "rejects" / "exact_dedup")
    assert rej["reason"].unique().to_list() == ["exact_duplicate"]
    # every planted copy that survived the filters before dedup was removed as a duplicate of its original
    earlier = pl.concat([read_output(tmp_path / "work" / "rejects" / s).select("id")
                         for s in ("length_filter", "gopher_repetition", "gopher_quality")])
    copies = {f"copy-{k}-{j}" for k in range(4) for j in range(0, 40, 4)} - set(earlier["id"])
    assert len(copies) > 10
    dup = rej.filter(pl.col("id").str.starts_with("copy-"))
    assert set(dup["id"]) == copies
    assert dup["dup_of"].null_count() == 0 and not dup["dup_of"].str.starts_with("copy-").any()
    traces = [t for f in sorted((tmp_path / "work" / "trace" / "c4_quality").glob("*.json"))
              for t in json.loads(f.read_text())]
    assert traces and all(t["before"] != t["after"] and t["id"] for t in traces)
    assert set(t["id"] for t in traces) <= set(out["id"])
    gq = read_output(tmp_path / "work" / "rejects" / "gopher_quality")
    assert {"id", "step", "reason", "score", "threshold", "text"} <= set(gq.columns)
    row = gq.row(0, named=True)
    assert row["score"] is not None and row["threshold"] is not None


def test_output_does_not_depend_on_worker_count(corpus, tmp_path):
    for w in (1, 2):
        pipeline(corpus, tmp_path / f"out{w}", "parquet").run(work_dir=str(tmp_path / f"w{w}"), workers=w,
                                                               progress=False)
    assert tree_digest(tmp_path / "out1") == tree_digest(tmp_path / "out2")
    assert tree_digest(tmp_path / "w1" / "rejects") == tree_digest(tmp_path / "w2" / "rejects")


def test_killed_run_resumes_to_identical_output(tmp_path):
    rows = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")]
    src = tmp_path / "in"
    src.mkdir()
    for k in range(8):
        with open(src / f"f{k:02d}.jsonl", "w") as f:
            for rep in range(2):
                f.writelines(json.dumps(dict(r, id=f"{r['id']}-{k}-{rep}")) + "\n" for r in rows)
    cfg = tmp_path / "p.yaml"
    body = f"""
input: {{path: "{src}", batch_size: 200}}
steps: [{{gopher_repetition: {{}}}}, {{gopher_quality: {{}}}}, {{fineweb_quality: {{}}}}]
output: {{path: "OUT", format: parquet}}
work_dir: "WORK"
executor: {{workers: 1}}
"""
    cfg.write_text(body.replace("OUT", str(tmp_path / "out")).replace("WORK", str(tmp_path / "work")))
    ref = tmp_path / "ref.yaml"
    ref.write_text(body.replace("OUT", str(tmp_path / "ref_out")).replace("WORK", str(tmp_path / "ref_work")))
    assert cli_main(["run", str(ref), "--no-progress"]) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(cfg), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / "work" / "segments" / "000" / "_done"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(done.glob("*.json"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(done.glob("*.json")))
    assert 0 < finished < 8, "the run should have been killed part-way"
    assert cli_main(["run", str(cfg), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "work" / "stats.json").read_text())
    assert stats["resumed_shards"] == finished
    assert tree_digest(tmp_path / "out") == tree_digest(tmp_path / "ref_out")
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_bad_rows_are_counted_logged_and_kept_in_rejects(tmp_path, caplog):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b"".join([
        json.dumps({"id": "ok1", "text": "fine text here"}).encode() + b"\n",
        b"{not json\n",
        b'{"id": "latin1", "text": "caf\xe9"}\n',
        json.dumps({"id": "empty", "text": "   "}).encode() + b"\n",
        json.dumps({"id": "notext", "body": "x"}).encode() + b"\n",
        json.dumps({"id": "nulltext", "text": None}).encode() + b"\n",
        b"\n",
        b"[1, 2]\n",
        json.dumps({"id": "ok2", "text": "more fine text"}).encode() + b"\n",
    ]))
    res = Pipeline(read(str(f)), LengthFilter(), write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert read_output(tmp_path / "out")["id"].to_list() == ["ok1", "ok2"]
    read_stats = res.steps[0]
    assert read_stats.step == "read" and read_stats.docs_in == 8
    assert read_stats.dropped == {"invalid_json": 2, "non_utf8": 1, "empty_text": 1, "missing_text": 2}
    rej = read_output(tmp_path / "w" / "rejects" / "read")
    assert set(rej["id"]) == {"bad.jsonl:2", "bad.jsonl:3", "bad.jsonl:4", "bad.jsonl:5", "bad.jsonl:6", "bad.jsonl:8"}
    assert "bad.jsonl:2" in caplog.text and "invalid json" in caplog.text


def test_on_error_raise_and_missing_text_column(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: invalid json"):
        Pipeline(read(str(f), on_error="raise"), write(str(tmp_path / "o"))).run(
            work_dir=str(tmp_path / "w"), workers=1, progress=False)
    g = tmp_path / "content.jsonl"
    g.write_text('{"content": "text under another name"}\n')
    with pytest.raises(InputError, match="no field 'text'.*content.*set input.text_field"):
        Pipeline(read(str(g)), write(str(tmp_path / "o2"))).run(work_dir=str(tmp_path / "w2"), workers=1,
                                                                progress=False)
    res = Pipeline(read(str(g), text_field="content"), write(str(tmp_path / "o3"))).run(
        work_dir=str(tmp_path / "w3"), workers=1, progress=False)
    assert res.docs_out == 1
