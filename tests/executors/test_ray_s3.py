"""Object storage on Ray (issue 14 item 3), against a real S3 server (moto's, started here on 127.0.0.1):

* input read from ``s3://``, output (parquet) and rejects (jsonl) written to ``s3://``: the Ray executor,
  in both its modes, gives the local executor's kept rows, rejects with reasons and stats, object for
  object; rows in = kept + rejected;
* global stages (exact and MinHash dedup) with S3 in and out on Ray give the local result, and a finished
  run rerun on Ray does no work and rewrites no object;
* a run stopped part way on Ray (an operator failing on one shard while a file the test controls exists)
  resumes to the clean run's output and never deletes or rewrites an object it did not write;
* a second run writing the same prefix while one runs is refused, from the same or another work dir;
* the storage options (endpoint) reach the Ray workers while the credentials stay in the environment:
  neither the tasks Ray is handed nor any file the run or Ray writes holds them.

Needs the `ray` extra and moto's server (the dev extra); one local Ray instance (2 CPUs, conftest's
``local_ray``) and one moto server serve the whole module.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import secrets
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from pydantic import Field

from curate import Mapper, OpParams, Pipeline, RejectsSpec, read, write
from curate.core.config import ExecutorSpec
from curate.core.errors import CurateError
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality
from curate.filters.minhash import MinHashDedup
from curate.io.storage import JOURNAL

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'curate-llm[ray]')")
pafs = pytest.importorskip("pyarrow.fs")
if not getattr(pafs, "S3FileSystem", None):  # pragma: no cover - depends on the pyarrow build
    pytest.skip("this pyarrow is built without S3 support", allow_module_level=True)
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra)")

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "data" / "web_sample.jsonl.gz"
#: credentials of this module's processes, only ever in the environment; distinctive, so a leak is found
KEY_ID = "AKIACURATE" + secrets.token_hex(5).upper()
SECRET = "curate-test-secret-" + secrets.token_hex(12)
MODES = pytest.mark.parametrize("mode", ["data", "actors"])
_ENDPOINT: list[str] = []  # host:port of the module's S3 server, set by ``s3_opts``


class FailSwitch(Mapper):
    """Passes batches through unchanged, except the batch holding document ``doc_id``: while the file
    ``<switches>/hold`` exists it waits there (after creating ``<switches>/entered``), and while
    ``<switches>/fail`` exists it raises. The test drives runs with these files: stopped part way on one
    shard, or held running while a second run starts. The parameter names the folder, not the files: a
    parameter naming an existing file is part of the step's fingerprint (curate.core.plan), so a switch
    file named there would make the rerun a different configuration. Ray workers import this class from
    this module (the folder is on their PYTHONPATH)."""

    name = "fail_switch_for_test"

    class Params(OpParams):
        doc_id: str = Field(description="the document whose batch fails or waits")
        switches: str = Field(description="the folder of the switch files 'fail' and 'hold'")

    def adds(self) -> dict:
        return {}

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        if not (batch["id"].cast(pl.Utf8) == self.params.doc_id).any():
            return batch
        hold = Path(self.params.switches) / "hold"
        if hold.exists():
            (hold.parent / "entered").touch()
            deadline = time.monotonic() + 300
            while hold.exists():  # a bound, so a broken test cannot hang forever
                if time.monotonic() > deadline:
                    raise RuntimeError("held for 300 s: the test never released the run")
                time.sleep(0.05)
        if (Path(self.params.switches) / "fail").exists():
            raise RuntimeError(f"stopped by the test on document {self.params.doc_id}")
        return batch


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def s3_opts(tmp_path_factory):
    """A moto S3 server on 127.0.0.1; its storage options (endpoint, scheme, region: no secret). Sets the
    environment every process of the module sees, before Ray starts (the raylet that ``ray.init`` starts
    passes its environment to every worker): the credentials (only there), the prefix-lock folder, and this
    folder on PYTHONPATH so that Ray workers can import :class:`FailSwitch`."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _ENDPOINT[:] = [f"{host}:{port}"]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET),
                     ("AWS_DEFAULT_REGION", "us-east-1")):
            mp.setenv(k, v)
        for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(k, raising=False)
        mp.setenv("CURATE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
        try:
            yield {"endpoint_override": f"{host}:{port}", "scheme": "http", "region": "us-east-1"}
        finally:
            server.stop()


@pytest.fixture(scope="module")
def on_ray(s3_opts, request):
    """The module's local Ray (conftest's ``local_ray``, 2 CPUs), started once ``s3_opts`` set the environment."""
    return request.getfixturevalue("local_ray")


@pytest.fixture(scope="module")
def fs(s3_opts):
    return pafs.S3FileSystem(**s3_opts, allow_bucket_creation=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """300 real web pages (the bundled sample) with 12 exact and 12 near copies (a word changed, a word
    added) planted across files: three jsonl.gz files and a plain jsonl file with a broken line and a row
    without text among its real rows."""
    docs = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")][:300]
    exact = [dict(d, id=f"exact-{i}") for i, d in enumerate(docs[5::25])]
    near = [dict(d, id=f"near-{i}", text=d["text"].replace(" the ", " a ", 1) + " Thanks.")
            for i, d in enumerate(docs[11::25])]
    rows = docs + exact + near
    random.Random(7).shuffle(rows)
    d = tmp_path_factory.mktemp("corpus")
    head, tail = rows[:-30], rows[-30:]
    for k in range(3):
        with gzip.open(d / f"part{k}.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in head[k::3]))
    lines = [json.dumps(r) for r in tail]
    lines[10:10] = ['{"id": "broken", "text": "cut off']
    lines[20:20] = ['{"id": "no-text"}']
    (d / "part3.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _lines(corpus: Path) -> int:
    """Input rows, broken ones included (what rows in = kept + rejected counts)."""
    n = sum(len(gzip.open(f, "rt").read().splitlines()) for f in sorted(corpus.glob("*.jsonl.gz")))
    return n + len((corpus / "part3.jsonl").read_text().splitlines())


def _bucket(fs, corpus: Path, name: str, *, versioned: bool = False) -> str:
    """A fresh bucket with the corpus under ``in/``; ``versioned``: S3 keeps every version of an object,
    so a test can tell an object written once from one rewritten with the same bytes."""
    fs.create_dir(name)
    if versioned:
        _client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    for p in sorted(corpus.iterdir()):
        _put(fs, f"{name}/in/{p.name}", p.read_bytes())
    return name


def _client():
    """A boto3 client of the module's server (versioning is not in pyarrow's API); credentials from the env."""
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=f"http://{_ENDPOINT[0]}", region_name="us-east-1")


def _put(fs, key: str, data: bytes) -> None:
    with fs.open_output_stream(key, compression=None) as f:
        f.write(data)


def _objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes: a plain listing, independent of curate's code."""
    sel = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    out = {}
    for i in fs.get_file_info(sel):
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path, compression=None) as f:
                out[i.path[len(prefix) + 1:]] = f.read()
    return out


def _versions(fs, bucket: str, prefix: str) -> dict[str, int]:
    """Per object now under ``prefix``: how many versions S3 holds of it (each write makes one)."""
    current = _objects(fs, f"{bucket}/{prefix}")
    out = dict.fromkeys(current, 0)
    for page in _client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for v in page.get("Versions", []):
            key = v["Key"][len(prefix) + 1:]
            if key in out:
                out[key] += 1
    return out


def _stats(work: Path) -> list[dict]:
    """stats.json's steps without the wall-clock figures (seconds, phase timers), which differ run to run."""
    steps = json.loads((work / "stats.json").read_text())["steps"]
    return [{k: v for k, v in s.items() if k not in ("seconds", "timers")} for s in steps]


def _pipeline(bucket: str, opts: dict, name: str, steps: tuple, *, mode: str = "data",
              overwrite: bool = False) -> Pipeline:
    """``s3://bucket/in/*`` -> steps -> parquet at ``s3://bucket/<name>/out``, jsonl rejects at
    ``s3://bucket/<name>/rejects``."""
    return Pipeline(read(f"s3://{bucket}/in/*", storage_options=opts, batch_size=40), *steps,
                    write(f"s3://{bucket}/{name}/out", format="parquet", storage_options=opts, overwrite=overwrite),
                    RejectsSpec(path=f"s3://{bucket}/{name}/rejects", storage_options=opts),
                    executor=ExecutorSpec(mode=mode))


def _rows(objects: dict[str, bytes]) -> int:
    n = 0
    for key, data in objects.items():
        if key.endswith(".parquet"):
            n += pl.read_parquet(io.BytesIO(data)).height
        elif key.endswith(".jsonl"):
            n += len(data.splitlines())
    return n


# ------------------------------------------------------------------------------------------ 1. map/filter
def _filters() -> tuple:
    return (GopherQuality(), C4Quality(filter_no_terminal_punct=False))


@pytest.fixture(scope="module")
def filtered_locally(s3_opts, fs, corpus, tmp_path_factory) -> tuple[str, Path]:
    """The rule-filter pipeline run once by the local executor (2 workers): (bucket, work dir)."""
    bucket = _bucket(fs, corpus, "filters")
    work = tmp_path_factory.mktemp("filters-local") / "work"
    _pipeline(bucket, s3_opts, "local", _filters()).run(work_dir=str(work), workers=2, progress=False)
    return bucket, work


@MODES
def test_s3_in_and_out_on_ray_equal_the_local_run(filtered_locally, s3_opts, fs, corpus, on_ray, tmp_path, mode):
    bucket, local_work = filtered_locally
    res = _pipeline(bucket, s3_opts, f"ray-{mode}", _filters(), mode=mode).run(
        work_dir=str(tmp_path / "work"), workers=2, progress=False, executor="ray")
    local_out, ray_out = _objects(fs, f"{bucket}/local/out"), _objects(fs, f"{bucket}/ray-{mode}/out")
    local_rej, ray_rej = _objects(fs, f"{bucket}/local/rejects"), _objects(fs, f"{bucket}/ray-{mode}/rejects")
    # the same objects with the same bytes: kept rows, rejects with their reasons, and the journals
    assert ray_out == local_out and ray_rej == local_rej
    assert {"part-00000.parquet", "part-00003.parquet", JOURNAL} <= set(ray_out)
    assert _stats(tmp_path / "work") == _stats(local_work)
    by_step = {s["step"]: s for s in _stats(tmp_path / "work")}
    # real drops at every step, with reasons, so the comparison is not of empty folders
    assert sum(by_step["read"]["dropped"].values()) == 2
    assert by_step["gopher_quality"]["dropped"] and by_step["c4_quality"]["dropped"]
    reasons = pl.concat([pl.read_ndjson(io.BytesIO(v)) for k, v in ray_rej.items() if k.startswith("gopher_quality/")],
                        how="diagonal_relaxed")["reason"]
    assert reasons.null_count() == 0 and set(reasons) == set(by_step["gopher_quality"]["dropped"])
    # nothing lost: every input line is kept or rejected
    kept = _rows(ray_out)
    assert kept == res.docs_out > 0
    assert kept + _rows(ray_rej) == _lines(corpus) == by_step["read"]["docs_in"]


# ------------------------------------------------------------------------------------------ 2. global stages
def test_exact_and_minhash_dedup_with_s3_on_ray_equal_local_and_a_rerun_does_nothing(s3_opts, fs, corpus, on_ray,
                                                                                     tmp_path):
    """Exact and MinHash dedup (fits: Ray tasks and Ray Data shuffles) with S3 in and out; the work dir, which
    holds the spills, the fits' scratch and the output's stage, is a local folder here (on a cluster: shared
    storage, docs/ray.md)."""
    bucket = _bucket(fs, corpus, "dedup", versioned=True)

    def pipe(name: str) -> Pipeline:
        return _pipeline(bucket, s3_opts, name, (ExactDedup(), MinHashDedup()))

    pipe("local").run(work_dir=str(tmp_path / "wl"), workers=2, progress=False, executor="local")
    first = pipe("ray").run(work_dir=str(tmp_path / "wr"), workers=2, progress=False, executor="ray")
    ray_out = _objects(fs, f"{bucket}/ray/out")
    assert ray_out == _objects(fs, f"{bucket}/local/out")
    assert _objects(fs, f"{bucket}/ray/rejects") == _objects(fs, f"{bucket}/local/rejects")
    stats = _stats(tmp_path / "wr")
    assert stats == _stats(tmp_path / "wl")
    counters = {s["step"]: s["counters"] for s in stats}
    assert counters["exact_dedup"]["duplicates"] >= 12 and counters["minhash_dedup"]["clusters"] >= 12
    # the output was staged in the work dir, then uploaded
    assert sorted(p.name for p in (tmp_path / "wr" / "remote").rglob("part-*.parquet")) == sorted(
        k for k in ray_out if k.endswith(".parquet"))

    versions = _versions(fs, bucket, "ray")
    again = pipe("ray").run(work_dir=str(tmp_path / "wr"), workers=2, progress=False, executor="ray")
    assert again.resumed_shards == 3 * 4  # three segments (read; exact dedup; MinHash dedup) of four shards
    assert again.remote == {f"s3://{bucket}/ray/out": {"uploaded": [], "deleted": []},
                            f"s3://{bucket}/ray/rejects": {"uploaded": [], "deleted": []}}
    assert _versions(fs, bucket, "ray") == versions  # no object written again, not even with the same bytes
    assert _objects(fs, f"{bucket}/ray/out") == ray_out
    assert _stats(tmp_path / "wr") == stats and again.docs_out == first.docs_out


# ------------------------------------------------------------------------------------------ 3. resume
@MODES
def test_a_run_stopped_part_way_on_ray_resumes_to_the_clean_output(s3_opts, fs, corpus, on_ray, tmp_path, mode):
    bucket = _bucket(fs, corpus, f"resume-{mode}", versioned=True)
    doc_id = json.loads((corpus / "part3.jsonl").read_text().splitlines()[0])["id"]  # in the last shard
    (tmp_path / "switches").mkdir()
    fail = tmp_path / "switches" / "fail"

    def pipe(name: str, **kw) -> Pipeline:
        return _pipeline(bucket, s3_opts, name, (FailSwitch(doc_id=doc_id, switches=str(fail.parent)),
                                                 GopherQuality()), mode=mode, **kw)

    pipe("clean").run(work_dir=str(tmp_path / "clean"), workers=2, progress=False, executor="ray")
    clean_out, clean_rej = _objects(fs, f"{bucket}/clean/out"), _objects(fs, f"{bucket}/clean/rejects")
    # the user's own object under the prefix (allowed with overwrite: true), never to be touched
    _put(fs, f"{bucket}/stopped/out/README.txt", b"the user's notes")
    fail.touch()
    work = tmp_path / "work"
    with pytest.raises(Exception, match="stopped by the test"):
        pipe("stopped", overwrite=True).run(work_dir=str(work), workers=2, progress=False, executor="ray")
    # a failed run uploads nothing; its finished shards wait in the work dir's stage
    assert set(_objects(fs, f"{bucket}/stopped/out")) == {"README.txt"}
    assert not _objects(fs, f"{bucket}/stopped/rejects")
    done = sorted(p.name for p in (work / "segments" / "000" / "_done").glob("*.json"))
    assert "shard-00003.json" not in done

    fail.unlink()
    res = pipe("stopped", overwrite=True).run(work_dir=str(work), workers=2, progress=False, executor="ray")
    assert res.resumed_shards == len(done)
    out = _objects(fs, f"{bucket}/stopped/out")
    assert out.pop("README.txt") == b"the user's notes"
    assert out == clean_out and _objects(fs, f"{bucket}/stopped/rejects") == clean_rej
    versions = _versions(fs, bucket, "stopped/out")
    assert versions.pop("README.txt") == 1  # never rewritten
    versions.pop(JOURNAL)  # the journal is written twice a sync (pending claims, then the stamps)
    assert set(versions.values()) == {1}  # every part written once


# ------------------------------------------------------------------------------------------ 3b. the run lock
def test_a_second_run_on_the_same_s3_output_is_refused_while_one_runs(s3_opts, fs, corpus, on_ray, tmp_path):
    """A first run (local executor, in a thread) held inside its first shard by the test; a second run on
    Ray writing the same prefix is refused from the same work dir and from another one, as a second run
    on one local output folder is; the first run then finishes."""
    bucket = _bucket(fs, corpus, "lock")
    hold = tmp_path / "hold"
    hold.touch()
    doc_id = json.loads(gzip.open(corpus / "part0.jsonl.gz", "rt").readline())["id"]
    first = _pipeline(bucket, s3_opts, "run", (FailSwitch(doc_id=doc_id, switches=str(tmp_path)),))
    result: dict = {}

    def run_first() -> None:
        try:
            result["ok"] = first.run(work_dir=str(tmp_path / "w1"), workers=1, progress=False, executor="local")
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=run_first, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "entered").exists():  # wait until the first run is inside its work
            assert t.is_alive() and time.monotonic() < deadline, result
            time.sleep(0.05)
        for work in ("w1", "w2"):
            with pytest.raises(CurateError, match="in use"):
                _pipeline(bucket, s3_opts, "run", _filters()).run(work_dir=str(tmp_path / work), workers=2,
                                                                  progress=False, executor="ray")
        assert not _objects(fs, f"{bucket}/run/out")  # the refused runs wrote nothing
    finally:
        hold.unlink()
        t.join(120)
    assert "error" not in result, result
    assert result["ok"].docs_out == _lines(corpus) - 2
    assert _rows(_objects(fs, f"{bucket}/run/out")) == result["ok"].docs_out


# ------------------------------------------------------------------------------------------ 4. credentials
def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and not p.name.endswith(".sock"):
            try:
                data = p.read_bytes()
            except OSError:
                continue
            hits += [f"{p}: {n.decode()}" for n in needles if n in data]
    return hits


def test_storage_options_reach_ray_workers_and_credentials_stay_in_the_environment(s3_opts, fs, corpus, on_ray,
                                                                                    tmp_path):
    from ray import cloudpickle

    from curate.core.plan import plan_segments
    from curate.executors import stage_remote
    from curate.executors.ray import RayExecutor

    bucket = _bucket(fs, corpus, "secrets")
    needles = [SECRET.encode(), KEY_ID.encode()]

    pipe = _pipeline(bucket, s3_opts, "run", _filters())
    spec = pipe.spec(work_dir=str(tmp_path / "work"), workers=2, executor="ray")
    staged, _ = stage_remote(spec)
    ex = RayExecutor(staged)
    seg = plan_segments(staged.input, list(staged.steps), staged.output, staged.seed, staged.rejects_spec)[0]
    tasks, _ = ex._tasks(seg, staged.input.shards(), staged.rejects_spec, "cpu")
    assert len(tasks) == 4
    shipped = {"spec": cloudpickle.dumps(staged), "shard tasks (mode: actors)": cloudpickle.dumps(tasks),
               "dataset (mode: data)": cloudpickle.dumps(ex.data_pipeline(tasks))}
    for what, data in shipped.items():
        assert not [n for n in needles if n in data], f"credentials in the pickled {what}"
    # the endpoint does travel: the workers open the input objects with it
    assert s3_opts["endpoint_override"].encode() in shipped["shard tasks (mode: actors)"]

    # a real run: the Ray workers read the objects with the endpoint from the tasks and the keys from their
    # own environment; nothing the run or Ray writes holds the keys
    res = pipe.run(work_dir=str(tmp_path / "work"), workers=2, progress=False, executor="ray")
    assert res.docs_in == _lines(corpus) and res.docs_out > 0
    assert s3_opts["endpoint_override"] in (tmp_path / "work" / "pipeline.yaml").read_text()
    session = Path(on_ray._private.worker._global_node.get_session_dir_path())
    assert (session / "logs").is_dir()
    assert _files_holding(tmp_path / "work", needles) == []
    assert _files_holding(session / "logs", needles) == []
    assert _files_holding(Path(os.environ["CURATE_CACHE_DIR"]), needles) == []
