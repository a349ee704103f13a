"""Embedding coresets: ``kcenter_coreset`` (k-center greedy) and ``facility_location`` (lazy greedy
submodular maximisation), each with a diversity report against a random subset of the same size.

Features come from :mod:`curate.selectors._features` (the ``embedding`` column, else hashed TF-IDF).
"""

from __future__ import annotations

import heapq
import json
import logging
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.core.operator import UID, FitContext
from curate.core.registry import register
from curate.models.kcenter import kcenter_greedy as _kcenter_greedy
from curate.selectors._features import FeatureSource, features, resolve_source
from curate.selectors._threads import single_threaded
from curate.selectors.base import _SELECTED, Selector, SelectParams

log = logging.getLogger("curate.selectors")


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d, 0.0)


def kcenter_greedy(X: np.ndarray, k: int | None = None, *, radius: float | None = None, first: int = 0,
                   tokens: np.ndarray | None = None, budget: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy k-center (:func:`curate.models.kcenter.kcenter_greedy`, the one kernel) with BLAS limited to one
    thread: many tiny products, where thread hand-offs dominate on a loaded machine."""
    with single_threaded():
        return _kcenter_greedy(X, k, radius=radius, first=first, tokens=tokens, budget=budget)


def _sim(A: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Similarity in [0, 1] of L2-normalised rows: (1 + cos) / 2."""
    return 0.5 * (1.0 + A @ V.T)


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 0)


def facility_location_greedy(X: np.ndarray, k: int | None = None, *, min_gain: float | None = None,
                             ground: np.ndarray | None = None, tokens: np.ndarray | None = None,
                             budget: float | None = None, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lazy greedy (Minoux 1978) maximisation of f(S) = Σ_{v∈V} max_{s∈S} sim(v, s), sim = (1+cos)/2,
    over candidates X; V = ``ground`` (indices of X; default all). Monotone submodular, so greedy is
    within (1 − 1/e) of the optimum (Nemhauser et al. 1978). Ties go to the lower index.

    Stops after ``k`` points, when the best gain is below ``min_gain``, or before ``tokens`` exceed
    ``budget``. Returns (chosen in order, gain of each, every point's final marginal gain).
    """
    Xn = _normalise(X)
    n = len(Xn)
    V = Xn if ground is None else Xn[ground]
    cur = np.zeros(len(V))
    # the similarity matrix when it fits in ~256 MB, else rows computed when a candidate is re-evaluated
    full = _sim(Xn, V) if n * len(V) <= (32 << 20) else None

    def row(i: int) -> np.ndarray:
        return full[i] if full is not None else _sim(Xn[i:i + 1], V)[0]

    gains0 = (full.sum(1) if full is not None else np.concatenate(
        [_sim(Xn[a:a + chunk], V).sum(1) for a in range(0, n, chunk)])) if n else np.zeros(0)
    heap = [(-g, i) for i, g in enumerate(gains0.tolist())]
    heapq.heapify(heap)
    fresh = np.ones(n, dtype=bool)  # the gain on the heap is exact for the current set
    chosen: list[int] = []
    gains: list[float] = []
    used = 0.0
    with single_threaded():
        while heap and (k is None or len(chosen) < k):
            ng, i = heapq.heappop(heap)
            if not fresh[i]:
                g = float(np.maximum(row(i) - cur, 0.0).sum())
                fresh[i] = True
                heapq.heappush(heap, (-g, i))
                continue
            g = -ng
            if min_gain is not None and g < min_gain:
                heapq.heappush(heap, (ng, i))
                break
            if tokens is not None and budget is not None:
                if used + tokens[i] > budget:
                    heapq.heappush(heap, (ng, i))
                    break
                used += float(tokens[i])
            chosen.append(i)
            gains.append(g)
            cur = np.maximum(cur, row(i))
            fresh[:] = False
    final = np.concatenate([np.maximum(_sim(Xn[a:a + chunk], V) - cur, 0.0).sum(1)
                            for a in range(0, n, chunk)]) if n else np.zeros(0)
    ch = np.asarray(chosen, dtype=np.int64)
    return ch, np.asarray(gains), final


def facility_value(X: np.ndarray, S: np.ndarray, ground: np.ndarray | None = None) -> float:
    """f(S) of :func:`facility_location_greedy` (0 for the empty set)."""
    Xn = _normalise(X)
    V = Xn if ground is None else Xn[ground]
    if len(S) == 0:
        return 0.0
    return float(_sim(Xn[np.asarray(S)], V).max(0).sum())


def diversity(X: np.ndarray, S: np.ndarray, *, max_pairs_points: int = 2000, seed: int = 0) -> dict[str,
                                                                                                    float]:
    """Mean / min pairwise Euclidean distance inside S (on at most ``max_pairs_points`` of its points),
    coverage radius (max distance of any point to its nearest member of S) and mean coverage distance."""
    X = np.asarray(X, dtype=np.float64)
    S = np.asarray(S, dtype=np.int64)
    if len(S) == 0:
        return {"size": 0}
    rng = np.random.default_rng(seed)
    P = S if len(S) <= max_pairs_points else rng.choice(S, max_pairs_points, replace=False)
    D = np.sqrt(_sqdist(X[P], X[P]))
    iu = np.triu_indices(len(P), 1)
    pair = D[iu] if len(P) > 1 else np.zeros(1)
    cover = np.concatenate([np.sqrt(_sqdist(X[a:a + 2048], X[S]).min(1)) for a in range(0, len(X), 2048)])
    return {"size": int(len(S)), "mean_pairwise": float(pair.mean()), "min_pairwise": float(pair.min()),
            "coverage_radius": float(cover.max()), "mean_coverage": float(cover.mean())}


def diversity_report(X: np.ndarray, S: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """:func:`diversity` of the selection and of a seeded random subset of the same size."""
    rng = np.random.default_rng(seed)
    R = np.sort(rng.choice(len(X), len(S), replace=False)) if len(S) else np.zeros(0, np.int64)
    return {"selected": diversity(X, S, seed=seed), "random": diversity(X, R, seed=seed)}


class _CoresetParams(SelectParams):
    features: FeatureSource = Field("auto", description="auto: the embedding column when present, else hashed "
                                    "TF-IDF; embedding: require the column; hashed: always TF-IDF (default auto)")
    embedding_column: str = Field("embedding", description="column of document vectors (default 'embedding', "
                                  "the embed step's)")
    hash_dim: int = Field(1024, gt=0, description="buckets of the hashed TF-IDF features (curate default 1024)")

    @model_validator(mode="after")
    def _needs_size(self):
        if all(getattr(self, m) is None for m in ("threshold", "top_k", "fraction", "budget_tokens")):
            raise ValueError("a coreset needs a size: set top_k, fraction, budget_tokens or threshold")
        if self.higher_is_better is False:
            raise ValueError("coreset scores are gains: higher_is_better must stay true")
        return self


class _Coreset(Selector):
    higher_is_better = True
    Params = _CoresetParams

    def _greedy(self, X: np.ndarray, k: int | None, tokens: np.ndarray | None, rng: np.random.Generator):
        raise NotImplementedError

    def needs(self) -> list[str]:
        return [self.params.embedding_column] if self.params.features == "embedding" else []

    def need_hint(self, column: str) -> str:
        return "add an `embed` step before this one, or use features: hashed"

    def compute_scores(self, ctx: FitContext) -> pl.DataFrame:
        p = self.params
        first = next(ctx.iter_batches(), None)
        if first is None:
            return pl.DataFrame({UID: [], "score": [], _SELECTED: []},
                                schema={UID: pl.UInt64, "score": pl.Float64, _SELECTED: pl.Boolean})
        source = resolve_source(first.columns, p.features, column=p.embedding_column, who=self.name)
        cols = [UID, "text"] + ([p.embedding_column] if source == "embedding" else [])
        data = pl.concat(list(ctx.iter_batches(columns=cols)))
        try:
            X, _ = features(data, source, column=p.embedding_column, hash_dim=p.hash_dim)
        except ValueError as e:  # ragged vectors in a user-provided embedding column
            raise self.error(str(e), column=p.embedding_column) from e
        n = len(X)
        k = p.top_k if p.top_k is not None else (max(1, int(round(p.fraction * n))) if p.fraction else None)
        tokens = (data["text"].str.count_matches(r"\S+").to_numpy().astype(np.float64)
                  if p.budget_tokens is not None else None)
        rng = np.random.default_rng(p.seed)
        chosen, gains, final = self._greedy(X, k, tokens, rng)
        score = final.astype(np.float64).copy()
        score[chosen] = gains
        selected = np.zeros(n, dtype=bool)
        selected[chosen] = True
        report = diversity_report(X, chosen, seed=p.seed)
        report["features"] = source
        (ctx.state_dir / "diversity.json").write_text(json.dumps(report, indent=1))
        log.info("%s: diversity %s", self.name, report)
        out = pl.DataFrame({UID: data[UID], "score": score, _SELECTED: selected})
        if tokens is not None:
            out = out.with_columns(tokens=pl.Series(tokens.astype(np.int64)))
        return out


@register("kcenter_coreset")
class KCenterCoreset(_Coreset):
    """Keeps a k-center greedy coreset of the documents' features (Sener & Savarese 2018): each pick is the
    document farthest from those already picked, so the kept set covers the data within at most twice the
    optimal radius. Size: ``top_k``, ``fraction``, ``budget_tokens`` or ``threshold`` (stop once every
    document is within this Euclidean distance of a kept one). First centre: a seeded random document.

    Column ``kcenter_gain``: for kept documents, their distance to the kept set when picked (the first
    gets its own coverage radius); for the others, their final distance to the kept set. A diversity
    report (pairwise distances, coverage radius, vs a random subset of the same size) goes to the log and
    ``<state_dir>/diversity.json``. Features: ``embedding`` column, else hashed TF-IDF (L2-normalised).
    """

    score_column = "kcenter_gain"
    score_doc = "distance to the kept set when picked (kept rows; the first its coverage radius), else final"

    def _greedy(self, X, k, tokens, rng):
        return kcenter_greedy(X, k=k, radius=self.params.threshold, first=int(rng.integers(len(X))),
                              tokens=tokens, budget=self.params.budget_tokens)


class _FacilityParams(_CoresetParams):
    ground_size: int = Field(4096, gt=0, description="documents (seeded sample) whose coverage f sums over")


@register("facility_location")
class FacilityLocation(_Coreset):
    """Keeps the documents that best represent the rest: lazy-greedy maximisation of the facility-location
    function f(S) = Σ_v max_{s∈S} (1 + cos(v, s))/2 (monotone submodular: greedy >= (1 − 1/e)·optimum).
    V is every document, or a seeded sample of ``ground_size`` (4096) when there are more. Size: ``top_k``,
    ``fraction``, ``budget_tokens`` or ``threshold`` (stop when the best marginal gain falls below it).

    Column ``facility_gain``: marginal gain when picked (kept documents) or w.r.t. the final set (others).
    Diversity report as ``kcenter_coreset`` (``<state_dir>/diversity.json``).
    """

    score_column = "facility_gain"
    score_doc = "marginal gain of f when picked (kept rows), else w.r.t. the final set"
    Params = _FacilityParams

    def _greedy(self, X, k, tokens, rng):
        p = self.params
        ground = None if len(X) <= p.ground_size else np.sort(rng.choice(len(X), p.ground_size, replace=False))
        return facility_location_greedy(X, k=k, min_gain=p.threshold, ground=ground, tokens=tokens,
                                        budget=p.budget_tokens)
