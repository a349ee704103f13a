"""WARC reader on the Dolma fixtures' real Common Crawl-style WARC files."""

from __future__ import annotations

import polars as pl
import pytest

from curate.io.readers import ReadReport, read, read_shard
from curate.io.shards import infer_format

pytest.importorskip("fastwarc", reason="the web extra (fastwarc) is not installed")


def test_warc_response_records_become_documents(shared_data):
    folder = shared_data / "web/dolma_fixtures/warc"
    assert infer_format(str(folder / "sample-0000.warc.gz")) == "warc"
    spec = read(str(folder))
    df = pl.concat(list(spec.iter_batches()))
    # 22 + 15 response records (the other 26 records are requests, metadata, warcinfo, resources)
    assert df.height == 37
    assert df.columns[:6] == ["id", "text", "url", "date", "content_type", "http_status"]
    assert df["id"].str.starts_with("<urn:uuid:").all() and df["id"].n_unique() == 37
    assert df["url"].str.starts_with("https://").all()  # the "<...>" some WARC writers add is stripped
    assert df.filter(pl.col("id") == "<urn:uuid:283E41D7-F686-4C3E-B7DA-E8D248A100C1>")["url"].item() == \
        "https://www.semanticscholar.org/research/research-team"
    assert df["date"].str.contains(r"^2024-04-25T\d\d:\d\d:\d\dZ$").all()
    assert df["content_type"].str.starts_with("text/html").all() and (df["http_status"] == 200).all()
    assert df["text"].str.contains("(?i)<html").all()


def test_warc_batches_and_counts(shared_data):
    path = shared_data / "web/dolma_fixtures/warc/sample-0000.warc.gz"
    spec = read(str(path), batch_size=5)
    shard = spec.shards()[0]
    rep = ReadReport()
    batches = list(read_shard(spec, shard, rep))
    assert [b.height for b in batches] == [5, 5, 5, 5, 2]
    assert rep.lines == 22 and not rep.skipped
    uids = pl.concat([b["__uid"] for b in batches])
    assert uids.n_unique() == 22
