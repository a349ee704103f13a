"""Numba kernels for Gopher repetition n-gram statistics.

The duplicate n-gram statistic skips ``n`` words after each repeated n-gram (DataTrove's
``find_all_duplicate``), which is sequential per document and cannot be written as a polars expression;
this kernel does it over a whole batch with one open-addressing hash table per document.
Inputs are per-word 64-bit hashes and character lengths, flattened, with document offsets.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare
from curate.core.tokens import S, decode_utf8, longest_row

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)

_MULT = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _ngram_hash(h: np.ndarray, i: int, n: int) -> np.uint64:
    acc = np.uint64(0xCBF29CE484222325)
    for j in range(n):
        acc = (acc ^ h[i + j]) * _MULT
        acc ^= acc >> np.uint64(29)
    if acc == np.uint64(0):  # 0 marks an empty slot
        acc = np.uint64(1)
    return acc


@njit(cache=True)
def repetition_stats(hashes: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
                     top_ns: np.ndarray, dup_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document: characters in the most common n-gram (space-joined, x its count) for each n in
    ``top_ns``, and characters in repeated n-grams (concatenated, skip-ahead) for each n in ``dup_ns``."""
    n_docs = offsets.shape[0] - 1
    top = np.zeros((n_docs, top_ns.shape[0]), dtype=np.int64)
    dup = np.zeros((n_docs, dup_ns.shape[0]), dtype=np.int64)
    max_words = longest_row(offsets)
    size = 16
    while size < 2 * max_words + 2:
        size *= 2
    keys = np.zeros(size, dtype=np.uint64)
    max_n = 1
    for n in top_ns:
        max_n = max(max_n, n)
    for n in dup_ns:
        max_n = max(max_n, n)
    # hashes of every n-gram, n = 1..max_n, built by extending the (n-1)-gram's: the same values as
    # _ngram_hash (its loop is this chain), without rehashing n words per n-gram
    grams = np.empty((max_n, max(max_words, 1)), dtype=np.uint64)
    counts = np.zeros(size, dtype=np.int64)
    first = np.zeros(size, dtype=np.int64)
    clen = np.zeros(size, dtype=np.int64)
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        m = e - s
        cap = 16
        while cap < 2 * m + 2:
            cap *= 2
        mask = np.uint64(cap - 1)
        w = hashes[s:e]
        ln = lengths[s:e]
        for i in range(m):
            acc = (np.uint64(0xCBF29CE484222325) ^ w[i]) * _MULT
            grams[0, i] = acc ^ (acc >> np.uint64(29))
        built = 1  # rows of grams filled (row n1 holds the (n1 + 1)-grams), extended as an n needs them
        for t in range(top_ns.shape[0]):
            n = top_ns[t]
            if m < n:
                continue
            while built < n:
                for i in range(m - built):
                    acc = (grams[built - 1, i] ^ w[i + built]) * _MULT
                    grams[built, i] = acc ^ (acc >> np.uint64(29))
                built += 1
            keys[:cap] = 0
            best_count, best_first, best_len = 0, 0, 0
            for i in range(m - n + 1):
                k = grams[n - 1, i]
                if k == np.uint64(0):  # 0 marks an empty slot (as _ngram_hash)
                    k = np.uint64(1)
                slot = k & mask
                while keys[slot] != 0 and keys[slot] != k:
                    slot = (slot + np.uint64(1)) & mask
                if keys[slot] == 0:
                    keys[slot] = k
                    counts[slot] = 0
                    first[slot] = i
                    chars = n - 1
                    for j in range(n):
                        chars += ln[i + j]
                    clen[slot] = chars
                counts[slot] += 1
                c = counts[slot]
                if c > best_count or (c == best_count and first[slot] < best_first):
                    best_count, best_first, best_len = c, first[slot], clen[slot]
            top[d, t] = best_count * best_len
        # no repeated n-gram means no repeated longer one (its first n words would repeat): then every
        # larger n is 0 without a pass (no repeat also means no skip, so every n-gram was looked at)
        zero_from = max_n + 1
        for t in range(dup_ns.shape[0]):
            n = dup_ns[t]
            if n >= zero_from or m < n:
                continue
            while built < n:
                for i in range(m - built):
                    acc = (grams[built - 1, i] ^ w[i + built]) * _MULT
                    grams[built, i] = acc ^ (acc >> np.uint64(29))
                built += 1
            keys[:cap] = 0
            repeated = 0
            i = 0
            while i < m - n + 1:
                k = grams[n - 1, i]
                if k == np.uint64(0):  # 0 marks an empty slot (as _ngram_hash)
                    k = np.uint64(1)
                slot = k & mask
                while keys[slot] != 0 and keys[slot] != k:
                    slot = (slot + np.uint64(1)) & mask
                if keys[slot] == k:
                    for j in range(n):
                        repeated += ln[i + j]
                    i += n
                else:
                    keys[slot] = k
                    i += 1
            dup[d, t] = repeated
            if repeated == 0:
                zero_from = min(zero_from, n)
    return top, dup


@njit(cache=True)
def gopher_word_stats(offsets: np.ndarray, hashes: np.ndarray, lengths: np.ndarray, flags: np.ndarray,
                      stop_hashes: np.ndarray, stop_lengths: np.ndarray, punct_bit: int,
                      alpha_bit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document: non-symbol words, their total characters, tokens with a letter, distinct stop words
    present (a token is a stop word when its hash and length equal one's: ``stop_hashes`` sorted)."""
    n_docs = offsets.shape[0] - 1
    n_words = np.zeros(n_docs, dtype=np.int64)
    len_sum = np.zeros(n_docs, dtype=np.int64)
    n_alpha = np.zeros(n_docs, dtype=np.int64)
    n_stop = np.zeros(n_docs, dtype=np.int64)
    k = stop_hashes.shape[0]
    seen = np.zeros(max(k, 1), dtype=np.uint8)
    bloom = np.zeros(4096, dtype=np.uint8)  # rejects most tokens before the binary search
    for h in stop_hashes:
        bloom[h & np.uint64(4095)] = 1
    for d in range(n_docs):
        seen[:] = 0
        for t in range(offsets[d], offsets[d + 1]):
            f = flags[t]
            if (f & punct_bit) == 0:
                n_words[d] += 1
                len_sum[d] += lengths[t]
            if f & alpha_bit:
                n_alpha[d] += 1
            if k and bloom[hashes[t] & np.uint64(4095)]:
                i = np.searchsorted(stop_hashes, hashes[t])
                while i < k and stop_hashes[i] == hashes[t]:
                    if stop_lengths[i] == lengths[t] and seen[i] == 0:
                        seen[i] = 1
                        n_stop[d] += 1
                    i += 1
    return n_words, len_sum, n_alpha, n_stop


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, inline="always")
def _seg_final(h: np.uint64) -> np.uint64:
    h ^= h >> np.uint64(31)
    return h if h != np.uint64(0) else np.uint64(1)  # 0 marks an empty slot


@njit(cache=True, inline="always")
def _same_bytes(data: np.ndarray, s1: int, e1: int, s2: int, e2: int) -> bool:
    if e1 - s1 != e2 - s2:
        return False
    for k in range(e1 - s1):
        if data[s1 + k] != data[s2 + k]:
            return False
    return True


@njit(cache=True, inline="always")
def _distinct(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, hashes: np.ndarray, nchars: np.ndarray,
              k: int, keys: np.ndarray, slot_seg: np.ndarray) -> tuple[int, int, int]:
    """Distinct segments among the first ``k`` (byte-equal: hash, then compared byte by byte), characters
    in all of them, characters in the distinct ones."""
    cap = 16
    while cap < 2 * k + 2:
        cap *= 2
    mask = np.uint64(cap - 1)
    keys[:cap] = 0
    u = 0
    total = 0
    utotal = 0
    for g in range(k):
        nch = nchars[g]
        total += nch
        h = hashes[g]
        slot = h & mask
        new = True
        while keys[slot] != 0:
            if keys[slot] == h:
                o = slot_seg[slot]
                if _same_bytes(data, starts[o], ends[o], starts[g], ends[g]):
                    new = False
                    break
            slot = (slot + np.uint64(1)) & mask
        if new:
            keys[slot] = h
            slot_seg[slot] = g
            u += 1
            utotal += nch
    return u, total, utotal


@njit(cache=True)
def dup_segment_stats(data: np.ndarray, offsets: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per document (UTF-8 ``data`` with row ``offsets``): for paragraphs, then for lines, the segments,
    distinct segments, characters in all segments and characters in distinct segments - the eight numbers
    of Gopher's duplicate paragraph and line fractions, computed as GopherRepetition's polars definition
    does: lines split on every run of "\\n" (``replace_all("\\n+", "\\0").split("\\0")``), paragraphs on
    every run of 2+ "\\n" after stripping whitespace at both ends (class bit ``S`` of ``cls``, the table of
    :func:`curate.core.tokens.char_classes`: Unicode White_Space); a NUL already in the text splits too, as
    it does there. Distinct means byte-equal (hash, then compared byte by byte).

    One pass over each document's bytes serves both splits (a paragraph is a run of lines, the stripped
    ends aside): every byte updates its line's hash and character count and, inside the stripped text,
    its paragraph's."""
    n_docs = offsets.shape[0] - 1
    res = np.zeros((8, n_docs), dtype=np.int64)
    max_len = max(1, longest_row(offsets))
    l_start = np.empty(max_len + 2, dtype=np.int64)
    l_end = np.empty(max_len + 2, dtype=np.int64)
    l_hash = np.empty(max_len + 2, dtype=np.uint64)
    l_chars = np.empty(max_len + 2, dtype=np.int64)
    p_start = np.empty(max_len + 2, dtype=np.int64)
    p_end = np.empty(max_len + 2, dtype=np.int64)
    p_hash = np.empty(max_len + 2, dtype=np.uint64)
    p_chars = np.empty(max_len + 2, dtype=np.int64)
    size = 16
    while size < 2 * (max_len + 2):
        size *= 2
    keys = np.zeros(size, dtype=np.uint64)
    slot_seg = np.zeros(size, dtype=np.int64)
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        # the paragraphs' text: whitespace (code points) stripped at both ends
        ps = s
        while ps < e:
            cp, nxt = decode_utf8(data, ps)
            if (cls[cp] & S) == 0:
                break
            ps = nxt
        pe = e
        while pe > ps:
            j = pe - 1
            while j > ps and (data[j] & 0xC0) == 0x80:
                j -= 1
            cp, _ = decode_utf8(data, j)
            if (cls[cp] & S) == 0:
                break
            pe = j
        kl = 0
        kp = 0
        ls = s
        hl = _FNV_OFFSET
        cl = 0
        pst = ps
        hp = _FNV_OFFSET
        cpn = 0
        i = s
        while i < e:
            c = data[i]
            if c == 0:  # a NUL ends a line and (inside the stripped text) a paragraph
                l_start[kl], l_end[kl], l_hash[kl], l_chars[kl] = ls, i, _seg_final(hl), cl
                kl += 1
                ls, hl, cl = i + 1, _FNV_OFFSET, 0
                if ps <= i < pe:
                    p_start[kp], p_end[kp], p_hash[kp], p_chars[kp] = pst, i, _seg_final(hp), cpn
                    kp += 1
                    pst, hp, cpn = i + 1, _FNV_OFFSET, 0
                i += 1
            elif c == 10:
                j = i + 1
                while j < e and data[j] == 10:
                    j += 1
                l_start[kl], l_end[kl], l_hash[kl], l_chars[kl] = ls, i, _seg_final(hl), cl
                kl += 1
                ls, hl, cl = j, _FNV_OFFSET, 0
                # "\n" is White_Space: a run that starts inside the stripped text ends inside it
                if ps <= i < pe:
                    if j - i >= 2:
                        p_start[kp], p_end[kp], p_hash[kp], p_chars[kp] = pst, i, _seg_final(hp), cpn
                        kp += 1
                        pst, hp, cpn = j, _FNV_OFFSET, 0
                    else:  # a single "\n" stays inside its paragraph
                        hp = (hp ^ np.uint64(10)) * _FNV_PRIME
                        cpn += 1
                i = j
            else:
                cont = (c & 0xC0) == 0x80
                hl = (hl ^ np.uint64(c)) * _FNV_PRIME
                if not cont:
                    cl += 1
                if ps <= i < pe:
                    hp = (hp ^ np.uint64(c)) * _FNV_PRIME
                    if not cont:
                        cpn += 1
                i += 1
        l_start[kl], l_end[kl], l_hash[kl], l_chars[kl] = ls, e, _seg_final(hl), cl
        kl += 1
        p_start[kp], p_end[kp], p_hash[kp], p_chars[kp] = pst, pe, _seg_final(hp), cpn
        kp += 1
        u, total, utotal = _distinct(data, p_start, p_end, p_hash, p_chars, kp, keys, slot_seg)
        res[0, d], res[1, d], res[2, d], res[3, d] = kp, u, total, utotal
        u, total, utotal = _distinct(data, l_start, l_end, l_hash, l_chars, kl, keys, slot_seg)
        res[4, d], res[5, d], res[6, d], res[7, d] = kl, u, total, utotal
    return res[0], res[1], res[2], res[3], res[4], res[5], res[6], res[7]
