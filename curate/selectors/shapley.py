"""``shapley``: data Shapley values of labelled documents, to drop harmful (e.g. mislabelled) examples
or keep the most valuable ones.

Each labelled document is a player; the utility is the validation accuracy of a classifier trained on a
subset, on document features (:mod:`curate.selectors._features`: the ``embedding`` column when present,
else hashed TF-IDF). Algorithms are in :mod:`curate.selectors._valuation`.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_serializer

from curate.core.operator import PATH_FILE, UID, FitContext
from curate.core.registry import register
from curate.selectors._features import FeatureSource, features, resolve_source
from curate.selectors.base import _EXEMPT, Selector, SelectParams

log = logging.getLogger("curate.selectors")


def _load_callable(ref: str | Callable[..., float]) -> Callable[..., float]:
    if callable(ref):
        return ref
    mod, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"utility {ref!r}: expected knn, logistic or 'package.module:function'")
    fn = getattr(importlib.import_module(mod), name)
    if not callable(fn):
        raise ValueError(f"utility {ref!r} is not callable")
    return fn


def _read_validation(path: str, columns: list[str]) -> pl.DataFrame:
    from curate.io.readers import InputSpec

    frames = list(InputSpec(path=path).iter_batches())
    if not frames:
        raise ValueError(f"validation set {path!r} has no rows")
    df = pl.concat(frames, how="diagonal_relaxed")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"validation set {path!r} lacks column(s) {missing}")
    return df


@register("shapley")
class Shapley(Selector):
    """Scores every labelled document with its data Shapley value (column ``shapley_value``, higher is
    more valuable; mislabelled or harmful points get the lowest, often negative, values).

    Methods (``method``):

    * ``knn`` (default): exact KNN-Shapley, Jia et al. 2019 closed form, vectorised over all validation
      points (values averaged over them as OpenDataVal ``knnshap.py``; pyDVL sums). ``k=10`` (OpenDataVal).
    * ``tmc``: TMC-Shapley (Ghorbani & Zou 2019), defaults of amiratag/DataShapley ``DShap.py``: truncation
      tolerance 0.01, convergence error 0.1 checked every 100 permutations; capped at ``max_iterations``.
    * ``beta``: Beta(α,β)-Shapley (Kwon & Zou 2022) by weighted permutation sampling, default Beta(16,1).
    * ``banzhaf``: Data Banzhaf (Wang & Jia 2023), MSR estimator, 1000 subsets (OpenDataVal default).
    * ``cluster``: k-means clusters of the features are the players (exact Shapley up to 12 clusters, TMC
      above); a cluster's value is spread equally over its members. For large pools.

    Utility (all but ``knn``, which is the KNN utility by definition): ``knn`` (Jia et al.'s KNN utility,
    evaluated exactly and incrementally along permutations: the fast default), ``logistic`` (accuracy of
    sklearn ``LogisticRegression(C)``, as Ghorbani), or ``package.module:function`` /a Python callable
    ``fn(X_train, y_train, X_val, y_val) -> float``. U(∅) = ``empty_score`` (0.0, pyDVL's default).

    Validation set: ``validation`` (a jsonl/parquet file with ``text``, the label field and, for embedding
    features, the embedding column) or else ``validation_fraction`` of the labelled rows, held out with
    ``seed``. Held-out and unlabelled rows get no value (null) and are always kept; selection modes
    count only the valued rows. Features: ``features: auto`` uses the ``embedding`` column when present,
    else hashed TF-IDF (logged). Select with ``fraction: 0.9`` (drop the lowest-valued 10%),
    ``threshold: 0`` (drop negative values) or ``top_k``. A summary goes to ``<state_dir>/valuation.json``.
    """

    score_column = "shapley_value"
    higher_is_better = True
    score_doc = "data Shapley value (higher: more valuable; harmful or mislabelled rows lowest)"
    score_null = "null for held-out validation rows and unlabelled rows (always kept)"
    requires = ("sklearn",)
    extra = "select"

    class Params(SelectParams):
        method: Literal["knn", "tmc", "beta", "banzhaf", "cluster"] = Field(
            "knn", description="valuation algorithm (default knn: exact KNN-Shapley, Jia et al. 2019)")
        label_field: str = Field("label", description="column holding each document's label (default label)")
        k: int = Field(10, gt=0, description="neighbours of the KNN utility (OpenDataVal: 10)")
        metric: Literal["euclidean", "cosine"] = Field("euclidean", description="KNN distance "
                                                       "(Jia et al. / OpenDataVal: euclidean)")
        utility: str | Callable[..., float] = Field(
            "knn", description="knn | logistic | package.module:function (tmc, beta, banzhaf, cluster); "
            "from YAML a module:function is imported only with `curate run --allow-code`",
            json_schema_extra={"imports_code": True})
        validation: str | None = Field(None, json_schema_extra=PATH_FILE, description="labelled validation file "
                                       "(jsonl/parquet; default: hold out validation_fraction)")
        validation_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share when no file (curate default 0.1)")
        features: FeatureSource = Field("auto", description="auto: the embedding column when present, else "
                                        "hashed TF-IDF; embedding: require it; hashed: always TF-IDF (default auto)")
        embedding_column: str = Field("embedding", description="column of document vectors (default 'embedding', "
                                      "the embed step's)")
        hash_dim: int = Field(1024, gt=0, description="buckets of the hashed TF-IDF features (curate default 1024)")
        truncation: float | None = Field(0.01, ge=0, description="TMC truncation tolerance (None: off)")
        convergence: float = Field(0.1, gt=0, description="TMC convergence error (DataShapley err)")
        max_iterations: int = Field(1000, gt=0, description="cap on permutations (tmc, beta, cluster)")
        alpha: float = Field(16.0, gt=0, description="Beta Shapley alpha (Kwon & Zou 2022: Beta(16, 1))")
        beta: float = Field(1.0, gt=0, description="Beta Shapley beta (Kwon & Zou 2022: 1)")
        n_samples: int = Field(1000, gt=0, description="Banzhaf MSR subsets (OpenDataVal: 1000)")
        n_clusters: int = Field(64, gt=1, description="clusters (players) of method cluster")
        logistic_c: float = Field(1.0, gt=0, description="inverse regularisation of the logistic utility "
                                  "(sklearn default 1.0)")
        empty_score: float = Field(0.0, description="utility of the empty training set (pyDVL default 0.0)")
        max_players: int = Field(5000, gt=0, description="refuse tmc/beta/banzhaf above this many points (curate default 5000)")

        @field_serializer("utility")
        def _ser_utility(self, v: Any) -> str:
            return v if isinstance(v, str) else f"{v.__module__}:{v.__qualname__}"

    def needs(self) -> list[str]:
        p = self.params
        return [p.label_field] + ([p.embedding_column] if p.features == "embedding" else [])

    def need_hint(self, column: str) -> str:
        if column == self.params.label_field:
            return f"no label column '{column}' (set label_field)"
        return "add an `embed` step before this one, or use features: hashed"

    def compute_scores(self, ctx: FitContext) -> pl.DataFrame:
        p = self.params
        first = next(ctx.iter_batches(), None)
        if first is None:
            return pl.DataFrame({UID: [], "score": []}, schema={UID: pl.UInt64, "score": pl.Float64})
        if p.label_field not in first.columns:
            raise self.error(f"no label column '{p.label_field}' (set label_field)", column=p.label_field)
        source = resolve_source(first.columns, p.features, p.embedding_column, "shapley")
        cols = [UID, "text", p.label_field] + ([p.embedding_column] if source == "embedding" else [])
        data = pl.concat(list(ctx.iter_batches(columns=cols)))
        labelled = data[p.label_field].is_not_null().to_numpy()

        rng = np.random.default_rng(p.seed)
        lab_idx = np.flatnonzero(labelled)
        if p.validation is not None:
            train_idx = lab_idx
            try:
                val = _read_validation(p.validation, cols[1:])
            except ValueError as e:
                raise self.error(str(e), param="validation") from e
        else:
            perm = rng.permutation(lab_idx)
            n_val = max(1, int(round(p.validation_fraction * len(lab_idx))))
            if len(lab_idx) - n_val < 1:
                raise self.error(f"too few labelled rows ({len(lab_idx)}) to hold out a validation set",
                                 param="validation_fraction")
            train_idx = np.sort(perm[n_val:])
            val = data[np.sort(perm[:n_val])]
        train = data[train_idx]
        if p.method in ("tmc", "beta", "banzhaf") and len(train) > p.max_players:
            raise self.error(f"method {p.method} on {len(train)} points exceeds max_players={p.max_players}; "
                             "use method knn or cluster (or raise max_players)", param="max_players")

        try:
            X, (Xv,) = features(train, source, p.embedding_column, p.hash_dim, others=[val])
        except ValueError as e:  # ragged vectors in a user-provided embedding column
            raise self.error(str(e), column=p.embedding_column) from e
        labels = pl.concat([train[p.label_field].cast(pl.String), val[p.label_field].cast(pl.String)])
        _, codes = np.unique(labels.to_numpy().astype(str), return_inverse=True)
        y, yv = codes[:len(train)], codes[len(train):]

        res = self._value(X, y, Xv, yv)
        values = np.full(data.height, np.nan)
        values[train_idx] = res.values
        exempt = np.ones(data.height, dtype=bool)
        exempt[train_idx] = False
        summary = {"method": p.method, "features": source, "players": int(len(train)),
                   "validation": int(len(val)), "iterations": res.iterations, "converged": res.converged,
                   "utility_calls": res.utility_calls, "sum_values": float(np.sum(res.values))}
        (ctx.state_dir / "valuation.json").write_text(json.dumps(summary, indent=1))
        log.info("shapley: %s", summary)
        return pl.DataFrame({UID: data[UID], "score": pl.Series(values).fill_nan(None),
                             _EXEMPT: exempt})

    def _utility(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray):
        from curate.selectors import _valuation as V

        p = self.params
        if p.utility == "knn":
            return V.KNNUtility(X, y, Xv, yv, p.k, p.metric)
        if p.utility == "logistic":
            return V.ClassifierUtility(X, y, Xv, yv, "logistic", C=p.logistic_c, empty_score=p.empty_score)
        try:
            fn = _load_callable(p.utility)
        except (ImportError, AttributeError, ValueError) as e:
            raise self.error(f"cannot load utility {p.utility!r}: {e}", param="utility") from e
        return V.CallableUtility(fn, X, y, Xv, yv, empty_score=p.empty_score)

    def _value(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray):
        from curate.selectors import _valuation as V

        p = self.params
        n = len(X)
        if p.method == "knn":
            return V.ValuationResult(V.knn_shapley(X, y, Xv, yv, p.k, p.metric), method="knn")
        tmc_kw = dict(truncation=p.truncation, convergence=p.convergence, max_iterations=p.max_iterations,
                      seed=p.seed)
        if p.method == "cluster":
            assign = V.kmeans(X, p.n_clusters, seed=p.seed)
            return V.cluster_shapley(self._utility(X, y, Xv, yv), assign, int(assign.max()) + 1, **tmc_kw)
        u = self._utility(X, y, Xv, yv)
        if p.method == "tmc":
            return V.tmc_shapley(u, n, **tmc_kw)
        if p.method == "beta":
            return V.beta_shapley(u, n, p.alpha, p.beta, **tmc_kw)
        return V.msr_banzhaf(u, n, p.n_samples, seed=p.seed)
