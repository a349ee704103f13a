"""Numba kernel for Gopher quality's line and symbol ratios: the whole batch in one pass over its UTF-8 bytes.

:class:`curate.filters.gopher.GopherQuality` computed its "#" and ellipsis counts and its bullet and
end-ellipsis line shares as polars expressions (three ``count_matches`` over the text, ``split_lines``'
regex replacements, two ``list.eval`` regex tests per line): about 0.33 CPU-s per 20k documents.
:func:`gopher_line_stats` gives the same counts straight from the Arrow buffers of ``text``, replaying each
expression of that definition (kept as ``GopherQuality._score_polars``, the reference
``tests/filters/test_gopher_kernel.py`` compares with on the shared real corpora):

- ``count_matches("#")``: "#" bytes; ``count_matches("...")`` + ``count_matches("\\u2026")``: non-overlapping
  leftmost "..." plus every U+2026 (its bytes hold no "." so the two scans do not interact);
- lines: :func:`curate.core.text.split_lines` (``\\r\\n`` and every other Python ``splitlines`` break, one
  trailing break dropped, no line in an empty text);
- a bullet line: ``strip_chars_start()`` (Unicode White_Space: class bit ``S`` of :mod:`curate.core.tokens`,
  polars' own table) then a first character "\\u2022" or "-"; an end-ellipsis line: ``strip_chars_end()``
  then a last "..." or "\\u2026".
"""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare
from curate.core.tokens import S, decode_utf8

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)


@njit(cache=True, inline="always")
def _break_len(data: np.ndarray, i: int, e: int) -> int:
    """Bytes of the line break at byte ``i`` (``split_lines``' breaks; ``\\r\\n`` is one), 0 if none."""
    c = data[i]
    if c == 13:
        return 2 if i + 1 < e and data[i + 1] == 10 else 1
    if (10 <= c <= 12) or (28 <= c <= 30):
        return 1
    if c == 0xC2:
        return 2 if i + 1 < e and data[i + 1] == 0x85 else 0
    if c == 0xE2:
        return 3 if i + 2 < e and data[i + 1] == 0x80 and (data[i + 2] == 0xA8 or data[i + 2] == 0xA9) else 0
    return 0


@njit(cache=True, inline="always")
def _prev_start(data: np.ndarray, lo: int, j: int) -> int:
    """Start byte of the code point that ends just before byte ``j`` (``lo`` < ``j``)."""
    k = j - 1
    while k > lo and (data[k] & 0xC0) == 0x80:
        k -= 1
    return k


@njit(cache=True, inline="always")
def _bullet(data: np.ndarray, a: int, b: int, cls: np.ndarray) -> bool:
    """``strip_chars_start()`` of line ``data[a:b]`` starts with "\\u2022" or "-"."""
    i = a
    while i < b:
        cp, nxt = decode_utf8(data, i)
        if (cls[cp] & S) == 0:
            return cp == 45 or cp == 0x2022
        i = nxt
    return False


@njit(cache=True, inline="always")
def _ends_with_ellipsis(data: np.ndarray, a: int, b: int, cls: np.ndarray) -> bool:
    """``strip_chars_end()`` of line ``data[a:b]`` ends with "..." or "\\u2026"."""
    j = b
    while j > a:
        k = _prev_start(data, a, j)
        cp, _ = decode_utf8(data, k)
        if (cls[cp] & S) == 0:
            if cp == 0x2026:
                return True
            return cp == 46 and j - a >= 3 and data[j - 2] == 46 and data[j - 3] == 46
        j = k
    return False


#: per byte: 0 nothing to do, 1 a possible line break (or U+2026's first byte), 2 "#", 3 "."
_BYTE_KIND = np.zeros(256, dtype=np.uint8)
_BYTE_KIND[[10, 11, 12, 13, 28, 29, 30, 0xC2, 0xE2]] = 1
_BYTE_KIND[35] = 2
_BYTE_KIND[46] = 3


@njit(cache=True)
def gopher_line_stats(data: np.ndarray, offsets: np.ndarray,
                      cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document (UTF-8 ``data`` with row ``offsets``, ``cls`` the class table of
    :func:`curate.core.tokens.char_classes`): "#" characters, ellipses ("..." non-overlapping, and
    U+2026), lines (``split_lines``), lines starting with a bullet, lines ending with an ellipsis. One pass
    over the bytes: the counts are taken while each line's end is looked for (the dropped trailing break
    holds no "#" or ".")."""
    n_docs = offsets.shape[0] - 1
    n_hash = np.zeros(n_docs, dtype=np.int64)
    n_ell = np.zeros(n_docs, dtype=np.int64)
    n_lines = np.zeros(n_docs, dtype=np.int64)
    n_bullet = np.zeros(n_docs, dtype=np.int64)
    n_ell_lines = np.zeros(n_docs, dtype=np.int64)
    kind = _BYTE_KIND
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        if s == e:  # split_lines: no line in an empty text
            continue
        # one trailing break is dropped (``replace("\n$", "")`` after every break became "\n")
        end = e
        last = _prev_start(data, s, e)
        if data[e - 1] == 10 and e - s >= 2 and data[e - 2] == 13:
            end = e - 2
        elif _break_len(data, last, e) == e - last:
            end = last
        hashes = 0
        ell = 0
        lines = 0
        bullets = 0
        ells = 0
        a = s
        i = s
        while True:
            while i < end:
                c = data[i]
                k = kind[c]
                if k == 0:
                    i += 1
                elif k == 2:
                    hashes += 1
                    i += 1
                elif k == 3:
                    if i + 2 < e and data[i + 1] == 46 and data[i + 2] == 46:
                        ell += 1
                        i += 3
                    else:
                        i += 1
                elif c == 0xE2 and i + 2 < e and data[i + 1] == 0x80 and data[i + 2] == 0xA6:
                    ell += 1
                    i += 3
                elif _break_len(data, i, end) > 0:
                    break
                else:
                    i += 1
            # one line: data[a:i]
            lines += 1
            if _bullet(data, a, i, cls):
                bullets += 1
            if _ends_with_ellipsis(data, a, i, cls):
                ells += 1
            if i >= end:
                break
            i += _break_len(data, i, end)
            a = i
        n_hash[d] = hashes
        n_ell[d] = ell
        n_lines[d] = lines
        n_bullet[d] = bullets
        n_ell_lines[d] = ells
    return n_hash, n_ell, n_lines, n_bullet, n_ell_lines
