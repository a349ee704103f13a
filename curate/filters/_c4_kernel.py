"""Numba kernel for C4's line filter: the whole batch in one pass over its UTF-8 bytes.

:class:`curate.filters.c4.C4Quality` defined its line rules as polars expressions over one row per line
(``explode`` of the split lines, string tests, ``group_by`` back to documents): about 1.7 CPU-s per 20k
documents, most of it moving lines between layouts. :func:`c4_lines` computes the same per-document
results straight from the Arrow buffers of ``text``, replaying each expression of the polars definition
(kept as ``C4Quality._score_polars``, the reference ``tests/filters/test_c4_kernel.py`` compares with on
the shared real corpora):

- lines: ``split_lines`` (every Python ``splitlines`` break, one trailing break dropped), each stripped
  of Unicode whitespace (``\\s``: class bit ``S`` of :mod:`curate.core.tokens`, polars' own table);
- the citation markers ``\\[\\d*\\]|\\[edit\\]|\\[citation needed\\]`` removed leftmost-first, non-overlapping
  (``\\d``: class bit ``D``), the cleaned line not stripped again (as there);
- words (``\\S+``) counted on the stripped line before cleaning; longest word, end punctuation, phrases
  and ``{`` tested on the cleaned line; sentences counted with ``SENTENCE_END`` on the cleaned line.

Lower-casing: the phrase tests compare ASCII phrases with the lower-cased line. An ASCII character lowers
to ASCII, and a non-ASCII one to non-ASCII except a few (U+0130 "İ" -> "i̇", the Kelvin sign -> "k"; class
bit ``LA``): a document holding one of those is flagged and the caller scores it with the polars path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare
from curate.core.tokens import LA, D, S, decode_utf8, longest_row

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)

# phrases tested on the lower-cased cleaned line, as code points; 0 = lorem ipsum, 1 = javascript, 2.. = policy
_PHRASES = ["lorem ipsum", "javascript", "terms of use", "privacy policy", "cookie policy", "uses cookies",
            "use of cookies", "use cookies"]
PHRASE_CPS = np.full((len(_PHRASES), max(map(len, _PHRASES))), -1, dtype=np.int64)
PHRASE_LEN = np.array([len(p) for p in _PHRASES], dtype=np.int64)
for _i, _p in enumerate(_PHRASES):
    PHRASE_CPS[_i, :len(_p)] = [ord(ch) for ch in _p]
_EDIT = np.array([ord(ch) for ch in "[edit]"], dtype=np.int64)
_CITATION_NEEDED = np.array([ord(ch) for ch in "[citation needed]"], dtype=np.int64)


@njit(cache=True, inline="always")
def _is_break(x: np.int64) -> bool:
    # \n \x0b \x0c \r \x1c \x1d \x1e \x85 U+2028 U+2029 (Python's splitlines; \r\n is handled by the caller)
    return (10 <= x <= 13) or (28 <= x <= 30) or x == 0x85 or x == 0x2028 or x == 0x2029


@njit(cache=True, inline="always")
def _lower(x: np.int64) -> np.int64:
    """ASCII lower-case; -1 for a non-ASCII character (it lowers to non-ASCII: LA documents are excluded)."""
    if x >= 128:
        return -1
    if 65 <= x <= 90:
        return x + 32
    return x


@njit(cache=True)
def _phrases_found(lc: np.ndarray, k: int, phrases: np.ndarray, plen: np.ndarray, first: np.ndarray) -> int:
    """Bit ``w`` set when phrase ``w`` occurs in the lower-cased line ``lc[:k]`` (one scan for all)."""
    found = 0
    for i in range(k):
        x = lc[i]
        if x < 0 or first[x] == 0:  # most characters start no phrase
            continue
        for w in range(plen.shape[0]):
            if phrases[w, 0] != x or (found >> w) & 1:
                continue
            n = plen[w]
            if i + n > k:
                continue
            ok = True
            for j in range(1, n):
                if lc[i + j] != phrases[w, j]:
                    ok = False
                    break
            if ok:
                found |= 1 << w
    return found


@njit(cache=True, inline="always")
def _is_sentence_mark(x: np.int64) -> bool:
    return x == 46 or x == 33 or x == 63 or x == 0x2026  # . ! ? …


@njit(cache=True, inline="always")
def _is_closer(x: np.int64) -> bool:
    return x == 34 or x == 39 or x == 0x201D or x == 0x2019 or x == 41 or x == 93  # " ' ” ’ ) ]


@njit(cache=True)
def _sentences(c: np.ndarray, k: int, cls: np.ndarray) -> int:
    """``count_sentences``: non-overlapping SENTENCE_END matches, plus 1 if non-space text follows the last."""
    count = 0
    last_end = 0
    p = 0
    while p < k:
        if _is_sentence_mark(c[p]):
            r = p
            while r < k and _is_sentence_mark(c[r]):
                r += 1
            q = r
            while q < k and _is_closer(c[q]):
                q += 1
            if q == k:
                count += 1
                last_end = k
                p = k
            elif cls[c[q]] & 2:
                count += 1
                last_end = q + 1
                p = q + 1
            else:
                p = r  # every start inside the run fails the same way
        else:
            p += 1
    for i in range(last_end, k):
        if (cls[c[i]] & 2) == 0:
            return count + 1
    return count


@njit(cache=True)
def c4_lines(data: np.ndarray, offsets: np.ndarray, cls: np.ndarray, out_data: np.ndarray, out_off: np.ndarray,
             remove_citations: bool, terminal_punct: bool, min_words: int, max_word_length: int, lorem: bool,
             javascript: bool, curly: bool, policy: bool, phrases: np.ndarray, plen: np.ndarray,
             edit: np.ndarray, citation_needed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                     np.ndarray, np.ndarray, np.ndarray]:
    """Per document: sentences in the kept lines, kept lines, lines, lorem-ipsum-first, curly-bracket-first,
    needs-the-polars-path (an ``LA`` character); the kept cleaned lines joined by "\\n" go to ``out_data``
    (row ends in ``out_off[1:]``; at most the input's size)."""
    n_docs = offsets.shape[0] - 1
    sent = np.zeros(n_docs, dtype=np.int64)
    kept = np.zeros(n_docs, dtype=np.int64)
    n_lines = np.zeros(n_docs, dtype=np.int64)
    lorem_first = np.zeros(n_docs, dtype=np.bool_)
    curly_first = np.zeros(n_docs, dtype=np.bool_)
    fallback = np.zeros(n_docs, dtype=np.bool_)
    max_len = longest_row(offsets)
    cp = np.empty(max_len + 1, dtype=np.int64)
    src = np.empty(max_len + 2, dtype=np.int64)  # byte offset of each code point, and the end
    c = np.empty(max_len + 1, dtype=np.int64)  # the cleaned line
    lc = np.empty(max_len + 1, dtype=np.int64)  # lower-cased
    cs = np.empty(max_len + 1, dtype=np.int64)  # its code points' indices in cp
    first = np.zeros(128, dtype=np.uint8)  # ASCII characters that start a phrase
    for w in range(plen.shape[0]):
        first[phrases[w, 0]] = 1
    o = 0
    out_off[0] = 0
    for d in range(n_docs):
        i = offsets[d]
        e = offsets[d + 1]
        m = 0
        la = False
        while i < e:
            src[m] = i
            cp[m], i = decode_utf8(data, i)
            if cls[cp[m]] & LA:
                la = True
            m += 1
        src[m] = e
        fallback[d] = la
        lorem_at = -1
        curly_at = -1
        n_kept = 0
        if m > 0:
            # one trailing break is dropped (split_lines' replace("\n$", "")), then every break splits
            end = m
            if _is_break(cp[m - 1]):
                end = m - 1
                if cp[m - 1] == 10 and m >= 2 and cp[m - 2] == 13:
                    end = m - 2
            a0 = 0
            line_no = 0
            j = 0
            while True:
                while j < end and not _is_break(cp[j]):
                    j += 1
                b0 = j
                # ---- one line: cp[a0:b0] ----
                a = a0
                b = b0
                while a < b and (cls[cp[a]] & S):
                    a += 1
                while b > a and (cls[cp[b - 1]] & S):
                    b -= 1
                words = 0
                inword = False
                for t in range(a, b):
                    if cls[cp[t]] & S:
                        inword = False
                    elif not inword:
                        inword = True
                        words += 1
                k = 0
                run = 0
                long_word = False
                t = a
                while t < b:
                    if remove_citations and cp[t] == 91:  # [
                        u = t + 1
                        while u < b and (cls[cp[u]] & D):
                            u += 1
                        L = 0
                        if u < b and cp[u] == 93:
                            L = u + 1 - t
                        else:
                            for pat in (edit, citation_needed):
                                n = pat.shape[0]
                                if t + n <= b:
                                    same = True
                                    for v in range(n):
                                        if cp[t + v] != pat[v]:
                                            same = False
                                            break
                                    if same:
                                        L = n
                                        break
                        if L > 0:
                            t += L
                            continue
                    x = cp[t]
                    c[k] = x
                    lc[k] = _lower(x)
                    cs[k] = t
                    k += 1
                    t += 1
                    if cls[x] & S:  # the longest word of the cleaned line, as it is built
                        run = 0
                    else:
                        run += 1
                        if run > max_word_length:
                            long_word = True
                alive = not (max_word_length != -1 and long_word)
                if terminal_punct:
                    x = c[k - 1] if k > 0 else -1
                    ends = x == 46 or x == 63 or x == 33 or x == 34 or x == 39
                    dots = k >= 3 and c[k - 1] == 46 and c[k - 2] == 46 and c[k - 3] == 46
                    alive = alive and ends and not dots
                if min_words != -1:
                    alive = alive and words >= min_words
                found = _phrases_found(lc, k, phrases, plen, first) if alive else 0
                if lorem and alive and lorem_at < 0 and (found & 1):
                    lorem_at = line_no
                if javascript and alive and (found & 2):
                    alive = False
                if curly and alive and curly_at < 0:
                    for t in range(k):
                        if c[t] == 123:  # {
                            curly_at = line_no
                            break
                if policy and alive and (found >> 2):
                    alive = False
                if alive:
                    if n_kept > 0:
                        out_data[o] = 10
                        o += 1
                    t = 0
                    while t < k:  # runs of consecutive code points are one byte range
                        u = t + 1
                        while u < k and cs[u] == cs[u - 1] + 1:
                            u += 1
                        lo, hi = src[cs[t]], src[cs[u - 1] + 1]
                        out_data[o:o + hi - lo] = data[lo:hi]
                        o += hi - lo
                        t = u
                    n_kept += 1
                    sent[d] += _sentences(c, k, cls)
                line_no += 1
                # ---- next line ----
                if j >= end:
                    break
                if cp[j] == 13 and j + 1 < end and cp[j + 1] == 10:
                    j += 1
                j += 1
                a0 = j
            n_lines[d] = line_no
        kept[d] = n_kept
        lorem_first[d] = lorem_at >= 0 and (curly_at < 0 or lorem_at < curly_at)
        curly_first[d] = curly_at >= 0 and not lorem_first[d]
        out_off[d + 1] = o
    return sent, kept, n_lines, lorem_first, curly_first, fallback
