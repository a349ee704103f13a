"""PII redaction (``pii_redact``): emails, IP addresses, phone numbers and card numbers replaced."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import polars as pl
from pydantic import Field

from curate.core.operator import Column, Mapper, OpParams, RunContext
from curate.core.registry import register

#: DataTrove ``PIIFormatter`` email regex (``pipeline/formatters/pii.py``, an RFC 5322-style local part),
#: widened in two places seen in real mail (20 Newsgroups headers): ``_`` inside domain labels
#: (``smt_6.b21.ingr.com``, old non-DNS host names) and a dot just before ``@`` (``chris.doelle.@...``)
EMAIL = (r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\.?@(?:(?:[A-Za-z0-9](?:["
         r"A-Za-z0-9_-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|2[0-4][0-9]|["
         r"01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)])")
#: DataTrove's IPv4 regex (dotted quad of 0-255), validated by ``ipaddress`` as DataTrove does
IPV4 = r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
#: IPv6 (not in DataTrove): 2-8 colon-separated hex groups with at most one "::", validated by ``ipaddress``
IPV6 = r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})(?![\w:])"
#: phone numbers: North-American ``(617) 253-1000``, ``617-253-1000``, ``617.253.1000``, optional ``+1``;
#: international ``+44 20 7946 0958`` (a ``+``, a country code, 2-5 groups). Bare 10-digit runs are not
#: matched (ids, timestamps); a separator is required.
PHONE = (r"(?<![\w+])(?:(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}"
         r"|\+\d{1,3}(?:[ .-]\(?\d{1,4}\)?){2,5})(?![\w-])")
#: card-like numbers, Luhn-checked: 13-19 contiguous digits, or the printed groupings (4-4-4-4 with 1-7
#: more digits for 13-19 digit cards, Amex 4-6-5) with one repeated space or dash. Free digit groupings
#: are not taken: a ZIP code followed by a phone number ("37933 615-966-9200") passed Luhn in 20news.
CARD = r"(?<![\w-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?![\w-])"

#: DataTrove's replacement strings (example.com/.org are reserved example domains; its IPs were random
#: addresses that did not answer pings), used in turn
DATATROVE_EMAILS = ("email@example.com", "firstname.lastname@example.org")
DATATROVE_IPS = ("22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11",
                 "18.104.22.168")


def luhn_ok(number: str) -> bool:
    """Luhn checksum (ISO/IEC 7812) of the digits in ``number``; all-same-digit strings are rejected."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 13 or len(set(digits)) == 1:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def ip_ok(ip: str, public_only: bool) -> bool:
    """A valid address, and (``public_only``, DataTrove's default) a globally routable one."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_global or not public_only


class _Replacer:
    """A regex, an optional validator and replacement strings used in turn (DataTrove's ``PIIReplacer``:
    one counter per operator instance, so the choice cycles over the matches in input order)."""

    def __init__(self, pattern: str, replacements: tuple[str, ...], validator: Callable[[str], bool] | None):
        self.regex = re.compile(pattern)
        self.replacements = replacements
        self.validator = validator
        self._i = 0
        self.count = 0

    def sub(self, text: str) -> tuple[str, int]:
        n = 0

        def repl(m: re.Match) -> str:
            nonlocal n
            if self.validator is not None and not self.validator(m.group(0)):
                return m.group(0)
            n += 1
            r = self.replacements[self._i]
            self._i = (self._i + 1) % len(self.replacements)
            return r

        return self.regex.sub(repl, text), n


@register("pii_redact")
class PIIRedact(Mapper):
    """Replaces emails, IP addresses (v4 and v6), phone numbers and Luhn-valid card numbers in ``text``.

    Defaults follow DataTrove's ``PIIFormatter``: its email and IPv4 regexes, only public (globally
    routable, ``ipaddress.is_global``) IPs replaced, its replacement strings used in turn
    (:data:`DATATROVE_EMAILS`, :data:`DATATROVE_IPS`). DataTrove has no IPv6, phone or card rules: here IPv6
    addresses get the documentation address ``2001:db8::1`` (RFC 3849), phone numbers the fictional
    ``555-0100`` (NANP's range reserved for fiction) and cards ``0000 0000 0000 0000`` (fails the
    all-same-digit check, so redaction is idempotent). Order: emails, IPs, cards, phones (a card's digit
    groups would otherwise look like phone numbers).

    Only documents that contain a candidate (one vectorised polars regex pass) go through Python's ``re``
    for validation and replacement; the rest are untouched.

    Columns added (UInt32, 0 when none, never null): ``pii_emails``, ``pii_ips``, ``pii_phones``,
    ``pii_cards`` - replacements made per type. Counters with the same names sum them over the run.
    """

    rewrites_text = True
    _ctx: RunContext | None = None

    class Params(OpParams):
        emails: bool = Field(True, description="replace email addresses (DataTrove remove_emails=True)")
        ips: bool = Field(True, description="replace IP addresses (DataTrove remove_ips=True)")
        only_public_ips: bool = Field(True, description="only globally routable IPs (DataTrove default: "
                                                          "private/loopback/reserved ranges are not PII)")
        phones: bool = Field(True, description="replace phone numbers (not in DataTrove)")
        cards: bool = Field(True, description="replace Luhn-valid 13-19 digit card numbers (not in DataTrove)")
        email_replacement: tuple[str, ...] = Field(DATATROVE_EMAILS, min_length=1,
                                                   description="used in turn; default DataTrove's")
        ip_replacement: tuple[str, ...] = Field(DATATROVE_IPS, min_length=1,
                                                description="IPv4 replacements used in turn; default DataTrove's")
        ipv6_replacement: tuple[str, ...] = Field(("2001:db8::1",), min_length=1,
                                                  description="RFC 3849 documentation prefix")
        phone_replacement: tuple[str, ...] = Field(("555-0100",), min_length=1,
                                                   description="NANP 555-01xx, reserved for fiction")
        card_replacement: tuple[str, ...] = Field(("0000 0000 0000 0000",), min_length=1,
                                                  description="not Luhn-accepted here, so idempotent")

    def __init__(self, params: OpParams | None = None, /, **kwargs):
        super().__init__(params, **kwargs)
        p = self.params
        pub = p.only_public_ips
        self._steps: list[tuple[str, _Replacer]] = []
        if p.emails:
            self._steps.append(("pii_emails", _Replacer(EMAIL, p.email_replacement, None)))
        if p.ips:
            self._steps.append(("pii_ips", _Replacer(IPV4, p.ip_replacement, lambda s: ip_ok(s, pub))))
            self._steps.append(("pii_ips", _Replacer(IPV6, p.ipv6_replacement, lambda s: ip_ok(s, pub))))
        if p.cards:
            self._steps.append(("pii_cards", _Replacer(CARD, p.card_replacement, luhn_ok)))
        if p.phones:
            self._steps.append(("pii_phones", _Replacer(PHONE, p.phone_replacement, None)))
        # the cheap pre-check: polars' (Rust) regex has no look-around, so candidates are over-approximated
        cheap = []
        if p.emails:
            cheap.append(r"@")
        if p.ips:
            cheap += [r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"]
        if p.cards or p.phones:
            cheap.append(r"\d[ .()-]{0,2}\d{3}[ .-]\d{4}|\+\d|\d{13}|\d{4}[ -]\d{4}[ -]\d{4}|\d{4}[ -]\d{6}[ -]")
        self._candidate = "|".join(cheap) if cheap else None

    def setup(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """One document: the redacted text and the replacements per column name."""
        counts = {"pii_emails": 0, "pii_ips": 0, "pii_phones": 0, "pii_cards": 0}
        for col, rep in self._steps:
            text, n = rep.sub(text)
            counts[col] += n
        return text, counts

    def adds(self) -> dict[str, Column]:
        return {name: Column(pl.UInt32, f"{what} replaced", "never null (0 when none)") for name, what in (
            ("pii_emails", "email addresses"), ("pii_ips", "IP addresses"), ("pii_phones", "phone numbers"),
            ("pii_cards", "card numbers"))}

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        cols = ("pii_emails", "pii_ips", "pii_phones", "pii_cards")
        n = batch.height
        counts = {c: [0] * n for c in cols}
        texts = batch.get_column("text")
        if self._candidate is not None and n:
            idx = texts.str.contains(self._candidate).fill_null(False).arg_true().to_list()
            if idx:
                new = []
                for i, t in zip(idx, texts.gather(idx).to_list()):
                    red, c = self.redact(t)
                    new.append(red)
                    for k, v in c.items():
                        counts[k][i] = v
                texts = texts.scatter(idx, pl.Series(new, dtype=pl.String))
        out = batch.with_columns(texts.alias("text"),
                                 *[pl.Series(c, counts[c], dtype=pl.UInt32) for c in cols])
        if self._ctx is not None:
            for c in cols:
                self._ctx.stat(c, sum(counts[c]))
        return out
