"""CCNet line normalisation and whitespace token counts of a whole batch in one numba pass over its UTF-8
bytes (its own module, imported on first use, so that importing the KenLM model or the perplexity
operator loads no numba).

:func:`normalize_lines` splits every document on ``"\\n"`` (as ``str.split("\\n")``), applies CCNet's
per-line normaliser (``cc_net/text_normalizer.py::normalize`` with ``punct=1``: strip, lowercase, NFD +
drop combining marks, digits to ``"0"``, the unicode punctuation map, non-printing characters removed)
and counts the ``\\S+`` tokens of the result, for every line made of ASCII and mapped punctuation only
(:data:`curate.core.text.CCNET_UNICODE_PUNCT` without U+FF11, a digit). On such a line every step is a
byte rule: ``str.strip`` removes the ASCII whitespace bytes at both ends (nothing else there is
whitespace), lowercasing is A-Z, NFD changes nothing and no character is a combining mark, the digits
are 0-9, the punctuation is replaced by its ASCII mapping, and the non-printing characters are the bytes
below 0x20 and 0x7f; the output is printable ASCII, so its tokens are the runs of non-space bytes. A line
with any other character (accents, other scripts, C1 controls, unicode whitespace) is marked, and the
caller normalises it with the polars expression :func:`curate.core.text.ccnet_normalize` and splices it
in (:func:`curate.models.kenlm.ccnet_line_table`). ``tests/models/test_kenlm.py`` checks the result byte for byte against CCNet's own
per-line normaliser on real multilingual text.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare
from curate.core.text import CCNET_UNICODE_PUNCT
from curate.core.tokens import decode_utf8

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)


def punct_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CCNet's punctuation map as arrays: ``index[cp]`` = the entry of code point ``cp`` (0: not mapped;
    the keys are all below 0x10000), and the replacements' UTF-8 bytes, entry ``k`` being
    ``rep[rep_off[k]:rep_off[k + 1]]``. U+FF11 is left out: it is a digit, which CCNet turns into "0"
    before the map is applied."""
    index = np.zeros(0x10000, dtype=np.int64)
    reps = [b""]
    for k, v in CCNET_UNICODE_PUNCT.items():
        if k == "\uff11":
            continue
        index[ord(k)] = len(reps)
        reps.append(v.encode())
    rep_off = np.cumsum([0] + [len(r) for r in reps]).astype(np.int64)
    return index, np.frombuffer(b"".join(reps), dtype=np.uint8).copy(), rep_off


def ascii_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per ASCII byte: its output byte (lowercased, digits to "0", 0 for the deleted non-printing bytes
    below 0x20 and 0x7f), and whether Python's ``str.isspace`` holds (\\t \\n \\v \\f \\r, U+001C-001F, " ")."""
    out = np.zeros(128, dtype=np.uint8)
    for c in range(0x20, 0x7F):
        ch = chr(c).lower()
        out[c] = ord("0") if ch.isdigit() else ord(ch)
    space = np.array([chr(c).isspace() for c in range(128)], dtype=np.bool_)
    return out, space


@njit(cache=True)
def normalize_lines(data: np.ndarray, offsets: np.ndarray, lut: np.ndarray, space: np.ndarray,
                    punct: np.ndarray, rep: np.ndarray, rep_off: np.ndarray, out: np.ndarray,
                    line_off: np.ndarray, line_doc: np.ndarray, ntok: np.ndarray, raw_start: np.ndarray,
                    raw_end: np.ndarray) -> int:
    """Normalise every line of rows ``offsets`` of ``data`` into ``out`` (line ``l`` is
    ``out[line_off[l]:line_off[l + 1]]``), with its row in ``line_doc``, its token count in ``ntok`` and its
    raw bytes' span in ``raw_start``/``raw_end``. ``lut``/``space``: :func:`ascii_tables`; ``punct``,
    ``rep``, ``rep_off``: :func:`punct_tables`. A line the byte rules cannot do exactly gets ``ntok = -1``
    and no output bytes. ``out`` needs ``len(data)`` bytes (no replacement is longer than the character
    it replaces); the line arrays :func:`count_lines` entries (``line_off`` one more). Returns the number
    of lines marked."""
    n_docs = offsets.shape[0] - 1
    ln = 0
    o = 0
    marked = 0
    for d in range(n_docs):
        a = offsets[d]
        end = offsets[d + 1]
        while True:
            b = a
            while b < end and data[b] != 10:
                b += 1
            raw_start[ln] = a
            raw_end[ln] = b
            line_doc[ln] = d
            line_off[ln] = o
            s = a  # strip first, on the raw bytes, as CCNet does (a control byte inside the strip survives it)
            e = b
            while s < e and data[s] < 0x80 and space[data[s]]:
                s += 1
            while e > s and data[e - 1] < 0x80 and space[data[e - 1]]:
                e -= 1
            o0 = o
            bad = False
            i = s
            while i < e:
                c = data[i]
                if c < 0x80:
                    i += 1
                    v = lut[c]
                    out[o] = v  # always stored, kept only when not deleted: no branch on the common path
                    o += v != 0
                    continue
                cp, j = decode_utf8(data, i)
                k = punct[cp] if cp < punct.shape[0] else 0
                if k == 0:  # any other non-ASCII character: the polars expression does this line
                    bad = True
                    break
                for r in range(rep_off[k], rep_off[k + 1]):
                    out[o] = rep[r]
                    o += 1
                i = j
            if bad:
                o = o0
                marked += 1
                ntok[ln] = -1
            else:  # printable ASCII: a token starts at each non-space byte after a space or the line start
                toks = 0
                prev = 32
                for p in range(o0, o):
                    v = out[p]
                    toks += (prev == 32) & (v != 32)
                    prev = v
                ntok[ln] = toks
            ln += 1
            if b >= end:
                break
            a = b + 1
    line_off[ln] = o
    return marked
