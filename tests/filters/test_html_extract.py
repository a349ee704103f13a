"""html_extract on the Dolma fixtures' WARC pages: trafilatura parity (DataTrove's call) and Resiliparse."""

from __future__ import annotations

import collections
import re

import polars as pl
import pytest

from curate.core.step import run_step
from curate.filters.html_extract import HtmlExtract
from curate.io.readers import read

pytest.importorskip("trafilatura", reason="the web extra is not installed")
pytest.importorskip("resiliparse", reason="the web extra is not installed")


@pytest.fixture(scope="module")
def pages(shared_data) -> pl.DataFrame:
    return pl.concat(list(read(str(shared_data / "web/dolma_fixtures/warc")).iter_batches()))


@pytest.fixture(scope="module")
def extracted(pages):
    return {ex: run_step(HtmlExtract(extractor=ex), pages) for ex in ("trafilatura", "resiliparse")}


def test_trafilatura_equals_its_own_output(pages, extracted):
    from trafilatura import extract
    from trafilatura.deduplication import LRU_TEST

    kept, rej, _ = extracted["trafilatura"]
    LRU_TEST.clear()  # trafilatura's deduplicate cache: the same state as the operator's batch start
    ref = {i: extract(h, favor_precision=True, include_comments=False, deduplicate=True)
           for i, h in pages.select("id", "text").iter_rows()}
    assert kept.height + (0 if rej is None else rej.height) == pages.height
    assert kept.height >= 30

    for i, t in kept.select("id", "text").iter_rows():
        assert t == ref[i]
    # pages trafilatura returns nothing for are the dropped ones, with the reason recorded
    assert set(() if rej is None else rej["id"]) == {i for i, t in ref.items() if not t}
    assert rej is None or (rej["reason"] == "no_text_extracted").all()
    # metadata kept: url/date pass through, the declared language is read from <html lang>
    assert kept["url"].null_count() == 0 and kept["date"].null_count() == 0
    assert (kept["html_lang"] == "en").sum() >= 25
    assert (kept["extracted_chars"] == kept["text"].str.len_chars()).all()
    assert not kept["text"].str.contains("<div").any()


def test_trafilatura_dedup_cache_is_cleared_per_batch(pages, extracted):
    # trafilatura's deduplicate cache makes a second pass in the same process drop repeated segments;
    # clearing it per batch gives the same text whatever ran before in the worker
    again, _, _ = run_step(HtmlExtract(), pages)
    first = extracted["trafilatura"][0]
    assert again["text"].to_list() == first["text"].to_list()
    from trafilatura.deduplication import LRU_TEST

    few = pages.head(8)
    LRU_TEST.clear()
    stale = [HtmlExtract(dedup_scope="process").score(few)["__extracted"].to_list() for _ in range(4)]
    fresh = [HtmlExtract().score(few)["__extracted"].to_list() for _ in range(4)]
    # measured: the 4th pass in one process extracts 23,190 characters instead of 20,043
    assert any(x != stale[0] for x in stale[1:])
    assert all(x == fresh[0] for x in fresh[1:]) and fresh[0] == stale[0]

def _f1(a: str, b: str) -> float:
    wa = collections.Counter(re.findall(r"\w+", a.lower()))
    wb = collections.Counter(re.findall(r"\w+", b.lower()))
    return 2 * sum((wa & wb).values()) / max(1, sum(wa.values()) + sum(wb.values()))


def test_resiliparse_agrees_on_most_pages(extracted):
    traf = dict(extracted["trafilatura"][0].select("id", "text").iter_rows())
    resi = dict(extracted["resiliparse"][0].select("id", "text").iter_rows())
    f1 = [_f1(t, resi.get(i, "")) for i, t in traf.items()]
    # measured: 25 of the 33 pages trafilatura keeps agree at word-F1 >= 0.8 (benchmarks/bench_web.py)
    assert sum(f >= 0.8 for f in f1) >= 0.6 * len(f1)
    assert sorted(f1)[len(f1) // 2] > 0.85


def test_unparsable_input_is_a_counted_drop():
    df = pl.DataFrame({"id": ["a", "b"], "text": ["<html lang='de-DE'><body><p>" + "Hallo Welt. " * 40 +
                                                   "</p></body></html>", "\x00\x00"], "__uid": [0, 1]},
                      schema_overrides={"__uid": pl.UInt64})
    kept, rej, _ = run_step(HtmlExtract(extractor="resiliparse"), df)
    assert kept["id"].to_list() == ["a"] and kept["html_lang"].item() == "de-de"
    assert "Hallo Welt." in kept["text"].item()
    assert rej is not None and rej["reason"].to_list() == ["no_text_extracted"]
