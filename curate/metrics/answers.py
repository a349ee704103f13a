"""Final-answer extraction and comparison for math word problems (GSM8K-style labels).

GSM8K (Cobbe et al. 2021) ends every reference solution with ``#### <number>``; chain-of-thought
prompting (Wei et al. 2022) ends the model's solution with "The answer is <number>.". A number is
normalised before comparing: ``$``, ``%``, thousands commas and spaces are removed, a trailing ``.`` is
dropped, and numerically equal values compare equal (``18.0`` == ``18`` == ``18.00``; ``1/2`` == ``0.5``).
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s?/\s?\d+)?%?|-?\$?\.\d+%?"
_MARKERS = (
    re.compile(r"####\s*(" + _NUM + ")"),
    re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}"),
    re.compile(r"answer\s+is\s*:?\s*\**\s*(" + _NUM + ")", re.IGNORECASE),
    re.compile(r"answer\s*:\s*\**\s*(" + _NUM + ")", re.IGNORECASE),
)
_ANY_NUM = re.compile(_NUM)


def normalize_number(s: str | None) -> str | None:
    """Canonical text of a number ('1,234.50' -> '1234.5', '$18.00' -> '18', '3/4' -> '0.75'); None if not one."""
    if s is None:
        return None
    t = s.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".").rstrip("%")
    if not t:
        return None
    try:
        v = Fraction(t)  # exact: '0.1' + '0.2' style float noise never decides a match
    except (ValueError, ZeroDivisionError):
        return None
    if v.denominator == 1:
        return str(v.numerator)
    f = float(v)
    return repr(round(f, 10)).rstrip("0").rstrip(".") if "." in repr(f) else repr(f)


def gsm8k_label(answer: str | None) -> str | None:
    """The normalised number after ``####`` in a GSM8K reference answer (None if absent)."""
    if not answer:
        return None
    m = _MARKERS[0].search(answer)
    return normalize_number(m.group(1)) if m else None


def extract_answer(text: str | None) -> tuple[str | None, int]:
    """(normalised final answer of a model's solution, offset where its answer statement starts).

    Markers in order: ``#### n``, ``\\boxed{n}``, "the answer is n", "answer: n" (the last occurrence of
    the first marker found); otherwise the last number in the text. Offset is len(text) when no marker."""
    if not text:
        return None, 0
    for rx in _MARKERS:
        hits = list(rx.finditer(text))
        if hits:
            m = hits[-1]
            return normalize_number(m.group(1)), m.start()
    nums = list(_ANY_NUM.finditer(text))
    if nums:
        return normalize_number(nums[-1].group(0)), len(text)
    return None, len(text)


def answers_match(pred: str | None, gold: str | None) -> bool:
    """True when both normalise to the same number (or, not numbers, to the same lowercased text)."""
    if pred is None or gold is None:
        return False
    a, b = normalize_number(pred), normalize_number(gold)
    if a is not None and b is not None:
        return Fraction(a) == Fraction(b)
    return pred.strip().lower().rstrip(".") == gold.strip().lower().rstrip(".")
