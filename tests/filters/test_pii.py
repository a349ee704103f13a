"""pii_redact on real 20 Newsgroups headers and signatures, plus planted numbers with known checksums."""

from __future__ import annotations

import re

import polars as pl
import pytest

from curate.core.operator import UID
from curate.core.step import run_step
from curate.filters.pii import DATATROVE_EMAILS, DATATROVE_IPS, PIIRedact, luhn_ok

#: an independent, looser email shape than the operator's regex (any word chars around "@", a TLD)
LOOSE_EMAIL = r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"


@pytest.fixture(scope="module")
def news(shared_data) -> pl.DataFrame:
    df = pl.read_ndjson(shared_data / "web/20news-bydate.jsonl.gz", n_rows=600)
    return df.select("id", "text").with_columns(pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


def _df(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


def test_no_email_left_on_real_headers(news):
    before = sum(len(re.findall(LOOSE_EMAIL, t)) for t in news["text"])
    out, rej, _ = run_step(PIIRedact(), news)
    assert rej is None and out.height == news.height  # a mapper: rows in = rows out
    left = [m for t in out["text"] for m in re.findall(LOOSE_EMAIL, t)
            if not any(r.split("@")[1] in m for r in DATATROVE_EMAILS)]
    assert before > 1000 and left == []
    assert out["pii_emails"].sum() >= before * 0.95
    # replacements used in turn, as DataTrove's PIIFormatter
    first = out.filter(pl.col("pii_emails") >= 2)["text"][0]
    assert all(r in first for r in DATATROVE_EMAILS)


def test_routing_header_ips_found(news):
    import ipaddress

    host = r"(?im)^NNTP-Posting-Host: (\d+\.\d+\.\d+\.\d+)\s*$"
    ips = news["text"].str.extract(host, 1)
    public = ips.map_elements(lambda s: ipaddress.ip_address(s).is_global, return_dtype=pl.Boolean)
    with_ip = news.filter(public.fill_null(False))
    out, _, _ = run_step(PIIRedact(), with_ip)
    assert with_ip.height >= 10  # 11 of the first 600 posts carry a public posting-host IP
    assert (out["pii_ips"] >= 1).all()
    for old, new in zip(with_ip["text"], out["text"]):
        ip = re.search(host, old).group(1)
        assert ip not in new
        assert re.search(r"(?im)^NNTP-Posting-Host: (" + "|".join(map(re.escape, DATATROVE_IPS)) + r")\s*$", new)


def test_hand_checked_post(news):
    # checked by hand: a real post with From/Reply-To addresses, a message-id and a posting host
    row = news.filter(pl.col("text").str.contains("dps@nasa.kodak.com", literal=True))
    out, _, _ = run_step(PIIRedact(), row)
    t = out["text"][0]
    assert "dps@nasa.kodak.com" not in t and "129.126.121.55" not in t
    assert "Organization: Eastman Kodak Company" in t and "Subject: Re: Christian Morality is" in t
    assert out["pii_ips"][0] == 1 and out["pii_emails"][0] >= 3


def test_luhn_on_real_and_fake_numbers():
    assert luhn_ok("4111 1111 1111 1111") and luhn_ok("5500-0000-0000-0004") and luhn_ok("378282246310005")
    assert not luhn_ok("4111 1111 1111 1112") and not luhn_ok("0000 0000 0000 0000")
    text = ("Pay with 4111 1111 1111 1111 or 378282246310005, not 4111 1111 1111 1112. "
            "Order 1234567890123 shipped. Call (617) 253-1000 or +44 20 7946 0958 on 1993-04-21. "
            # a real 20news signature: ZIP code + phone, whose 15 digits happen to pass Luhn
            "Knoxville, TN 37933 615-966-9200")
    out, _, _ = run_step(PIIRedact(), _df([text]))
    t = out["text"][0]
    assert "4111 1111 1111 1111" not in t and "378282246310005" not in t
    assert "4111 1111 1111 1112" in t and "1234567890123" in t and "1993-04-21" in t
    assert out["pii_cards"][0] == 2 and out["pii_phones"][0] == 3 and "TN 37933 555-0100" in t
    assert "(617) 253-1000" not in t and "+44 20 7946 0958" not in t


def test_private_ips_kept_public_v6_replaced():
    text = "lo 127.0.0.1, lan 10.1.2.3 and 192.168.0.7; web 8.8.8.8; v6 2607:f8b0:4004:800::200e, ::1, fe80::1"
    out, _, _ = run_step(PIIRedact(), _df([text]))
    t = out["text"][0]
    assert all(ip in t for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.7", "::1", "fe80::1"))
    assert "8.8.8.8" not in t and "2607:f8b0" not in t and "2001:db8::1" in t
    assert out["pii_ips"][0] == 2
    all_ips, _, _ = run_step(PIIRedact(only_public_ips=False), _df([text]))
    assert "10.1.2.3" not in all_ips["text"][0]


def test_no_candidate_rows_untouched_and_counts_zero():
    texts = ["Plain text with no identifiers at all.", "Room 101, year 1993."]
    out, _, _ = run_step(PIIRedact(), _df(texts))
    assert out["text"].to_list() == texts
    assert out.select(pl.col("^pii_.*$").sum()).row(0) == (0, 0, 0, 0)
