"""Hostile input (issue 11, items 5-9, 11, 19): aliased paths, damaged compressed files, fields whose type
varies, non-string text, deep nesting, huge integers, folders/FIFOs/unreadable files, garbage parquet,
.json arrays, lone surrogates, and outputs that read back with plain polars. Each case: rows in = kept +
rejected, every skip counted with a reason naming its file, no traceback."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
from pathlib import Path

import polars as pl
import pytest
import zstandard

from curate import Pipeline, read_output, write
from curate.filters.exact_dedup import ExactDedup
from curate.filters.length import LengthFilter
from curate.io.readers import InputSpec, ReadReport, read_shard
from curate.io.spill import SpillWriter

REPO = Path(__file__).resolve().parents[2]


def _read(spec: InputSpec) -> tuple[pl.DataFrame, ReadReport]:
    rep = ReadReport()
    frames = [b for sh in spec.shards() for b in read_shard(spec, sh, rep)]
    return (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()), rep


def _run(tmp_path: Path, spec: InputSpec, fmt: str = "jsonl", *ops, name: str = "o"):
    res = Pipeline(spec, *ops, write(str(tmp_path / name), format=fmt)).run(
        work_dir=str(tmp_path / f"w{name}"), workers=1, progress=False)
    stats = json.loads((tmp_path / f"w{name}" / "stats.json").read_text())
    return res, stats, read_output(tmp_path / name)


def _docs(n: int, **extra) -> list[dict]:
    return [{"id": f"d{i}", "text": f"document number {i} with a few words", **extra} for i in range(n)]


def _word(i: int) -> str:
    """A distinct word per number (exact dedup maps digits to 0, so numbered texts would collide)."""
    w = ""
    while True:
        w += chr(97 + i % 26)
        i //= 26
        if not i:
            return w


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# -- item 5: one file, many names --------------------------------------------------------------------

def test_aliased_paths_read_each_file_once(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_bytes(_jsonl(_docs(3)))
    (d / "sub" / "b.jsonl").write_bytes(_jsonl(_docs(2)))
    os.symlink("..", d / "sub" / "loop")  # a symlink loop: data/sub/loop/sub/loop/...
    os.symlink(".", d / "self")
    os.symlink("a.jsonl", d / "alias.jsonl")
    os.link(d / "a.jsonl", d / "hard.jsonl")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        spec = InputSpec(path="data/**/*.jsonl")
        assert spec.files() == ["data/a.jsonl", "data/sub/b.jsonl"]
        assert [s.index for s in spec.shards()] == [0, 1]
        assert InputSpec(path=["data/a.jsonl", "./data/a.jsonl"]).files() == ["data/a.jsonl"]
        assert InputSpec(path="data").files() == ["data/a.jsonl", "data/sub/b.jsonl"]
        _, stats, out = _run(tmp_path, spec)
    finally:
        os.chdir(cwd)
    assert out.height == 5 and stats["docs_in"] == 5


# -- item 6: damaged compressed files ---------------------------------------------------------------

def _complete_lines(data: bytes) -> int:
    return data.count(b"\n")


@pytest.mark.parametrize("ext", ["gz", "zst"])
def test_truncated_compressed_file_keeps_every_readable_row(tmp_path, ext):
    plain = _jsonl([dict(r, noise=os.urandom(24).hex()) for r in _docs(4000)])  # compresses to many blocks
    packed = gzip.compress(plain) if ext == "gz" else zstandard.ZstdCompressor().compress(plain)
    cut = packed[: len(packed) // 2]
    f = tmp_path / f"t.jsonl.{ext}"
    f.write_bytes(cut)
    if ext == "gz":
        readable = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(cut)
    else:
        readable = zstandard.ZstdDecompressor().decompressobj().decompress(cut)
    expect = _complete_lines(readable)
    assert 0 < expect < 4000
    res, stats, out = _run(tmp_path, InputSpec(path=str(f)))
    read_st = res.steps[0]
    assert out.height == expect
    assert read_st.dropped == {"truncated_file": 1}
    assert read_st.docs_in == out.height + 1  # the damaged tail is one counted unit
    rej = read_output(tmp_path / "wo" / "rejects" / "read")
    assert rej["id"].to_list() == [f"t.jsonl.{ext}:{expect + 1}"]
    assert "ends early at byte" in rej["detail"][0]


def test_corrupt_gzip_middle_is_a_counted_skip(tmp_path):
    packed = bytearray(gzip.compress(_jsonl(_docs(3000)), compresslevel=1))
    packed[len(packed) // 2: len(packed) // 2 + 64] = b"\xff" * 64
    f = tmp_path / "c.jsonl.gz"
    f.write_bytes(bytes(packed))
    df, rep = _read(InputSpec(path=str(f)))
    assert set(rep.skipped) <= {"corrupt_file", "truncated_file", "invalid_json", "non_utf8"}
    assert rep.skipped.get("corrupt_file", 0) + rep.skipped.get("truncated_file", 0) == 1
    assert rep.lines == df.height + sum(rep.skipped.values())


def test_concatenated_gzip_members_are_all_read(tmp_path):
    f = tmp_path / "m.jsonl.gz"
    f.write_bytes(gzip.compress(_jsonl(_docs(5))) + gzip.compress(_jsonl(_docs(7))))
    df, rep = _read(InputSpec(path=str(f)))
    assert df.height == 12 and not rep.skipped


# -- item 7: fields whose type varies ---------------------------------------------------------------

def test_mixed_type_field_rows_batches_shards_and_parts(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rows = [{"id": f"a{i}", "text": f"doc {_word(i)} with words", "tags": 1 if i % 2 else [1, 2]} for i in range(6)]
    (d / "a.jsonl").write_bytes(_jsonl(rows))  # mixed inside one batch
    rows = [{"id": f"b{i}", "text": f"doc b{_word(i)} with words", "tags": i} for i in range(4)] + \
           [{"id": f"b{i}", "text": f"doc b{_word(i)} with words", "tags": {"k": i}} for i in range(4, 8)]
    (d / "b.jsonl").write_bytes(_jsonl(rows))  # mixed across batches (batch_size 4)
    (d / "c.jsonl").write_bytes(_jsonl([{"id": "c0", "text": "the third shard document", "tags": 2.5}]))  # another shard
    spec = InputSpec(path=str(d), batch_size=4)
    _, stats, _ = _run(tmp_path, spec, "parquet", ExactDedup())  # a global stage: spill, fit, concat
    assert stats["docs_out"] == 15
    out = pl.scan_parquet(str(tmp_path / "o" / "*.parquet")).collect()  # one schema across parts
    assert out.height == 15 and out.schema["tags"] == pl.String
    tags = dict(zip(out["id"], out["tags"]))
    assert tags["a0"] == "[1, 2]" and tags["a1"] == "1" and tags["b5"] == '{"k": 5}' and tags["c0"] == "2.5"
    _, _, out = _run(tmp_path, spec, "jsonl", name="j")
    for p in (tmp_path / "j").glob("*.jsonl"):
        pl.read_ndjson(p)  # every jsonl part reads back with plain polars


def test_spilled_batches_share_one_schema_within_and_across_shards(tmp_path):
    from curate.io.spill import read_spills

    w = SpillWriter(tmp_path / "shard-00000")
    w.write(pl.DataFrame({"id": ["a"], "n": [1]}))
    w.write(pl.DataFrame({"id": ["b"], "n": [[1, 2]]}))
    w.close()
    w = SpillWriter(tmp_path / "shard-00001")
    w.write(pl.DataFrame({"id": ["c"], "n": [2.5]}))
    w.close()
    df = pl.concat(list(read_spills([tmp_path / "shard-00000", tmp_path / "shard-00001"])))
    assert df["n"].to_list() == ["1", "[1, 2]", "2.5"]


# -- item 8: non-string text ------------------------------------------------------------------------

@pytest.mark.parametrize("first", [True, False])
def test_non_string_text_is_a_counted_skip(tmp_path, first):
    bad = [{"id": "num", "text": 12345}, {"id": "bool", "text": True}, {"id": "list", "text": [1, 2]},
           {"id": "obj", "text": {"a": 1}}, {"id": "float", "text": 1.5}]
    good = [{"id": "ok", "text": "a real document"}, {"id": "looks", "text": "12345"},
            {"id": "brackets", "text": "[1, 2]"}]
    f = tmp_path / "t.jsonl"
    f.write_bytes(_jsonl(bad + good if first else good + bad))
    df, rep = _read(InputSpec(path=str(f)))
    assert sorted(df["id"]) == ["brackets", "looks", "ok"]  # strings that look like JSON stay strings
    assert rep.skipped == {"non_string_text": 5}
    assert all("t.jsonl:" in r["id"] for r in rep.rejects)
    only = tmp_path / "only.jsonl"
    only.write_bytes(_jsonl(bad))
    df, rep = _read(InputSpec(path=str(only)))
    assert df.height == 0 and rep.skipped == {"non_string_text": 5}


def test_non_string_text_in_parquet(tmp_path):
    pl.DataFrame({"id": ["a", "b", "c"], "text": [1, None, 3]}).write_parquet(tmp_path / "n.parquet")
    pl.DataFrame({"id": ["d"], "text": ["fine text"]}).write_parquet(tmp_path / "s.parquet")
    df, rep = _read(InputSpec(path=str(tmp_path / "*.parquet")))
    assert df["id"].to_list() == ["d"]
    assert rep.skipped == {"non_string_text": 2, "missing_text": 1}


# -- item 9: deep nesting, huge integers, folders, FIFOs, unreadable files, garbage parquet, .json ------

def test_deep_nesting_and_huge_integers(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"".join([
        b'{"id": "deep", "text": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        b'{"id": "big", "text": "big int here", "n": 123456789012345678901234567890}\n',
        b'{"id": "huge", "text": "huge int here", "n": 1' + b"0" * 60 + b"}\n",
        b'{"id": "small", "text": "small int here", "n": 7}\n',
    ]))
    _, stats, out = _run(tmp_path, InputSpec(path=str(f)), "parquet")
    read_st = stats["steps"][0]
    assert read_st["dropped"] == {"too_deeply_nested": 1}
    assert read_st["docs_in"] == 4 and stats["docs_out"] == 3
    n = dict(zip(out["id"], out["n"]))
    assert n == {"big": "123456789012345678901234567890", "huge": "1" + "0" * 60, "small": "7"}


def test_folders_and_fifos_matched_by_a_glob_are_skipped(tmp_path, caplog):
    (tmp_path / "a.jsonl").write_bytes(_jsonl(_docs(2)))
    (tmp_path / "dir.jsonl").mkdir()
    os.mkfifo(tmp_path / "fifo.jsonl")
    spec = InputSpec(path=str(tmp_path / "*.jsonl"))
    assert spec.files() == [str(tmp_path / "a.jsonl")]
    assert "fifo.jsonl" in caplog.text and "not a regular file" in caplog.text
    from curate.core.errors import ConfigError

    with pytest.raises(ConfigError, match="fifo.jsonl.*not a regular file"):
        InputSpec(path=str(tmp_path / "fifo.jsonl")).files()


def test_file_that_cannot_be_opened_is_a_counted_skip(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_jsonl(_docs(2)))
    b.write_bytes(_jsonl(_docs(3)))
    spec = InputSpec(path=str(tmp_path / "*.jsonl"))
    shards = spec.shards()
    b.unlink()
    b.mkdir()  # replaced by a folder after planning: open() raises IsADirectoryError
    rep = ReadReport()
    got = [x for sh in shards for x in read_shard(spec, sh, rep)]
    assert sum(x.height for x in got) == 2
    assert rep.skipped == {"unreadable_file": 1}
    assert "b.jsonl" in rep.rejects[0]["id"] and "IsADirectoryError" in rep.rejects[0]["detail"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_is_a_counted_skip(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(_jsonl(_docs(2)))
    f.chmod(0)
    df, rep = _read(InputSpec(path=str(f)))
    assert df.height == 0 and rep.skipped == {"unreadable_file": 1}


def test_garbage_and_wrongly_typed_parquet(tmp_path):
    (tmp_path / "garbage.parquet").write_bytes(os.urandom(2000))
    (tmp_path / "empty.parquet").write_bytes(b"")
    pl.DataFrame({"id": [{"a": 1}, {"a": 2}], "text": ["one doc", "two doc"]}).write_parquet(tmp_path / "s.parquet")
    _, stats, out = _run(tmp_path, InputSpec(path=str(tmp_path / "*.parquet")), "parquet")
    assert stats["steps"][0]["dropped"] == {"unreadable_file": 2}
    assert out["id"].to_list() == ['{"a": 1}', '{"a": 2}']
    rej = read_output(tmp_path / "wo" / "rejects" / "read")
    assert sorted(rej["id"]) == ["empty.parquet", "garbage.parquet"]


def test_json_array_file_is_read_as_documents(tmp_path):
    docs = _docs(5) + [{"id": "bad", "text": 7}, "not an object"]
    (tmp_path / "arr.json").write_text(json.dumps(docs, indent=2))
    (tmp_path / "arr2.json.gz").write_bytes(gzip.compress(json.dumps(_docs(2)).encode()))
    _, stats, out = _run(tmp_path, InputSpec(path=[str(tmp_path / "arr.json"), str(tmp_path / "arr2.json.gz")]))
    assert out.height == 7
    assert stats["steps"][0]["dropped"] == {"non_string_text": 1, "invalid_json": 1}
    assert stats["steps"][0]["docs_in"] == 9


# -- item 11: lone surrogates -----------------------------------------------------------------------

def test_lone_surrogates_are_skipped_and_pairs_kept_exact(tmp_path):
    f = tmp_path / "u.jsonl"
    f.write_bytes(b"".join([
        b'{"id": "lone", "text": "a\\ud800b"}\n',
        b'{"id": "low", "text": "a\\udc00b"}\n',
        b'{"id": "meta", "text": "fine", "m": "x\\ud83d"}\n',
        b'{"id": "pair", "text": "smile \\ud83d\\ude00 ok"}\n',
        b'{"id": "nul", "text": "a real \\u0000 nul"}\n',
        '{"id": "raw", "text": "raw emoji \U0001f600"}\n'.encode(),
    ]))
    _, stats, out = _run(tmp_path, InputSpec(path=str(f)))
    assert stats["steps"][0]["dropped"] == {"invalid_unicode": 3}
    text = dict(zip(out["id"], out["text"]))
    assert text == {"pair": "smile \U0001f600 ok", "nul": "a real \x00 nul", "raw": "raw emoji \U0001f600"}


# -- item 19: outputs read back with users' tools -----------------------------------------------------

def test_example_rejects_read_back_with_plain_read_ndjson(tmp_path):
    """The example's gopher_quality rejects had ``url`` null in their first 100 rows and a string later:
    ``pl.read_ndjson`` failed with "got non-null value for NULL-typed column"."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    cfg = (tmp_path / "examples" / "pipeline.yaml").read_text().replace("workers: 2", "workers: 1")
    (tmp_path / "examples" / "pipeline.yaml").write_text(cfg)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        Pipeline.from_yaml("examples/pipeline.yaml").run(progress=False)
    finally:
        os.chdir(cwd)
    parts = sorted((tmp_path / "out" / "example-rejects").rglob("*.jsonl"))
    assert len(parts) >= 5
    n = sum(pl.read_ndjson(p).height for p in parts)
    stats = json.loads((tmp_path / ".curate" / "example" / "stats.json").read_text())
    assert n == stats["docs_in"] - stats["docs_out"]
    assert pl.scan_parquet(str(tmp_path / "out" / "example" / "*.parquet")).collect().height == stats["docs_out"]


def test_rejects_typed_in_first_rows(tmp_path):
    rows = [{"id": f"s{i}", "text": "short", "url": None} for i in range(150)] + \
           [{"id": "late", "text": "tiny", "url": "http://x.org/"}]
    f = tmp_path / "r.jsonl"
    f.write_bytes(_jsonl(rows))
    _run(tmp_path, InputSpec(path=str(f), batch_size=50), "jsonl", LengthFilter(min_words=5))
    rej = pl.read_ndjson(tmp_path / "wo" / "rejects" / "length_filter" / "part-00000.jsonl")
    assert rej.height == 151 and rej.filter(pl.col("id") == "late")["url"].to_list() == ["http://x.org/"]


def test_parquet_parts_share_one_schema(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(_jsonl([dict(r, n=1) for r in _docs(3)]))
    (d / "b.jsonl").write_bytes(_jsonl([dict(r, n=1.5, extra="x") for r in _docs(3)]))
    (d / "c.jsonl").write_bytes(_jsonl(_docs(2)))
    _run(tmp_path, InputSpec(path=str(d)), "parquet")
    out = pl.scan_parquet(str(tmp_path / "o" / "*.parquet")).collect()
    assert out.height == 8 and out.schema["n"] == pl.Float64 and out["extra"].null_count() == 5
    # the rewritten parts' markers record their new sizes: a rerun resumes every shard
    _, stats, again = _run(tmp_path, InputSpec(path=str(d)), "parquet")
    assert stats["resumed_shards"] == 3 and again.equals(read_output(tmp_path / "o"))


def test_duplicate_ids_are_counted_and_warned(tmp_path, caplog):
    d = tmp_path / "in"
    d.mkdir()
    for src in ("a", "b"):  # int ids 0..99 from two sources: they collide once read as strings
        (d / f"{src}.jsonl").write_bytes(_jsonl([{"id": i, "text": f"{src} doc {i}"} for i in range(100)]))
    (d / "c.jsonl").write_bytes(_jsonl([{"id": f"c{i}", "text": f"c doc {i}"} for i in range(10)]))
    _, stats, out = _run(tmp_path, InputSpec(path=str(d)))
    assert out.height == 210 and stats["duplicate_ids"] == 100
    assert "100 output documents share their id" in caplog.text


# -- item 10 support: rename on read ----------------------------------------------------------------

def test_rename_moves_a_user_field_out_of_the_way(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_bytes(_jsonl([{"id": "a", "content": "some text here", "score": 0.3}]))
    df, _ = _read(InputSpec(path=str(f), rename={"content": "text", "score": "user_score"}))
    assert df.select("id", "text", "user_score").row(0) == ("a", "some text here", 0.3)
    from curate.core.errors import InputError

    g = tmp_path / "c.jsonl"
    g.write_bytes(_jsonl([{"text": "t", "a": 1, "b": 2}]))
    with pytest.raises(InputError, match="c.jsonl.*rename.*'b'"):
        _read(InputSpec(path=str(g), rename={"a": "b"}))


# -- line blocks: blank lines, CRLF, no final newline, block boundaries -----------------------------------

@pytest.mark.parametrize("layout", ["clean", "blank_lines", "crlf", "no_final_newline", "blank_first_and_last"])
def test_rows_and_line_numbers_of_every_block_layout(tmp_path, layout):
    """The reader hands polars whole blocks of lines when no line is blank (no split and re-join): the
    rows and their ``file:line`` ids must be those of a plain line-by-line read, across 1 MB blocks."""
    lines = [json.dumps({"text": f"line {i} " + _word(i) * 40}) for i in range(9000)]  # ~3.3 MB
    if layout in ("blank_lines", "blank_first_and_last"):
        for i in (7, 3001, 3002, 6500):
            lines[i] = ["", "   ", "\t", " \r"][i % 4]
    if layout == "blank_first_and_last":
        lines[0], lines[-1] = "", "  "
    sep = "\r\n" if layout == "crlf" else "\n"
    data = sep.join(lines) + ("" if layout == "no_final_newline" else sep)
    (tmp_path / "in.jsonl").write_bytes(data.encode())
    df, rep = _read(InputSpec(path=str(tmp_path / "in.jsonl"), batch_size=256))
    # reference: line by line, 1-based, skipping lines that are blank once stripped
    want = [(f"in.jsonl:{n}", json.loads(ln)["text"]) for n, ln in enumerate(data.split("\n"), 1)
            if ln.strip() and n <= len(lines)]
    assert list(zip(df["id"].to_list(), df["text"].to_list())) == want
    assert rep.lines == len(want) and not rep.skipped
