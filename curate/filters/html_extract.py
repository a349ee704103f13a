"""HTML-to-text extraction (``html_extract``): raw HTML in ``text`` (e.g. from the ``warc`` reader) becomes
the page's main text."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from curate.core.operator import Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register

#: ``<html ... lang="en-US">``: the page's declared language (first 2,000 characters are enough: the
#: attribute is on the root element)
_HTML_LANG = r"(?i)<html\b[^>]*?\blang\s*=\s*[\"']?\s*([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*)"


def extract_trafilatura(html: str, *, favour_precision: bool, deduplicate: bool) -> str | None:
    """DataTrove's ``Trafilatura.extract`` call: ``trafilatura.extract(html, favor_precision=...,
    include_comments=False, deduplicate=...)``, all else trafilatura's defaults."""
    from trafilatura import extract

    return extract(html, favor_precision=favour_precision, include_comments=False, deduplicate=deduplicate)


def extract_resiliparse(html: str, *, main_content: bool, alt_texts: bool, links: bool) -> str:
    """Resiliparse's ``extract_plain_text`` (Bevendorff et al. 2018/2021) on the parsed tree."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse(html), main_content=main_content, alt_texts=alt_texts,
                              links=links, list_bullets=True, preserve_formatting=True)


def _clear_trafilatura_dedup() -> None:
    from trafilatura.deduplication import LRU_TEST

    LRU_TEST.clear()


@register("html_extract")
class HtmlExtract(Filter):
    """Replaces raw HTML in ``text`` by the extracted main text; drops pages with nothing extracted.

    ``extractor: trafilatura`` (default, as DataTrove's web pipelines, e.g. FineWeb: ``Trafilatura(
    favour_precision=True)``) makes exactly DataTrove's call, ``trafilatura.extract(html,
    favor_precision=True, include_comments=False, deduplicate=True)``, so the text equals trafilatura's own
    output on the same pages in the same order (its ``deduplicate`` cache is cleared at each batch, see
    ``dedup_scope``). ``extractor: resiliparse`` uses Resiliparse's ``extract_plain_text(main_content=True)``, about
    an order of magnitude faster (see benchmarks/RESULTS.md, "Web input"), which agrees with trafilatura on
    most pages but keeps some more boilerplate. DataTrove's per-document timeout is not reproduced: both
    extractors are C/lxml code that return on the pages seen; an extraction error is a counted drop.

    Columns added: ``html_lang`` (String: the ``<html lang=...>`` attribute lower-cased, null when the
    page declares none), ``html_chars`` (UInt32: characters of the HTML input), ``extracted_chars``
    (UInt32: characters extracted, 0 when nothing or an error). Other columns (``url``, ``date`` of the
    ``warc`` reader) pass through. Rule ``no_text_extracted``: ``extracted_chars == 0``. Counters:
    ``extract_errors`` (exceptions in the extractor), ``empty_extractions``.
    """

    rewrites_text = True
    requires = ("trafilatura", "resiliparse")
    extra = "web"
    _ctx: RunContext | None = None

    class Params(OpParams):
        extractor: Literal["trafilatura", "resiliparse"] = Field(
            "trafilatura", description="trafilatura: DataTrove's default extractor; resiliparse: faster")
        favour_precision: bool = Field(True, description="trafilatura favor_precision (DataTrove default True)")
        deduplicate: bool = Field(True, description="trafilatura deduplicate (DataTrove default True)")
        main_content: bool = Field(True, description="resiliparse: main-content heuristics (its "
                                                      "recommended setting for corpus building)")
        alt_texts: bool = Field(False, description="resiliparse: keep image alt texts (off: not page text)")
        links: bool = Field(False, description="resiliparse: keep link targets (off: as trafilatura)")
        dedup_scope: Literal["batch", "document", "process"] = Field("batch", description=(
            "trafilatura's deduplicate keeps a process-wide cache of text segments, so a page's text depends "
            "on the pages extracted before it in that process (with DataTrove, on the task's file order "
            "and worker). batch: the cache is cleared at each batch, so output does not depend on workers; "
            "document: per page; process: never cleared (DataTrove's behaviour)"))

    def setup(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def extract_one(self, html: str) -> str | None:
        p = self.params
        if p.extractor == "trafilatura":
            if p.dedup_scope == "document":
                _clear_trafilatura_dedup()
            return extract_trafilatura(html, favour_precision=p.favour_precision, deduplicate=p.deduplicate)
        return extract_resiliparse(html, main_content=p.main_content, alt_texts=p.alt_texts, links=p.links)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        errors = 0
        out: list[str | None] = []
        if self.params.extractor == "trafilatura" and self.params.dedup_scope == "batch":
            _clear_trafilatura_dedup()
        # one library call per page is the unit of work of both extractors (C/lxml inside)
        for html in batch.get_column("text").to_list():
            try:
                out.append(self.extract_one(html) or None)
            except Exception:  # noqa: BLE001 - a page the extractor cannot parse is a counted drop
                errors += 1
                out.append(None)
        text = pl.Series("__extracted", out, dtype=pl.String)
        if self._ctx is not None:
            self._ctx.stat("extract_errors", errors)
            self._ctx.stat("empty_extractions", text.null_count() - errors)
        return batch.with_columns(
            pl.col("text").str.slice(0, 2000).str.extract(_HTML_LANG, 1).str.to_lowercase().alias("html_lang"),
            pl.col("text").str.len_chars().cast(pl.UInt32).alias("html_chars"),
            text.str.len_chars().fill_null(0).cast(pl.UInt32).alias("extracted_chars"),
            text,
        )

    def adds(self) -> dict[str, Column]:
        return {"html_lang": Column(pl.String, "the <html lang=...> attribute, lower-cased",
                                    "null when the page declares none"),
                "html_chars": Column(pl.UInt32, "characters of the HTML input"),
                "extracted_chars": Column(pl.UInt32, "characters extracted", "never null (0 when nothing or an error)")}

    def rules(self) -> list[Rule]:
        return [Rule("no_text_extracted", "extracted_chars", "==", 0)]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.with_columns(pl.col("__extracted").alias("text")).drop("__extracted")
