"""Read a score out of an LLM judge's free text.

Judges are asked for "Score: N" but answer in many shapes; in order of trust:

1. a JSON object (possibly inside ```json fences) with a ``score``/``rating``/``quality``/``complexity`` key;
2. a labelled score: ``Score: 7/10``, ``Rating: 4``, ``Quality: 5 out of 6``, ``Overall score - 8``;
3. an emphasised number: ``**8**``, ``[[7]]`` (MT-Bench's format, Zheng et al. 2023), ``<score>3</score>``;
4. the first number inside [lo, hi] anywhere in the text (``N/M`` counts as N when M is the scale's top).

``x/M`` with M different from ``hi`` is rescaled to the judge's range. A value outside [lo, hi], or no
number at all, yields ``(None, reason)``: the caller counts the reason rather than guessing.
"""

from __future__ import annotations

import json
import re

_KEYS = ("score", "rating", "quality", "complexity", "overall", "grade")
_N = r"(-?\d+(?:\.\d+)?)"
_LABELLED = re.compile(r"(?:score|rating|quality|complexity|grade|overall)[^\d\n-]{0,20}?" + _N
                       + r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_EMPH = re.compile(r"(?:\*\*|\[\[|<score>)\s*" + _N + r"(?:\s*/\s*(\d+(?:\.\d+)?))?\s*(?:\*\*|\]\]|</score>)",
                   re.IGNORECASE)
_ANY = re.compile(_N + r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?")
_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_OBJ = re.compile(r"\{[^{}]*\}")


def _value(num: str, denom: str | None, lo: float, hi: float) -> float:
    v = float(num)
    if denom is not None:
        d = float(denom)
        if d > 0 and d != hi:
            v = lo + (v / d) * (hi - lo)  # "4/5" on a 1-10 judge: rescale to the judge's range
    return v


def parse_score(text: str | None, lo: float = 1, hi: float = 10) -> tuple[float | None, str | None]:
    """(score, None) or (None, reason) with reason in empty | no_number | out_of_range."""
    if text is None or not text.strip():
        return None, "empty"
    for blob in [*_FENCE.findall(text), *_OBJ.findall(text)]:
        try:
            obj = json.loads(blob)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for k in _KEYS:
                v = obj.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return (float(v), None) if lo <= v <= hi else (None, "out_of_range")
                if isinstance(v, str):
                    m = _ANY.search(v)
                    if m:
                        f = _value(m.group(1), m.group(2), lo, hi)
                        return (f, None) if lo <= f <= hi else (None, "out_of_range")
    seen_number = False
    for rx in (_LABELLED, _EMPH):
        for m in rx.finditer(text):
            seen_number = True
            f = _value(m.group(1), m.group(2), lo, hi)
            if lo <= f <= hi:
                return f, None
    for m in _ANY.finditer(text):
        seen_number = True
        f = _value(m.group(1), m.group(2), lo, hi)
        if lo <= f <= hi:
            return f, None
    return None, ("out_of_range" if seen_number else "no_number")
