"""Readers for every input format, byte-range sharding, bounded batches, and writers' formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
import zstandard

from curate import Pipeline, read, read_output, write
from curate.core.operator import UID
from curate.io.readers import InputSpec, ReadReport, read_shard
from curate.io.shards import plan_shards

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "web_sample.jsonl.gz"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in gzip.open(EXAMPLE, "rt")]


def _all(spec: InputSpec) -> pl.DataFrame:
    frames = []
    for sh in spec.shards():
        for b in read_shard(spec, sh):
            assert b.height <= spec.batch_size
            frames.append(b)
    return pl.concat(frames, how="diagonal_relaxed")


def test_formats_read_the_same_documents(tmp_path, rows):
    plain = tmp_path / "a.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    pl.DataFrame(rows).write_parquet(tmp_path / "a.parquet", row_group_size=100)
    ref = _all(InputSpec(path=str(plain), batch_size=64))
    assert ref.height == len(rows) and ref["id"].to_list() == [r["id"] for r in rows]
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.parquet"):
        got = _all(InputSpec(path=str(tmp_path / name), batch_size=64))
        assert got["text"].to_list() == ref["text"].to_list(), name
        assert got["id"].to_list() == ref["id"].to_list(), name
        assert "source" in got.columns


def test_text_folder_and_generated_ids(tmp_path):
    d = tmp_path / "txt"
    (d / "sub").mkdir(parents=True)
    (d / "one.txt").write_text("first document")
    (d / "sub" / "two.txt").write_text("second document")
    (d / "bad.txt").write_bytes(b"caf\xe9")
    rep = ReadReport()
    spec = InputSpec(path=str(d))
    got = pl.concat([b for sh in spec.shards() for b in read_shard(spec, sh, rep)])
    assert sorted(got["text"].to_list()) == ["first document", "second document"]
    assert rep.skipped == {"non_utf8": 1}
    j = tmp_path / "noid.jsonl"
    j.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    got = _all(InputSpec(path=str(j)))
    assert got["id"].to_list() == ["noid.jsonl:1", "noid.jsonl:3"]


def test_byte_range_shards_equal_whole_file(tmp_path, rows):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps(dict(r, id=None)) + "\n" for r in rows * 3))
    whole = _all(InputSpec(path=str(big), batch_size=100, shard_mb=1024))
    spec = InputSpec(path=str(big), batch_size=100, shard_mb=1)
    shards = plan_shards(spec.files(), None, 300_000)
    assert len(shards) > 3
    parts = pl.concat([b for sh in shards for b in read_shard(spec, sh)], how="diagonal_relaxed")
    assert parts["id"].to_list() == whole["id"].to_list()  # file:line ids survive the split
    assert parts["text"].to_list() == whole["text"].to_list()
    assert parts[UID].n_unique() == parts.height


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_writers_round_trip(tmp_path, fmt):
    Pipeline(read(str(EXAMPLE), batch_size=100), write(str(tmp_path / "o"), format=fmt, columns=["source"])).run(
        work_dir=str(tmp_path / "w"), workers=1, progress=False)
    out = read_output(tmp_path / "o")
    assert out.height == 519 and set(out.columns) == {"id", "text", "source"}


def test_parquet_writer_survives_metadata_type_change(tmp_path):
    f = tmp_path / "drift.jsonl"
    f.write_text("".join(json.dumps({"text": f"doc {i}", "meta": None if i < 5 else {"k": i}}) + "\n" for i in range(10)))
    Pipeline(read(str(f), batch_size=5), write(str(tmp_path / "o"), format="parquet")).run(
        work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert read_output(tmp_path / "o").height == 10


def test_parquet_writer_never_drops_new_columns_or_truncates(tmp_path):
    from curate.io.writers import ShardWriter

    w = ShardWriter(tmp_path / "o", "part-00000", "parquet")
    w.write(pl.DataFrame({"id": ["a"], "text": ["x"], "n": [1]}))
    w.write(pl.DataFrame({"id": ["b"], "text": ["y"], "n": [2.5], "lang": ["en"]}))
    w.write(pl.DataFrame({"id": ["c"], "text": ["z"], "n": [3.0], "lang": ["de"]}))
    w.close()
    out = read_output(tmp_path / "o").sort("id")
    assert out["n"].to_list() == [1.0, 2.5, 3.0]
    assert out["lang"].to_list() == [None, "en", "de"]


def test_shard_cuts_past_the_last_newline_of_a_read_block(tmp_path):
    from curate.io.shards import _line_starts

    line = b'{"text": "' + b"x" * 1000 + b'"}\n'
    p = tmp_path / "big.jsonl"
    p.write_bytes(line * 20_000)  # 20 MB: the reader's 16 MiB blocks end mid-line
    size = p.stat().st_size
    for target in (16_777_100, 16_777_300, 5_000_000):
        starts = _line_starts(str(p), size, target)
        assert len(starts) == -(-size // target) or len(starts) == size // target + 1
        for (s, line_no), (s2, _) in zip(starts, starts[1:]):
            assert 0 < s2 - s <= target + len(line) and (s2 % len(line)) == 0
            assert line_no == s // len(line) + 1
