"""Property-based hostile input (issue 11): for any mix of good rows, invalid JSON, non-UTF-8 bytes,
non-string/empty/missing text, mixed-type metadata, surrogates and truncated compressed files, a real
pipeline never raises, rows in = kept + rejected (counted from the files it wrote), every skipped row is
in rejects/read with a reason, every good row is kept, and nothing outside the output, rejects and work
folders changes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

import polars as pl
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from curate import Pipeline, read, write
from curate.core.errors import InputError
from curate.filters.exact_dedup import ExactDedup
from curate.filters.length import LengthFilter
from curate.io.readers import open_binary

READ_REASONS = {"invalid_json", "non_utf8", "missing_text", "empty_text", "non_string_text", "invalid_unicode",
                "too_deeply_nested", "truncated_file", "corrupt_file", "unreadable_file"}

_meta = st.one_of(st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
                  st.booleans(), st.text(max_size=5), st.lists(st.integers(0, 9), max_size=3),
                  st.dictionaries(st.sampled_from("ab"), st.integers(0, 9), max_size=2))

# (kind, line) pairs; kind "good" rows must all be kept (their texts are distinct 5-word sentences)
_bad_lines = st.sampled_from([
    ("bad", b"{oops"),
    ("bad", b'{"text": "caf\xe9 au lait"}'),
    ("bad", b'{"text": 12345}'),
    ("bad", b'{"text": true}'),
    ("bad", b'{"text": [1, 2]}'),
    ("bad", b'{"text": {"a": 1}}'),
    ("bad", b'{"text": "   "}'),
    ("bad", b'{"body": "no text field"}'),
    ("bad", b'{"body": "no text field either"}'),
    ("bad", b'{"text": null}'),
    ("bad", b'{"text": "lone \\ud800 surrogate"}'),
    ("bad", b"[1, 2]"),
    ("bad", b'{"text": "x", "m": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ("blank", b""),
])


_LETTERS = str.maketrans("0123456789", "abcdefghij")


@st.composite
def _corpus(draw):
    n = draw(st.integers(1, 40))
    lines: list[tuple[str, bytes]] = []
    for i in range(n):
        if draw(st.booleans()):
            tag = str(i).translate(_LETTERS)  # exact dedup maps digits to 0: distinct letters instead
            row = {"id": f"g{i}", "text": " ".join(f"w{tag}x{c}" for c in "abcde") + " \U0001f600",
                   "tags": draw(_meta)}
            if draw(st.integers(0, 5)) == 0:
                row["text"] += " \\ud83d\\ude00"  # an escaped valid surrogate pair, as text
            lines.append(("good", json.dumps(row, ensure_ascii=draw(st.booleans())).encode()))
        else:
            lines.append(draw(_bad_lines))
    return lines, draw(st.sampled_from(["", ".gz", ".zst"])), draw(st.booleans()), draw(st.integers(1, 7))


def _readable(data: bytes, comp: str) -> bytes:
    """The bytes a (maybe truncated) compressed file still yields."""
    if comp == ".gz":
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(data)
    if comp == ".zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _digest(root: Path, skip: set[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in skip:
            continue
        h.update(str(rel).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _count_rows(folder: Path) -> int:
    n = 0
    for p in folder.rglob("part-*"):
        with open_binary(str(p)) as f:
            n += sum(1 for line in f if line.strip())
    return n


@settings(max_examples=int(os.environ.get("CURATE_HYPOTHESIS_EXAMPLES", "12")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_corpus())
@example(([("bad", b'{"body": "no text field"}')], "", False, 1))  # a wrong text_field: the one error
@example(([("bad", b'{"text": "caf\xe9 au lait"}'), ("bad", b'{"body": "no text field"}')], ".gz", False, 2))
@example(([("bad", b'{"text": "lone \\ud800 surrogate"}'), ("bad", b"{oops"), ("bad", b'{"body": "x"}')], "", False, 3))
def test_any_input_rows_in_equal_kept_plus_rejected(corpus):
    lines, comp, truncate, batch = corpus
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        (root / "data").mkdir()
        raw = b"".join(ln + b"\n" for _, ln in lines)
        if comp == ".gz":
            data = gzip.compress(raw, mtime=0)
        elif comp == ".zst":
            data = zstandard.ZstdCompressor().compress(raw)
        else:
            data = raw
        truncated = bool(comp) and truncate
        if truncated:
            data = data[: max(len(data) * 2 // 3, 1)]
        (root / "data" / f"in.jsonl{comp}").write_bytes(data)
        (root / "data" / "notes.txt.keep").write_text("the user's own file")
        before = _digest(root, {"out", "work"})
        try:
            res = Pipeline(read(str(root / "data" / "*.jsonl*"), batch_size=batch), LengthFilter(min_words=3),
                           ExactDedup(), write(str(root / "out"))).run(
                work_dir=str(root / "work"), workers=1, progress=False)
        except InputError as e:
            # the one error a file may cause: no row names the text field at all (a wrong
            # input.text_field), said before any output, naming the file
            assert "no field 'text'" in str(e) and f"in.jsonl{comp}" in str(e)
            readable = _readable(data, comp)
            assert b'"text"' not in readable[: readable.rfind(b"\n") + 1]
            assert _digest(root, {"out", "work"}) == before
            return
        assert _digest(root, {"out", "work"}) == before  # only curate's own folders changed
        read_st = res.steps[0]
        kept = _count_rows(root / "out")
        rejected = _count_rows(root / "work" / "rejects")
        assert read_st.docs_in == kept + rejected  # rows in = kept + rejected, from the files written
        assert read_st.docs_in - read_st.docs_out == sum(read_st.dropped.values())
        assert set(read_st.dropped) <= READ_REASONS
        if read_st.dropped:
            rej = pl.concat([pl.read_ndjson(p) for p in (root / "work" / "rejects" / "read").glob("*.jsonl")])
            assert rej.height == sum(read_st.dropped.values())
            assert dict(rej.group_by("reason").len().iter_rows()) == read_st.dropped
            assert rej["id"].str.starts_with(f"in.jsonl{comp}").all()  # every skip names its file
        if not truncated:
            rows = [k for k, _ in lines if k != "blank"]
            assert read_st.docs_in == len(rows)
            assert kept == sum(k == "good" for k in rows)  # no good row lost
