"""numba kernels of the DSIR hashed n-gram features: SHA-256 of each (space-joined) word n-gram, taken
modulo the number of buckets, exactly as p-lambda/dsir's ``hash_buckets``
(``int(hashlib.sha256(text.encode('utf-8')).hexdigest(), 16) % num_buckets``) but without a Python
call per n-gram. Imported lazily by :mod:`curate.selectors.dsir` (numba compiles on first use; cached).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_M32 = 0xFFFFFFFF
_K = np.array([
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
], dtype=np.int64)
_H0 = np.array([0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19],
               dtype=np.int64)


@njit(cache=True, inline="always")
def _rotr(x: int, n: int) -> int:
    return (x >> n) | ((x << (32 - n)) & _M32)


@njit(cache=True)
def sha256_mod(buf: np.ndarray, n: int, m: int, w: np.ndarray, h: np.ndarray) -> int:
    """SHA-256 of ``buf[:n]`` read as a big-endian 256-bit integer, modulo ``m`` (m < 2**48).

    ``buf`` must have room for the padding (``n + 72`` bytes); ``w`` (64) and ``h`` (8) are int64
    scratch arrays. All arithmetic is in int64 with 32-bit masks (mixing signed and unsigned integers
    would make numba fall back to floats).
    """
    total = ((n + 8) // 64 + 1) * 64
    buf[n] = 0x80
    for i in range(n + 1, total - 8):
        buf[i] = 0
    bitlen = n * 8
    for i in range(8):
        buf[total - 1 - i] = (bitlen >> (8 * i)) & 0xFF
    for i in range(8):
        h[i] = _H0[i]
    for blk in range(0, total, 64):
        for t in range(16):
            j = blk + 4 * t
            w[t] = (np.int64(buf[j]) << 24) | (np.int64(buf[j + 1]) << 16) | (np.int64(buf[j + 2]) << 8) | np.int64(buf[j + 3])
        for t in range(16, 64):
            x, y = w[t - 15], w[t - 2]
            s0 = _rotr(x, 7) ^ _rotr(x, 18) ^ (x >> 3)
            s1 = _rotr(y, 17) ^ _rotr(y, 19) ^ (y >> 10)
            w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & _M32
        a, b, c, d, e, f, g, hh = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
        for t in range(64):
            s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
            ch = (e & f) ^ ((~e) & g)
            t1 = (hh + s1 + ch + _K[t] + w[t]) & _M32
            s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
            maj = (a & b) ^ (a & c) ^ (b & c)
            t2 = (s0 + maj) & _M32
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M32, c, b, a, (t1 + t2) & _M32
        h[0] = (h[0] + a) & _M32
        h[1] = (h[1] + b) & _M32
        h[2] = (h[2] + c) & _M32
        h[3] = (h[3] + d) & _M32
        h[4] = (h[4] + e) & _M32
        h[5] = (h[5] + f) & _M32
        h[6] = (h[6] + g) & _M32
        h[7] = (h[7] + hh) & _M32
    r = 0
    if m < 2**31:  # r * 2**32 + word stays below 2**63
        for i in range(8):
            r = ((r << 32) | h[i]) % m
    else:
        for i in range(8):
            for shift in (24, 16, 8, 0):
                r = (r * 256 + ((h[i] >> shift) & 0xFF)) % m
    return r


@njit(cache=True, inline="always")
def _same_ngram(data: np.ndarray, tok_off: np.ndarray, s1: int, s2: int, g: int) -> bool:
    for j in range(g):
        a1, b1, a2 = tok_off[s1 + j], tok_off[s1 + j + 1], tok_off[s2 + j]
        if b1 - a1 != tok_off[s2 + j + 1] - a2:
            return False
        for q in range(b1 - a1):
            if data[a1 + q] != data[a2 + q]:
                return False
    return True


@njit(cache=True)
def ngram_buckets(data: np.ndarray, tok_off: np.ndarray, doc_off: np.ndarray, feat_off: np.ndarray,
                  n: int, m: int, out: np.ndarray) -> None:
    """Fill ``out[feat_off[d]:feat_off[d+1]]`` with the buckets of document d's 1..n-grams
    (all unigrams, then all bigrams, ...).

    Tokens are ``data[tok_off[t]:tok_off[t+1]]`` (UTF-8), document d holds tokens
    ``doc_off[d]:doc_off[d+1]``; an n-gram is its tokens joined by single spaces (as ``' '.join``).
    SHA-256 runs once per distinct n-gram of the batch: a memo table keyed by FNV-1a and checked by
    comparing the bytes, so the result is exact.
    """
    maxlen = 0
    for t in range(tok_off.size - 1):
        maxlen = max(maxlen, tok_off[t + 1] - tok_off[t])
    buf = np.empty(n * (maxlen + 1) + 80, np.uint8)
    w = np.empty(64, np.int64)
    h = np.empty(8, np.int64)
    n_docs = doc_off.size - 1
    cap = 1 << 10
    while cap < 2 * (tok_off.size - 1) and cap < (1 << 21):
        cap <<= 1
    mask = cap - 1
    # memo rows: (first token of the stored n-gram or -1 when empty, key, bucket): one cache line
    table = np.empty((cap, 4), np.int64)
    fnv_prime = np.uint64(0x100000001B3)
    pos = feat_off[:-1].copy()  # next free feature slot per document
    for g in range(1, n + 1):
        table[:, 0] = -1
        used = 0
        for d in range(n_docs):
            t0, t1 = doc_off[d], doc_off[d + 1]
            k = pos[d]
            for s in range(t0, t1 - g + 1):
                key = np.uint64(0xCBF29CE484222325)
                for j in range(g):
                    if j:
                        key = (key ^ np.uint64(32)) * fnv_prime
                    for q in range(tok_off[s + j], tok_off[s + j + 1]):
                        key = (key ^ np.uint64(data[q])) * fnv_prime
                slot = np.int64(key & np.uint64(mask))
                found = -1
                ikey = np.int64(key >> np.uint64(1))
                while table[slot, 0] >= 0:
                    if table[slot, 1] == ikey and _same_ngram(data, tok_off, table[slot, 0], s, g):
                        found = table[slot, 2]
                        break
                    slot = (slot + 1) & mask
                if found < 0:
                    ln = 0
                    for j in range(g):
                        if j:
                            buf[ln] = 32
                            ln += 1
                        for q in range(tok_off[s + j], tok_off[s + j + 1]):
                            buf[ln] = data[q]
                            ln += 1
                    found = sha256_mod(buf, ln, m, w, h)
                    if used * 2 >= cap:  # memo full: start afresh (still exact, just less reuse)
                        table[:, 0] = -1
                        used = 0
                        slot = np.int64(key & np.uint64(mask))
                    table[slot, 0] = s
                    table[slot, 1] = ikey
                    table[slot, 2] = found
                    used += 1
                out[k] = found
                k += 1
            pos[d] = k


@njit(cache=True)
def segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-segment sums of ``values`` (segments ``offsets[i]:offsets[i+1]``)."""
    out = np.zeros(offsets.size - 1, np.float64)
    for i in range(offsets.size - 1):
        s = 0.0
        for j in range(offsets[i], offsets[i + 1]):
            s += values[j]
        out[i] = s
    return out
