"""URL blocklist filtering (RefinedWeb §G.1; DataTrove ``URLFilter``)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from pydantic import Field, field_validator

from curate.core.operator import PATH_FILE, Column, Filter, OpParams, Rule
from curate.core.registry import register

_HOST = r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://)?(?:[^@/?#]*@)?([^/:?#]+)"


_DOMAIN = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)+$")


def read_list(path: str | Path, domains: bool = False) -> list[str]:
    """One entry per line, lowercased; blank lines and '#'/'!' comments skipped; .gz accepted.

    With ``domains=True`` only domain entries are kept: plain ``example.com`` lines and adblock
    ``||example.com^`` rules (other adblock rules, e.g. path patterns, are not domains and are skipped)."""
    import gzip

    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    out = []
    with opener(p, "rt", encoding="utf-8", errors="replace") as f:
        for raw in f:
            s = raw.strip()
            if not s or s.startswith(("#", "!", "[")):
                continue
            if domains:
                if s.startswith("||"):
                    s = s[2:].split("^")[0].split("$")[0]
                s = s.lower()
                if not _DOMAIN.match(s):
                    continue
            out.append(s.lower())
    return out


@register("url_filter")
class URLFilter(Filter):
    """Drops documents whose URL is on a blocklist or contains banned words.

    Follows DataTrove's ``URLFilter`` (after RefinedWeb): a document is dropped if its host or any parent
    domain is in ``blocked_domains`` (DataTrove checks the registered domain and the full host), its full
    URL is in ``blocked_urls``, a ``banned_words`` entry is one of the URL's alphanumeric tokens, at least
    ``soft_word_threshold`` (default 2, as the reference) ``soft_banned_words`` are, or a
    ``banned_subwords`` entry occurs in the URL lowercased with non-alphanumerics removed (catches
    "ex-ample"). Lists come inline or from files (``*_file``; one entry per line, .gz and adblock
    ``||domain^`` lines accepted). No lists ship with curate: the defaults block nothing. Documents with no
    URL are kept (a missing ``url_field`` column keeps every document).
    """

    class Params(OpParams):
        url_field: str = Field("url", description="input field holding the document's URL (DataTrove's "
                               "metadata key: url)")
        blocked_domains: list[str] = Field(default_factory=list, description="domains blocked with their "
                                           "subdomains (default none: no list ships with curate)")
        blocked_domains_file: str | None = Field(None, json_schema_extra=PATH_FILE, description="file of blocked "
                                                 "domains, one per line or adblock ||domain^ (default none)")
        blocked_urls: list[str] = Field(default_factory=list, description="full URLs blocked (default none)")
        blocked_urls_file: str | None = Field(None, json_schema_extra=PATH_FILE, description="file of blocked "
                                              "URLs, one per line (default none)")
        banned_words: list[str] = Field(default_factory=list, description="a URL token equal to one of these "
                                        "drops the document (default none)")
        banned_words_file: str | None = Field(None, json_schema_extra=PATH_FILE, description="file of banned "
                                              "words, one per line (default none)")
        soft_banned_words: list[str] = Field(default_factory=list, description="words that drop the document "
                                             "when soft_word_threshold of them are URL tokens (default none)")
        soft_word_threshold: int = Field(2, ge=1, description="soft banned words needed to drop "
                                         "(DataTrove URLFilter: 2)")
        banned_subwords: list[str] = Field(default_factory=list, description="substrings of the URL with "
                                           "non-alphanumerics removed that drop the document (default none)")
        banned_subwords_file: str | None = Field(None, json_schema_extra=PATH_FILE, description="file of banned "
                                                 "subwords, one per line (default none)")

        @field_validator("blocked_domains_file", "blocked_urls_file", "banned_words_file", "banned_subwords_file")
        @classmethod
        def _exists(cls, v: str | None) -> str | None:
            if v is not None and not Path(v).is_file():
                raise ValueError(f"file not found: '{v}'")
            return v

    def _lists(self) -> dict[str, list[str]]:
        p = self.params
        if not hasattr(self, "_cached"):
            def merged(inline: list[str], file: str | None, domains: bool = False) -> list[str]:
                return sorted({s.lower() for s in inline} | (set(read_list(file, domains)) if file else set()))
            self._cached = {
                "domains": merged(p.blocked_domains, p.blocked_domains_file, domains=True),
                "urls": merged(p.blocked_urls, p.blocked_urls_file),
                "words": merged(p.banned_words, p.banned_words_file),
                "soft": sorted({s.lower() for s in p.soft_banned_words}),
                "subwords": [s for s in merged(p.banned_subwords, p.banned_subwords_file) if s],
            }
        return self._cached

    def adds(self) -> dict[str, Column]:
        no_url = "false when the document has no URL"
        return {
            "url_host": Column(pl.String, "lowercased host of the URL", "null when the document has no URL"),
            "url_blocked_domain": Column(pl.Boolean, "host or a parent domain is blocked", no_url),
            "url_blocked_url": Column(pl.Boolean, "the full URL is blocked", "null when the document has no URL "
                                      "and a URL list is given; never drops"),
            "url_banned_word": Column(pl.Boolean, "a URL token is a banned word", "null when the document has no "
                                      "URL and a word list is given; never drops"),
            "url_soft_banned_words": Column(pl.UInt32, "distinct soft banned words among the URL tokens",
                                            "null when the document has no URL and a soft list is given; never drops"),
            "url_banned_subword": Column(pl.Boolean, "a banned subword occurs in the normalised URL",
                                         "null when the document has no URL and a subword list is given; never drops"),
        }

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        lists = self._lists()
        field = self.params.url_field
        url = (pl.col(field).cast(pl.String) if field in batch.columns else pl.lit(None, dtype=pl.String))
        host = url.str.extract(_HOST, 1).str.to_lowercase().str.strip_chars_end(".")
        out = batch.with_columns(host.alias("url_host"), url.str.to_lowercase().alias("__url"))
        blocked_domain: pl.Expr = pl.lit(False)
        if lists["domains"]:
            # each parent domain with two or more labels: a.b.example.com -> itself, b.example.com, example.com
            hosts = pl.DataFrame({"h": out.get_column("url_host").fill_null("")}).with_row_index("r")
            hosts = hosts.with_columns(pl.col("h").str.split(".").alias("labels"))
            hosts = hosts.with_columns(
                pl.int_ranges(0, pl.max_horizontal(pl.col("labels").list.len() - 1, 0)).alias("k")
            ).explode("k").drop_nulls("k")
            suffix = pl.col("labels").list.slice(pl.col("k")).list.join(".")
            hit = hosts.filter(suffix.is_in(pl.Series(lists["domains"]).implode())).get_column("r").unique()
            out = out.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).is_in(hit.implode()).alias("__blocked"))
            blocked_domain = pl.col("__blocked")
        tokens = pl.col("__url").str.extract_all(r"[a-z0-9]+")
        norm = pl.col("__url").str.replace_all(r"[^a-z0-9]", "")
        exprs = [blocked_domain.alias("url_blocked_domain")]
        exprs.append((pl.col("__url").is_in(pl.Series(lists["urls"], dtype=pl.String).implode())
                      if lists["urls"] else pl.lit(False)).alias("url_blocked_url"))
        exprs.append((tokens.list.eval(pl.element().is_in(lists["words"])).list.any()
                      if lists["words"] else pl.lit(False)).alias("url_banned_word"))
        exprs.append((tokens.list.unique().list.eval(pl.element().is_in(lists["soft"])).list.sum()
                      if lists["soft"] else pl.lit(0, dtype=pl.UInt32)).alias("url_soft_banned_words"))
        exprs.append((norm.str.contains_any(lists["subwords"]) if lists["subwords"] else pl.lit(False))
                     .alias("url_banned_subword"))
        return out.with_columns(exprs).drop("__url", "__blocked", strict=False)

    def rules(self) -> list[Rule]:
        return [Rule("domain", "url_blocked_domain", "is_true"), Rule("url", "url_blocked_url", "is_true"),
                Rule("hard_blacklisted", "url_banned_word", "is_true"),
                Rule("soft_blacklisted", "url_soft_banned_words", ">=", self.params.soft_word_threshold),
                Rule("blacklisted_subword", "url_banned_subword", "is_true")]
