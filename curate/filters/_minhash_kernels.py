"""numba kernels for MinHash: shingle hashing over UTF-8 buffers, signatures, band keys, union-find.

Texts arrive as one Arrow string buffer (``data`` bytes + ``offsets``); a shingle is a byte range of it
(word n-grams of single-space-separated text and character n-grams are both contiguous), so hashing
needs no Python string per shingle. Three hashes of a byte range:

* ``xxh64`` — XXH64 (Collet), checked against the ``xxhash`` package: the fast default.
* ``sha1_32`` / ``sha1_64`` — little-endian first 4 / 8 bytes of SHA-1, as datasketch's
  ``sha1_hash32`` / ``sha1_hash64`` (``datasketch/hashfunc.py``).

Signature schemes (``datasketch/minhash.py`` 2.0.0):

* ``affine32`` — datasketch's default: h = fmix32(sha1_32), phv_k = (a_k h + b_k) mod 2^32.
* ``legacy`` — datasketch < 2.0 and DataTrove (32-bit): phv_k = ((a_k h + b_k) mod 2^64 mod (2^61-1)) & (2^32-1).
* ``fast`` — curate's default: h = fmix64(xxh64), phv_k = high 32 bits of (a_k h + b_k) mod 2^64
  (multiply-shift, Dietzfelbinger et al. 1997), stored as uint32.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare
from curate.core.tokens import decode_utf8

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)

U64 = np.uint64
M32 = np.uint64(0xFFFFFFFF)
MERSENNE = np.uint64((1 << 61) - 1)
P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)


@njit(inline="always")
def _rotl(x, r):
    return (x << U64(r)) | (x >> U64(64 - r))


@njit(inline="always")
def _read64(data, p):
    v = U64(0)
    for i in range(8):
        v |= U64(data[p + i]) << U64(8 * i)
    return v


@njit(inline="always")
def _round(acc, v):
    acc = acc + v * P2
    acc = _rotl(acc, 31)
    return acc * P1


@njit(inline="always")
def _merge(acc, v):
    acc = acc ^ _round(U64(0), v)
    return acc * P1 + P4


@njit(cache=True)
def xxh64(data, start, end, seed):
    """XXH64 of ``data[start:end]``."""
    p = start
    n = end - start
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        limit = end - 32
        while p <= limit:
            v1 = _round(v1, _read64(data, p))
            v2 = _round(v2, _read64(data, p + 8))
            v3 = _round(v3, _read64(data, p + 16))
            v4 = _round(v4, _read64(data, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + P5
    h = h + U64(n)
    while p + 8 <= end:
        h = h ^ _round(U64(0), _read64(data, p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        k = U64(0)
        for i in range(4):
            k |= U64(data[p + i]) << U64(8 * i)
        h = h ^ (k * P1)
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h = h ^ (U64(data[p]) * P5)
        h = _rotl(h, 11) * P1
        p += 1
    h = h ^ (h >> U64(33))
    h = h * P2
    h = h ^ (h >> U64(29))
    h = h * P3
    return h ^ (h >> U64(32))


@njit(inline="always")
def _rotl32(x, r):
    return ((x << U64(r)) | (x >> U64(32 - r))) & M32


@njit(inline="always")
def _bswap32(x):
    return ((x & U64(0xFF)) << U64(24)) | ((x & U64(0xFF00)) << U64(8)) | \
        ((x >> U64(8)) & U64(0xFF00)) | ((x >> U64(24)) & U64(0xFF))


@njit(cache=True)
def sha1_prefix(data, start, end, nbytes):
    """First 4 (``nbytes=4``) or 8 bytes of SHA-1(``data[start:end]``) read little-endian."""
    n = end - start
    total = ((n + 8) // 64 + 1) * 64
    h0 = U64(0x67452301)
    h1 = U64(0xEFCDAB89)
    h2 = U64(0x98BADCFE)
    h3 = U64(0x10325476)
    h4 = U64(0xC3D2E1F0)
    w = np.empty(80, dtype=np.uint64)
    bitlen = U64(n) * U64(8)
    for blk in range(0, total, 64):
        for t in range(16):
            v = U64(0)
            for j in range(4):
                i = blk + 4 * t + j
                if i < n:
                    byte = U64(data[start + i])
                elif i == n:
                    byte = U64(0x80)
                elif i >= total - 8:
                    byte = (bitlen >> U64(8 * (total - 1 - i))) & U64(0xFF)
                else:
                    byte = U64(0)
                v = (v << U64(8)) | byte
            w[t] = v
        for t in range(16, 80):
            w[t] = _rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
        a, b, c, d, e = h0, h1, h2, h3, h4
        for t in range(80):
            if t < 20:
                f = (b & c) | ((~b & M32) & d)
                k = U64(0x5A827999)
            elif t < 40:
                f = b ^ c ^ d
                k = U64(0x6ED9EBA1)
            elif t < 60:
                f = (b & c) | (b & d) | (c & d)
                k = U64(0x8F1BBCDC)
            else:
                f = b ^ c ^ d
                k = U64(0xCA62C1D6)
            tmp = (_rotl32(a, 5) + f + e + k + w[t]) & M32
            e = d
            d = c
            c = _rotl32(b, 30)
            b = a
            a = tmp
        h0 = (h0 + a) & M32
        h1 = (h1 + b) & M32
        h2 = (h2 + c) & M32
        h3 = (h3 + d) & M32
        h4 = (h4 + e) & M32
    if nbytes == 4:
        return _bswap32(h0)
    return _bswap32(h0) | (_bswap32(h1) << U64(32))


@njit(inline="always")
def _is_space(c):
    return c == 32 or (9 <= c <= 13)


@njit(cache=True)
def shingle_ranges(data, offsets, n, chars):
    """Byte ranges of every shingle of every text: word n-grams (``chars=False``; words are runs of
    non-whitespace bytes, a shingle spans word j's first byte to word j+n-1's last) or character
    n-grams (``chars=True``; n code points). Texts with fewer than n units get no shingle.
    Returns (starts, ends, counts per text)."""
    ndoc = offsets.shape[0] - 1
    counts = np.zeros(ndoc, dtype=np.int64)
    cap = 0
    for d in range(ndoc):  # upper bound: one shingle per byte
        cap += max(0, offsets[d + 1] - offsets[d])
    starts = np.empty(cap, dtype=np.int64)
    ends = np.empty(cap, dtype=np.int64)
    ws = np.empty(16, dtype=np.int64)
    we = np.empty(16, dtype=np.int64)
    m = 0
    for d in range(ndoc):
        s0 = offsets[d]
        s1 = offsets[d + 1]
        L = s1 - s0
        if ws.shape[0] < L + 1:
            ws = np.empty(L + 1, dtype=np.int64)
            we = np.empty(L + 1, dtype=np.int64)
        nw = 0
        if chars:
            for i in range(s0, s1):
                if (data[i] & 0xC0) != 0x80:
                    ws[nw] = i
                    nw += 1
            ws[nw] = s1
            for j in range(nw - n + 1):
                starts[m] = ws[j]
                ends[m] = ws[j + n]
                m += 1
            counts[d] = max(0, nw - n + 1)
        else:
            inword = False
            for i in range(s0, s1):
                sp = _is_space(data[i])
                if not sp and not inword:
                    ws[nw] = i
                    inword = True
                elif sp and inword:
                    we[nw] = i
                    nw += 1
                    inword = False
            if inword:
                we[nw] = s1
                nw += 1
            for j in range(nw - n + 1):
                starts[m] = ws[j]
                ends[m] = we[j + n - 1]
                m += 1
            counts[d] = max(0, nw - n + 1)
    return starts[:m], ends[:m], counts


@njit(cache=True)
def hash_ranges(data, starts, ends, kind, seed):
    """Hash each byte range: kind 0 = xxh64(seed), 1 = sha1 32-bit, 2 = sha1 64-bit."""
    out = np.empty(starts.shape[0], dtype=np.uint64)
    for i in range(starts.shape[0]):
        if kind == 0:
            out[i] = xxh64(data, starts[i], ends[i], seed)
        elif kind == 1:
            out[i] = sha1_prefix(data, starts[i], ends[i], 4)
        else:
            out[i] = sha1_prefix(data, starts[i], ends[i], 8)
    return out


@njit(inline="always")
def fmix64(h):
    h = h ^ (h >> U64(33))
    h = h * U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> U64(33))
    h = h * U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> U64(33))


@njit(inline="always")
def fmix32(h):
    h = h ^ (h >> U64(16))
    h = (h * U64(0x85EBCA6B)) & M32
    h = h ^ (h >> U64(13))
    h = (h * U64(0xC2B2AE35)) & M32
    return h ^ (h >> U64(16))


@njit(cache=True)
def signatures(hv, counts, a, b, scheme):
    """MinHash signatures (docs x K, uint32) from per-document shingle hashes ``hv`` (concatenated,
    ``counts`` per doc). scheme 0 = fast, 1 = affine32, 2 = legacy (all values < 2^32). Documents without
    shingles get the all-max signature (datasketch's empty MinHash).

    Loop order (why): per document the shingle hashes are finalised once into a scratch run, then each
    permutation (four at a time for ``fast``) is one pass over that run with its minimum in a register,
    so the inner loop is a load + multiply-add + min that LLVM vectorises; the earlier order (per shingle,
    update all K minima in memory) paid a load and a store of the signature row per multiply. Same bits
    as before (``tests/filters/test_minhash.py`` checks a numpy reference and datasketch)."""
    ndoc = counts.shape[0]
    k = a.shape[0]
    sig = np.empty((ndoc, k), dtype=np.uint32)
    mx = 0
    for d in range(ndoc):
        mx = max(mx, counts[d])
    tmp = np.empty(mx, dtype=np.uint64)
    pos = 0
    for d in range(ndoc):
        c = counts[d]
        if scheme == 0:
            for s in range(c):
                tmp[s] = fmix64(hv[pos + s])
        elif scheme == 1:
            for s in range(c):
                tmp[s] = fmix32(hv[pos + s] & M32)
        else:
            for s in range(c):
                tmp[s] = hv[pos + s]
        j = 0
        if scheme == 0:
            while j + 4 <= k:
                a0, a1, a2, a3 = a[j], a[j + 1], a[j + 2], a[j + 3]
                b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
                m0 = m1 = m2 = m3 = M32
                for s in range(c):
                    h = tmp[s]
                    m0 = min(m0, (a0 * h + b0) >> U64(32))
                    m1 = min(m1, (a1 * h + b1) >> U64(32))
                    m2 = min(m2, (a2 * h + b2) >> U64(32))
                    m3 = min(m3, (a3 * h + b3) >> U64(32))
                sig[d, j], sig[d, j + 1], sig[d, j + 2], sig[d, j + 3] = m0, m1, m2, m3
                j += 4
        while j < k:
            aj, bj = a[j], b[j]
            m = M32
            if scheme == 0:
                for s in range(c):
                    m = min(m, (aj * tmp[s] + bj) >> U64(32))
            elif scheme == 1:
                for s in range(c):
                    m = min(m, (aj * tmp[s] + bj) & M32)
            else:
                for s in range(c):
                    m = min(m, ((aj * tmp[s] + bj) % MERSENNE) & M32)
            sig[d, j] = m
            j += 1
        pos += c
    return sig


@njit(cache=True)
def band_keys(sig, bands, rows):
    """64-bit key per (doc, band): a hash of the band's ``rows`` signature values (equal values, equal key;
    unequal values collide with probability ~2^-64)."""
    ndoc = sig.shape[0]
    out = np.empty((ndoc, bands), dtype=np.uint64)
    for d in range(ndoc):
        for bb in range(bands):
            h = U64(bb + 1) * P5
            for r in range(rows):
                h = fmix64(h ^ (sig[d, bb * rows + r] * P1 + U64(r)))
            out[d, bb] = h
    return out


@njit(cache=True)
def sorted_unique_per_doc(hv, counts):
    """Sort and deduplicate each document's hashes; returns (values, new counts)."""
    out = np.empty_like(hv)
    newc = np.zeros_like(counts)
    pos = 0
    m = 0
    for d in range(counts.shape[0]):
        seg = np.sort(hv[pos:pos + counts[d]])
        c = 0
        for i in range(seg.shape[0]):
            if i == 0 or seg[i] != seg[i - 1]:
                out[m] = seg[i]
                m += 1
                c += 1
        newc[d] = c
        pos += counts[d]
    return out[:m], newc


@njit(inline="always")
def _set_jaccard(set_vals, set_off, i, j):
    """Exact Jaccard of the sorted unique hash sets of dense docs i and j."""
    a0, a1 = set_off[i], set_off[i + 1]
    b0, b1 = set_off[j], set_off[j + 1]
    inter = 0
    while a0 < a1 and b0 < b1:
        if set_vals[a0] == set_vals[b0]:
            inter += 1
            a0 += 1
            b0 += 1
        elif set_vals[a0] < set_vals[b0]:
            a0 += 1
        else:
            b0 += 1
    union = (set_off[i + 1] - set_off[i]) + (set_off[j + 1] - set_off[j]) - inter
    return inter / union if union > 0 else 0.0


@njit(cache=True)
def pair_jaccards(i_idx, j_idx, sig, set_vals, set_off, with_exact):
    """Estimated (signature agreement) and exact (sorted-set) Jaccard for each pair of dense indices."""
    npair = i_idx.shape[0]
    k = sig.shape[1]
    est = np.empty(npair, dtype=np.float64)
    exact = np.full(npair, np.nan, dtype=np.float64)
    for p in range(npair):
        i = i_idx[p]
        j = j_idx[p]
        eq = 0
        for t in range(k):
            if sig[i, t] == sig[j, t]:
                eq += 1
        est[p] = eq / k
        if with_exact:
            exact[p] = _set_jaccard(set_vals, set_off, i, j)
    return est, exact


@njit(inline="always")
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(inline="always")
def _union(parent, size, i, j):
    """Union by size; returns False if i and j were already connected."""
    ri = _find(parent, i)
    rj = _find(parent, j)
    if ri == rj:
        return False
    if size[ri] < size[rj]:
        ri, rj = rj, ri
    parent[rj] = ri
    size[ri] += size[rj]
    return True


@njit(cache=True)
def union_edges(parent, size, i_idx, j_idx):
    """Add the edges (i, j) to the union-find forest ``parent`` / ``size`` (modified in place)."""
    for p in range(i_idx.shape[0]):
        _union(parent, size, i_idx[p], j_idx[p])


@njit(cache=True)
def verify_buckets(parent, size, head, member, set_vals, set_off, threshold, max_heads):
    """Verified union of the LSH buckets of one band (modified in place: ``parent``, ``size``).

    A bucket is a run of equal ``head`` (its earliest doc) in the star pairs (head, member), sorted by
    (head, member), so its members come in input order. Each member x is checked by exact Jaccard
    (>= ``threshold`` -> union) against (1) the head of every sub-cluster started so far in the bucket
    (the bucket head, then each member that matched none of the heads before it; at most ``max_heads``)
    and (2) the previous member. A pair already connected (through any band) costs no Jaccard. So a
    member dissimilar to the bucket head still joins its own near-duplicates in the bucket, and the work
    per member is bounded by ``max_heads + 1`` Jaccard computations (no quadratic blow-up on big buckets).
    Processing order is fixed by the input (sorted keys), so the result does not depend on workers.
    Returns (pairs that passed, pairs that failed).
    """
    heads = np.empty(max_heads, dtype=np.int64)
    n_pass = 0
    n_fail = 0
    npair = head.shape[0]
    p = 0
    while p < npair:
        h = head[p]
        heads[0] = h
        nh = 1
        prev = h
        prev_is_head = True
        while p < npair and head[p] == h:
            x = member[p]
            matched = False
            for t in range(nh):
                y = heads[t]
                if _find(parent, x) == _find(parent, y):
                    matched = True
                elif _set_jaccard(set_vals, set_off, x, y) >= threshold:
                    _union(parent, size, x, y)
                    matched = True
                    n_pass += 1
                else:
                    n_fail += 1
            if not prev_is_head and _find(parent, x) != _find(parent, prev):
                if _set_jaccard(set_vals, set_off, x, prev) >= threshold:
                    _union(parent, size, x, prev)
                    n_pass += 1
                else:
                    n_fail += 1
            prev_is_head = False
            if not matched and nh < max_heads:
                heads[nh] = x
                nh += 1
                prev_is_head = True
            prev = x
            p += 1
    return n_pass, n_fail


@njit(cache=True)
def roots(parent):
    """Each node's root (final path compression)."""
    out = np.empty_like(parent)
    for x in range(parent.shape[0]):
        out[x] = _find(parent, x)
    return out


def union_find(n, i_idx, j_idx):
    """Connected components of the graph on n nodes with the given edges (union by size, path
    compression). Returns each node's root; the root choice does not matter (callers relabel)."""
    parent = np.arange(n, dtype=np.int64)
    size = np.ones(n, dtype=np.int64)
    union_edges(parent, size, np.asarray(i_idx, dtype=np.int64), np.asarray(j_idx, dtype=np.int64))
    return roots(parent)


def _byte_classes(norm: bool) -> np.ndarray:
    """Per byte value: 0 = word byte, 1 = word break, 2 = ASCII digit (numbers become "0"), 3 = A-Z.
    With ``norm``, ASCII whitespace, punctuation and symbols break words (what ``simplify_text`` turns
    into a space); without it only whitespace does, and digits/capitals are plain word bytes."""
    t = np.zeros(256, dtype=np.uint8)
    ws = [32, 9, 10, 11, 12, 13]
    if norm:
        for c in list(range(33, 48)) + list(range(58, 65)) + list(range(91, 97)) + list(range(123, 127)):
            t[c] = 1
        t[48:58] = 2
        t[65:91] = 3
    t[ws] = 1
    return t


BYTE_CLASSES_NORM = _byte_classes(True)
BYTE_CLASSES_RAW = _byte_classes(False)


@njit(cache=True)
def codepoint_modes(data, offsets, cp_kind):
    """Per text, how :func:`word_shingle_hashes` can normalise it: 0 = ASCII only; 1 = every non-ASCII code
    point has a table entry in ``cp_kind`` (1 = word break, 2 = replaced by fixed bytes); 2 = some code
    point needs the full ``simplify_text`` (entry 3, or beyond the table); 3 = some code point has no
    entry yet (0: see :func:`unknown_codepoints`). Precedence 3 > 2 > 1 > 0."""
    ndoc = offsets.shape[0] - 1
    out = np.zeros(ndoc, dtype=np.uint8)
    lim = cp_kind.shape[0]
    for d in range(ndoc):
        i = offsets[d]
        end = offsets[d + 1]
        m = 0
        acc = np.uint8(0)
        for j in range(i, end):  # an OR over the bytes (vectorised): most texts are ASCII
            acc |= data[j]
        if acc < 0x80:
            continue
        while i < end:
            if data[i] < 0x80:
                i += 1
                continue
            cp, i = decode_utf8(data, i)
            if cp >= lim:
                m = max(m, 2)
                continue
            k = cp_kind[cp]
            if k == 0:
                m = 3
                break
            m = max(m, 2 if k == 3 else 1)
        out[d] = m
    return out


@njit(cache=True)
def unknown_codepoints(data, offsets, rows, cp_kind):
    """Sorted distinct code points of texts ``rows`` that lie inside ``cp_kind`` with no entry yet (0)."""
    lim = cp_kind.shape[0]
    seen = np.zeros(lim, dtype=np.bool_)
    for r in range(rows.shape[0]):
        d = rows[r]
        i = offsets[d]
        end = offsets[d + 1]
        while i < end:
            if data[i] < 0x80:
                i += 1
                continue
            cp, i = decode_utf8(data, i)
            if cp < lim and cp_kind[cp] == 0:
                seen[cp] = True
    return np.nonzero(seen)[0]


@njit(cache=True)
def word_shingle_hashes(data, offsets, n, seed, norm, modes, cp_kind, rep_len, rep):
    """Fast word n-gram hashes in one pass over the bytes, without building normalised strings.

    With ``norm``, each text is tokenised exactly as :func:`curate.core.text.simplify_text` would leave
    it: ASCII by rule (A-Z lowercased, a number -- digits, optionally one ``.``/``,`` and more digits --
    becomes "0", ASCII punctuation/symbols/whitespace separate words), and in texts with ``modes[d] == 1``
    each non-ASCII code point by its table entry (``cp_kind`` 1: a word break; 2: the ``rep_len[cp]``
    bytes ``rep[cp]``, what ``simplify_text`` makes of it: "é" -> "e"; learnt from ``simplify_text``
    itself, :class:`curate.filters.minhash._SimplifyTable`). Other texts (``modes[d]`` 2: callers pass
    them through ``simplify_text`` first; the kernel is idempotent on its output) read non-ASCII bytes as
    word bytes. Without ``norm``, words are runs of non-whitespace bytes. A word hash is FNV-1a 64 of its
    normalised bytes, fmix64-finalised; an n-gram hash is fmix64 of the polynomial (x P1) combination of
    its n word hashes. Bytes are classified by one table look-up (:func:`_byte_classes`).
    Returns (hashes, counts per text); texts with fewer than n words get none.
    """
    cls = BYTE_CLASSES_NORM if norm else BYTE_CLASSES_RAW
    ndoc = offsets.shape[0] - 1
    counts = np.zeros(ndoc, dtype=np.int64)
    cap = 0
    for d in range(ndoc):
        cap += max(0, offsets[d + 1] - offsets[d])
    out = np.empty(cap // 2 + ndoc, dtype=np.uint64)  # a word takes >= 1 byte + 1 separator
    words = np.empty(16, dtype=np.uint64)
    fnv = U64(0x100000001B3)
    basis = U64(0xCBF29CE484222325) ^ seed
    m = 0
    for d in range(ndoc):
        s0 = offsets[d]
        s1 = offsets[d + 1]
        if words.shape[0] < s1 - s0 + 1:
            words = np.empty(s1 - s0 + 1, dtype=np.uint64)
        mapped = norm and modes[d] == 1
        nw = 0
        h = basis
        wl = 0
        i = s0
        while i < s1:
            c = data[i]
            k = cls[c]
            if mapped and c >= 0x80:  # a table code point: a break or its replacement bytes
                cp, i = decode_utf8(data, i)
                if cp_kind[cp] == 1:
                    if wl > 0:
                        words[nw] = fmix64(h ^ U64(wl))
                        nw += 1
                        h = basis
                        wl = 0
                else:
                    for r in range(rep_len[cp]):
                        h = (h ^ U64(rep[cp, r])) * fnv
                    wl += rep_len[cp]
            elif k == 0:
                h = (h ^ U64(c)) * fnv
                wl += 1
                i += 1
            elif k == 1:
                if wl > 0:
                    words[nw] = fmix64(h ^ U64(wl))
                    nw += 1
                    h = basis
                    wl = 0
                i += 1
            elif k == 3:
                h = (h ^ U64(c + 32)) * fnv
                wl += 1
                i += 1
            else:  # a number -> "0"
                i += 1
                while i < s1 and cls[data[i]] == 2:
                    i += 1
                if i + 1 < s1 and (data[i] == 46 or data[i] == 44) and cls[data[i + 1]] == 2:
                    i += 1
                    while i < s1 and cls[data[i]] == 2:
                        i += 1
                h = (h ^ U64(48)) * fnv
                wl += 1
        if wl > 0:
            words[nw] = fmix64(h ^ U64(wl))
            nw += 1
        for j in range(nw - n + 1):
            g = words[j]
            for t in range(1, n):
                g = g * P1 + words[j + t]
            out[m] = fmix64(g)
            m += 1
        counts[d] = max(0, nw - n + 1)
    return out[:m], counts
