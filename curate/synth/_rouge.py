"""ROUGE-L F1 as the ``rouge-score`` package computes it (``RougeScorer(["rougeL"], use_stemmer=False)``,
the scorer Self-Instruct's ``bootstrap_instructions.py`` uses), and an exact candidate index so the
novelty filter compares a new instruction with EVERY kept one without O(N^2) Python.

Tokenisation (rouge-score ``tokenize``): lowercase, every run of non ``[a-z0-9]`` characters is a
separator. ROUGE-L: P = LCS/|candidate|, R = LCS/|reference|, F = 2PR/(P+R) (0 when either is empty).

Index: the LCS of two token sequences is at most their multiset intersection I, so
F <= 2I/(m+n). :class:`RougeIndex` keeps an inverted index token -> (row, count) in growable numpy
arrays; a query sums ``min(count_q, count_row)`` over its distinct tokens (vectorised), keeps rows whose
bound exceeds the threshold and runs the exact LCS only on them. The bound is exact (never misses a
row over the threshold), which the tests check against brute force.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from curate.metrics.text import rouge_l_tokens, rouge_tokens


class _Postings:
    __slots__ = ("rows", "counts", "n")

    def __init__(self) -> None:
        self.rows = np.empty(4, dtype=np.int64)
        self.counts = np.empty(4, dtype=np.int32)
        self.n = 0

    def add(self, row: int, count: int) -> None:
        if self.n == len(self.rows):  # amortised doubling: appends stay O(1)
            self.rows = np.resize(self.rows, 2 * self.n)
            self.counts = np.resize(self.counts, 2 * self.n)
        self.rows[self.n] = row
        self.counts[self.n] = count
        self.n += 1


class RougeIndex:
    """Kept texts, queried for the max ROUGE-L of a new text against all of them (exact, indexed)."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._tokens: list[list[str]] = []
        self._len = np.empty(16, dtype=np.int64)
        self._post: dict[str, _Postings] = {}
        self.exact_comparisons = 0  # LCS computations run (the cost the index saves)
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, text: str) -> int:
        toks = rouge_tokens(text)
        row = len(self._tokens)
        self._tokens.append(toks)
        if row == len(self._len):
            self._len = np.resize(self._len, 2 * row)
        self._len[row] = len(toks)
        for tok, c in Counter(toks).items():
            self._post.setdefault(tok, _Postings()).add(row, c)
        return row

    def candidates(self, toks: Sequence[str], threshold: float) -> np.ndarray:
        """Rows whose upper bound 2I/(m+n) is > ``threshold`` (a superset of rows with ROUGE-L > threshold)."""
        n_rows = len(self._tokens)
        if not toks or n_rows == 0:
            return np.empty(0, dtype=np.int64)
        inter = np.zeros(n_rows, dtype=np.int64)
        for tok, c in Counter(toks).items():
            p = self._post.get(tok)
            if p is not None:
                np.add.at(inter, p.rows[:p.n], np.minimum(p.counts[:p.n], c))
        bound = 2.0 * inter / (len(toks) + self._len[:n_rows])
        return np.flatnonzero(bound > threshold)

    def max_score(self, text: str, threshold: float = 0.7, top: int = 0) -> tuple[float, list[tuple[int, float]]]:
        """(max ROUGE-L over rows that could exceed ``threshold``, else 0.0; the ``top`` most similar of them).

        A max <= threshold is reported as the best score among shortlisted rows (0.0 if none): enough to
        decide novelty, which is all the filter needs."""
        toks = rouge_tokens(text)
        cand = self.candidates(toks, threshold)
        scored = []
        for r in cand.tolist():
            self.exact_comparisons += 1
            scored.append((r, rouge_l_tokens(toks, self._tokens[r])))
        if not scored:
            return 0.0, []
        scored.sort(key=lambda x: -x[1])
        return scored[0][1], scored[:top]
