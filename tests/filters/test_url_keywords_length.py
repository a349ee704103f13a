from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

from curate.core.operator import UID
from curate.core.step import run_step
from curate.filters.keywords import RegexFilter
from curate.filters.length import CharRatioFilter, LengthFilter
from curate.filters.url import URLFilter, read_list


def _df(texts, **cols) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, **cols}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


@pytest.mark.parametrize("url,reason", [
    ("https://sub.bad.com/page", "domain"),
    ("http://bad.com", "domain"),
    ("https://bad.com.evil.org/", None),          # a suffix match, not a parent domain
    ("https://good.org/exact/page", "url"),
    ("https://good.org/porn-video", "hard_blacklisted"),
    ("https://good.org/pornography", None),       # whole tokens only for hard words
    ("https://good.org/a?sex=1&xxx=2", "soft_blacklisted"),
    ("https://good.org/a?sex=1", None),           # one soft word is below the threshold of 2
    ("http://ex-ample.net/", "blacklisted_subword"),
    ("http://good.org/", None),
])
def test_url_filter_branches(url, reason):
    f = URLFilter(blocked_domains=["bad.com"], blocked_urls=["https://good.org/exact/page"], banned_words=["porn"],
                  soft_banned_words=["sex", "xxx"], banned_subwords=["example"])
    _, rej, _ = run_step(f, _df(["x"], url=[url]))
    assert (rej["reason"][0] if rej is not None else None) == reason


def test_url_filter_missing_url_kept_and_list_files(tmp_path, shared_data):
    easylist = shared_data / "web/dolma_fixtures/urls/easylist.txt.gz"
    domains = read_list(easylist, domains=True)
    assert len(domains) > 100 and all("^" not in d and "/" not in d for d in domains)
    f = URLFilter(blocked_domains_file=str(easylist))
    kept, rej, _ = run_step(f, _df(["a", "b"], url=[None, f"https://www.{domains[0]}/x"]))
    assert kept["id"].to_list() == ["0"] and rej["reason"].to_list() == ["domain"]
    with pytest.raises(ValidationError, match="file not found"):
        URLFilter(blocked_domains_file=str(tmp_path / "nope.txt"))


def test_regex_and_keywords():
    texts = ["Buy cheap viagra now", "A classic novel", "Call 555-1234 today", "Passport details"]
    kept, rej, _ = run_step(RegexFilter(patterns=[r"\d{3}-\d{4}"], keywords=["viagra", "pass"]), _df(texts))
    assert kept["id"].to_list() == ["1", "3"]  # "pass" does not match inside "Passport"
    assert set(rej["reason"]) == {"regex_match"}
    kept, _, _ = run_step(RegexFilter(keywords=["novel"], mode="keep"), _df(texts))
    assert kept["id"].to_list() == ["1"]
    with pytest.raises(ValidationError):
        RegexFilter(patterns=["("])


def test_length_and_char_ratio():
    kept, rej, _ = run_step(LengthFilter(min_words=2, max_chars=20), _df(["one", "two words", "x " * 30]))
    assert kept["id"].to_list() == ["1"]
    assert dict(zip(rej["id"], rej["reason"])) == {"0": "min_words", "2": "max_chars"}
    kept, rej, _ = run_step(CharRatioFilter(max_digit_ratio=0.5), _df(["plain words here", "$$$ ### !!! ???", "1234567 a"]))
    assert kept["id"].to_list() == ["0"]
    assert dict(zip(rej["id"], rej["reason"])) == {"1": "min_alnum_ratio", "2": "max_digit_ratio"}


def test_regex_validation_uses_the_engine_that_runs_it_and_counts_adjacent_keywords():
    with pytest.raises(ValidationError, match="polars"):
        RegexFilter(patterns=["foo(?=bar)"])  # look-around: valid in Python's re, not in polars
    out = RegexFilter(keywords=["bad"], max_matches=1).score(_df(["bad bad", "bad", "badly"]))
    assert out["regex_matches"].to_list() == [2, 1, 0]
