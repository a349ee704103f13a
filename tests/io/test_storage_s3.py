"""Object storage: inputs read from and outputs written to a real S3 server (moto's, started by the test
on 127.0.0.1) through pyarrow's S3FileSystem."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read, write
from curate.core.errors import ConfigError
from curate.filters.gopher import GopherQuality
from curate.io.storage import JOURNAL, put_atomic

pafs = pytest.importorskip("pyarrow.fs")
if not getattr(pafs, "S3FileSystem", None):  # pragma: no cover - depends on the pyarrow build
    pytest.skip("this pyarrow is built without S3 support", allow_module_level=True)
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra)")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "web_sample.jsonl.gz"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_endpoint, monkeypatch, request):
    """(filesystem, storage_options, bucket): a fresh bucket; credentials only through the environment."""
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    opts = {"endpoint_override": s3_endpoint, "scheme": "http", "region": "us-east-1"}
    fs = pafs.S3FileSystem(**opts, allow_bucket_creation=True)
    bucket = "b-" + request.node.name.replace("_", "-").lower()[:40]
    fs.create_dir(bucket)
    return fs, opts, bucket


def _put(fs, key: str, data: bytes) -> None:
    with fs.open_output_stream(key, compression=None) as f:
        f.write(data)


def _keys(fs, prefix: str) -> dict[str, int]:
    return {  # a plain listing, independent of curate's code
        i.path[len(prefix) + 1:]: i.size for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
        if i.type == pafs.FileType.File}


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """A jsonl.gz and a parquet of real web documents (the first 300 of the example sample)."""
    d = tmp_path / "in"
    d.mkdir()
    df = pl.read_ndjson(gzip.open(EXAMPLE, "rb").read()).head(300)
    with gzip.open(d / "a.jsonl.gz", "wb") as f:
        df.head(150).write_ndjson(f)
    df.tail(150).write_parquet(d / "b.parquet")
    return d


def _upload_dir(fs, local: Path, prefix: str) -> None:
    for p in sorted(local.iterdir()):
        _put(fs, f"{prefix}/{p.name}", p.read_bytes())


def test_reading_jsonl_gz_and_parquet_from_s3_equals_the_local_read(s3, sample):
    fs, opts, bucket = s3
    _upload_dir(fs, sample, f"{bucket}/in")
    local = pl.concat(list(read(str(sample)).iter_batches()), how="diagonal_relaxed")
    for path in (f"s3://{bucket}/in", f"s3://{bucket}/in/*", [f"s3://{bucket}/in/a.jsonl.gz",
                                                                 f"s3://{bucket}/in/b.parquet"]):
        spec = read(path, storage_options=opts)
        assert [Path(f).name for f in spec.files()] == ["a.jsonl.gz", "b.parquet"]
        remote = pl.concat(list(spec.iter_batches()), how="diagonal_relaxed")
        assert remote.height == 300
        assert remote.equals(local)


def test_storage_options_refuse_secrets():
    with pytest.raises(Exception, match="secret_key|access_key"):
        read("s3://b/x.jsonl", storage_options={"secret_key": "x"})
    with pytest.raises(Exception, match="access_key"):
        write("s3://b/out", storage_options={"access_key": "x"})


def test_remote_input_fingerprint_is_size_and_mtime(s3):
    from curate.core.plan import input_fingerprint

    fs, opts, bucket = s3
    _put(fs, f"{bucket}/in/a.jsonl", b'{"text": "one two three"}\n')
    spec = read(f"s3://{bucket}/in/a.jsonl", storage_options=opts)
    fp1 = input_fingerprint(spec)
    assert fp1["files"][0][:2] == [f"s3://{bucket}/in/a.jsonl", 26]
    assert fp1 == input_fingerprint(spec)
    _put(fs, f"{bucket}/in/a.jsonl", b'{"text": "one two three four"}\n')
    assert input_fingerprint(spec) != fp1


def _pipeline(src: str, out: str, opts: dict, tmp_path: Path, **out_kw) -> Pipeline:
    return Pipeline(read(src, storage_options=opts), GopherQuality(min_doc_words=20),
                    write(out, format="parquet", storage_options=opts, **out_kw),
                    work_dir=str(tmp_path / "work"))


def test_pipeline_writes_to_s3_resumes_and_never_touches_foreign_objects(s3, sample, tmp_path):
    fs, opts, bucket = s3
    _upload_dir(fs, sample, f"{bucket}/in")
    out = f"s3://{bucket}/out"
    r1 = _pipeline(f"s3://{bucket}/in", out, opts, tmp_path).run(workers=1, progress=False)
    keys = _keys(fs, f"{bucket}/out")
    assert JOURNAL in keys and {"part-00000.parquet", "part-00001.parquet"} <= set(keys)
    assert r1.remote[out]["uploaded"]
    got = pl.concat([pl.read_parquet(fs.open_input_file(f"{bucket}/out/{k}"))
                     for k in sorted(keys) if k.endswith(".parquet")])
    assert got.height == r1.docs_out > 0
    # same output run locally: the same kept documents
    local = _pipeline(str(sample), str(tmp_path / "local-out"), {}, tmp_path / "l").run(workers=1, progress=False)
    from curate.io.writers import read_output

    assert sorted(read_output(tmp_path / "local-out")["id"]) == sorted(got["id"])
    assert local.docs_out == r1.docs_out

    # resume: nothing recomputed, nothing uploaded
    r2 = _pipeline(f"s3://{bucket}/in", out, opts, tmp_path).run(workers=1, progress=False)
    assert r2.resumed_shards == 2
    assert r2.remote[out] == {"uploaded": [], "deleted": []}
    assert _keys(fs, f"{bucket}/out") == keys

    # a foreign object put under the prefix later is never deleted, and a smaller input sweeps only
    # curate's own part of the vanished shard
    _put(fs, f"{bucket}/out/notes.txt", b"mine")
    fs.delete_file(f"{bucket}/in/b.parquet")
    r3 = _pipeline(f"s3://{bucket}/in", out, opts, tmp_path).run(workers=1, progress=False)
    after = _keys(fs, f"{bucket}/out")
    assert "notes.txt" in after and "part-00001.parquet" not in after
    assert "part-00001.parquet" in r3.remote[out]["deleted"]
    with fs.open_input_stream(f"{bucket}/out/notes.txt") as f:
        assert f.read() == b"mine"


def test_a_foreign_non_empty_prefix_is_refused_unless_overwrite(s3, sample, tmp_path):
    fs, opts, bucket = s3
    _upload_dir(fs, sample, f"{bucket}/in")
    _put(fs, f"{bucket}/out/report.csv", b"a,b\n")
    _put(fs, f"{bucket}/out/part-00000.parquet", b"not curate's")
    with pytest.raises(ConfigError, match="not empty"):
        _pipeline(f"s3://{bucket}/in", f"s3://{bucket}/out", opts, tmp_path).run(workers=1, progress=False)
    assert set(_keys(fs, f"{bucket}/out")) == {"report.csv", "part-00000.parquet"}
    # overwrite: written next to foreign objects, but a foreign object of a part's name is never replaced
    with pytest.raises(ConfigError, match="not written by curate"):
        _pipeline(f"s3://{bucket}/in", f"s3://{bucket}/out", opts, tmp_path,
                  overwrite=True).run(workers=1, progress=False)
    with fs.open_input_stream(f"{bucket}/out/part-00000.parquet") as f:
        assert f.read() == b"not curate's"
    fs.delete_file(f"{bucket}/out/part-00000.parquet")
    _pipeline(f"s3://{bucket}/in", f"s3://{bucket}/out", opts, tmp_path, overwrite=True).run(
        workers=1, progress=False)
    keys = _keys(fs, f"{bucket}/out")
    assert {"report.csv", "part-00000.parquet", "part-00001.parquet", JOURNAL} <= set(keys)


def test_a_failed_upload_leaves_no_object_at_the_final_key(s3):
    fs, _, bucket = s3
    _put(fs, f"{bucket}/out/part-00000.parquet", b"the previous complete version")

    def failing():
        yield os.urandom(6 << 20)  # past pyarrow's multipart threshold: parts are on the server already
        yield os.urandom(6 << 20)
        raise OSError("disk read failed half way")

    with pytest.raises(OSError, match="half way"):
        put_atomic(fs, f"{bucket}/out/part-00000.parquet", failing())
    with pytest.raises(OSError):
        put_atomic(fs, f"{bucket}/out/part-00001.parquet", failing())
    keys = _keys(fs, f"{bucket}/out")
    assert keys == {"part-00000.parquet": len(b"the previous complete version")}
    with fs.open_input_stream(f"{bucket}/out/part-00000.parquet") as f:
        assert f.read() == b"the previous complete version"


def test_cli_validate_and_dry_run_see_the_remote_output(s3, sample, tmp_path, capsys):
    import yaml

    from curate.cli import main

    fs, opts, bucket = s3
    _upload_dir(fs, sample, f"{bucket}/in")
    cfg = {"input": {"path": f"s3://{bucket}/in/*", "storage_options": opts},
           "steps": [{"gopher_quality": {"min_doc_words": 20}}],
           "output": {"path": f"s3://{bucket}/out", "format": "parquet", "storage_options": opts},
           "work_dir": str(tmp_path / "work")}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "p.yaml")]) == 0
    assert main(["run", str(tmp_path / "p.yaml"), "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "p.yaml"), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "0 shard(s) to run, 2 done (resumed)" in plan, plan
    # a foreign object at the prefix of a new run: validate reports it before any work
    _put(fs, f"{bucket}/other/x.txt", b"x")
    cfg["output"]["path"] = f"s3://{bucket}/other"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "p.yaml")]) != 0
    got = capsys.readouterr()
    assert "not empty" in got.out + got.err
