"""WARC input (``input: {path: crawl.warc.gz, format: warc}``): response records as documents.

Read with FastWARC (``fastwarc``, the ``web`` extra; Bevendorff et al. 2021, the reader Resiliparse and
the ChatNoir/OWS pipelines use). Each HTTP ``response`` record whose payload is text (``text/*``,
``application/xhtml+xml``, ``application/xml``; no Content-Type counts as HTML, as Common Crawl's
extractors assume) becomes one row:

======================  =======  ==============================================================
column                  dtype    meaning (null when)
======================  =======  ==============================================================
``id``                  String   ``WARC-Record-ID`` (``<urn:uuid:...>``)
``text``                String   the HTTP body decoded with its declared charset (else UTF-8),
                                 undecodable bytes replaced (U+FFFD): raw HTML, for ``html_extract``
``url``                 String   ``WARC-Target-URI`` without the angle brackets some writers add
``date``                String   ``WARC-Date`` as written (ISO 8601); null when absent
``content_type``        String   the HTTP ``Content-Type`` header; null when absent
``http_status``         Int32    HTTP status code; null when the record has no parsable status line
======================  =======  ==============================================================

Records of other types (request, metadata, warcinfo, resource) are not documents and are not counted;
response records with a non-text payload are skipped and counted as ``non_text_payload`` (in the read
step's rejects, as every reader's bad rows), so rows in = kept + skipped.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import TYPE_CHECKING

import polars as pl

from curate.core.errors import MissingDependencyError

if TYPE_CHECKING:
    from curate.io.readers import ReadReport

_TEXT_TYPES = ("text/", "application/xhtml+xml", "application/xml")
SCHEMA = {"id": pl.String, "text": pl.String, "url": pl.String, "date": pl.String,
           "content_type": pl.String, "http_status": pl.Int32}


def _decode(body: bytes, charset: str | None) -> str:
    if charset:
        try:
            codecs.lookup(charset)
            return body.decode(charset, errors="replace")
        except LookupError:  # an unknown charset label: fall back to UTF-8 as browsers do for unknown labels
            pass
    return body.decode("utf-8", errors="replace")


def iter_warc_rows(path: str, rep: ReadReport, on_error: str, *,
                   storage: tuple[tuple[str, str], ...] = ()) -> Iterator[dict]:
    """Row dicts (schema above) of one WARC file's text response records; others counted in ``rep``."""
    try:
        from fastwarc.warc import ArchiveIterator, WarcRecordType
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingDependencyError("warc reader", "fastwarc", "web") from e
    from curate.io.storage import open_input

    with open_input(path, storage) as f:  # FastWARC detects gzip/lz4 compression itself
        yield from _records(f, path, rep, on_error, ArchiveIterator, WarcRecordType)


def _records(f, path: str, rep: ReadReport, on_error: str, archive_iterator, record_type) -> Iterator[dict]:
    for rec in archive_iterator(f, record_types=record_type.response, parse_http=True):
        rep.lines += 1
        h = rec.headers
        rid = h.get("WARC-Record-ID") or f"{path}@{rec.stream_pos}"
        ctype = rec.http_headers.get("Content-Type") if rec.http_headers is not None else None
        if ctype is not None and not ctype.lower().lstrip().startswith(_TEXT_TYPES):
            rep.skip("non_text_payload", f"{rid} ({ctype})", "", on_error)
            continue
        body = rec.reader.read()
        url = (h.get("WARC-Target-URI") or "").strip().removeprefix("<").removesuffix(">") or None
        status = rec.http_headers.status_code if rec.http_headers is not None else None
        yield {"id": rid, "text": _decode(body, rec.http_charset), "url": url, "date": h.get("WARC-Date"),
               "content_type": ctype, "http_status": status}
