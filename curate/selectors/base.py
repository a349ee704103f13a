"""The common score-then-select interface of every selector (perplexity ranks, Moore-Lewis, DSIR, LESS,
Shapley, coresets).

A selector computes one score per document over the whole dataset (``compute_scores``), then keeps
documents by threshold, top-k, top fraction or a token budget; ties are broken by input order, so the
selection is deterministic. Rejected documents are recorded with their score and the cut-off score.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import polars as pl
from pydantic import Field, model_validator

from curate.core.global_ops import top_rows
from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext

_SELECTED = "__selected"
_EXEMPT = "__exempt"


class SelectParams(OpParams):
    """How many documents to keep. Set at most one of threshold, top_k, fraction, budget_tokens
    (none: score only, keep everything)."""

    threshold: float | None = Field(None, description="keep documents scoring at least this (at most, "
                                    "when higher_is_better is false)")
    top_k: int | None = Field(None, gt=0, description="keep the k best documents (default off)")
    fraction: float | None = Field(None, gt=0, le=1, description="keep this fraction of the best documents (default off)")
    budget_tokens: int | None = Field(None, gt=0, description="keep the best documents until their "
                                      "whitespace-token count reaches this budget (default off)")
    higher_is_better: bool | None = Field(None, description="score direction; default: the selector's own")
    seed: int = Field(0, description="seed of the selector's random choices (sampling, tie-free noise, "
                      "initial points); curate default 0")

    @model_validator(mode="after")
    def _one_mode(self):
        modes = [m for m in ("threshold", "top_k", "fraction", "budget_tokens") if getattr(self, m) is not None]
        if len(modes) > 1:
            raise ValueError(f"set only one of threshold, top_k, fraction, budget_tokens (got {', '.join(modes)})")
        return self


#: ``top_k(frame, k)``: the k best rows of frame (column ``score``, ties by ``__uid``), best first
TopK = Callable[[pl.DataFrame, int], pl.DataFrame]


def select(scores: pl.DataFrame, params: SelectParams, higher_is_better: bool, *,
           top_k: TopK | None = None) -> tuple[pl.Series, float | None]:
    """Pick documents from ``scores`` (columns ``__uid``, ``score``, optional ``tokens``).

    Returns a boolean Series aligned with ``scores`` and the cut-off score (None when nothing is cut).
    Order: best score first, then input order (``__uid``) - deterministic. ``top_k`` finds the best rows
    for ``top_k``/``fraction`` (default: a sort here; a selector's fit passes ``ctx.global_ops.top_k``,
    per-block top-k on Ray then a merge of the candidates).
    """
    n = scores.height
    if n == 0:
        return pl.Series(_SELECTED, [], dtype=pl.Boolean), None
    p = params
    if p.threshold is not None:
        sc = scores["score"].cast(pl.Float64).fill_nan(None)
        keep = (sc >= p.threshold) if higher_is_better else (sc <= p.threshold)
        return keep.fill_null(False).alias(_SELECTED), p.threshold
    if p.top_k is not None or p.fraction is not None:
        k = p.top_k if p.top_k is not None else int(round(p.fraction * n))
        k = min(k, n)
        ranked = (top_k or partial(_sorted_top, higher_is_better))(scores.with_row_index("__pos"), k)
    elif p.budget_tokens is not None:
        ranked = _sorted_top(higher_is_better, scores.with_row_index("__pos"), n)
        tokens = ranked["tokens"] if "tokens" in ranked.columns else pl.repeat(1, n, eager=True)
        k = int((tokens.cum_sum() <= p.budget_tokens).sum())
    else:
        return pl.Series(_SELECTED, [True] * n), None
    chosen = ranked["__pos"][:k]
    keep = pl.Series(_SELECTED, [False] * n).scatter(chosen, True) if k else pl.Series(_SELECTED, [False] * n)
    cutoff = float(ranked["score"][k - 1]) if 0 < k and ranked["score"][k - 1] is not None else None
    return keep, cutoff


def _sorted_top(higher_is_better: bool, frame: pl.DataFrame, k: int) -> pl.DataFrame:
    return top_rows(frame, k, score="score", order=UID, higher_is_better=higher_is_better)


def _decide(scores: pl.DataFrame, params: SelectParams, higher_is_better: bool, *,
            top_k: TopK | None = None) -> tuple[pl.Series, float | None]:
    """:func:`select`, honouring two optional columns of ``compute_scores``' frame: ``__selected`` (the
    selector chose its set jointly, e.g. a coreset: used as is) and ``__exempt`` (rows that take no part
    in the selection, e.g. a held-out validation set: always kept; fractions count the other rows)."""
    if _SELECTED in scores.columns:
        keep = scores[_SELECTED].fill_null(False).alias(_SELECTED)
        chosen = scores.filter(keep)["score"].cast(pl.Float64).fill_nan(None)
        return keep, (None if keep.all() or chosen.null_count() == len(chosen) else float(
            chosen.min() if higher_is_better else chosen.max()))
    if _EXEMPT in scores.columns and scores[_EXEMPT].any():
        exempt = scores[_EXEMPT].fill_null(False)
        pos = (~exempt).arg_true()
        sub_keep, cutoff = select(scores.filter(~exempt), params, higher_is_better, top_k=top_k)
        return pl.Series(_SELECTED, [True] * scores.height).scatter(pos, sub_keep), cutoff
    return select(scores, params, higher_is_better, top_k=top_k)


class Selector(GlobalStage):
    """Base of selectors: subclasses implement ``compute_scores`` and set ``score_column``.

    ``compute_scores(ctx)`` returns a DataFrame with ``__uid`` and ``score`` (and optionally ``tokens``,
    ``__exempt`` or ``__selected``, see :func:`_decide`) for every document of the dataset; the base
    class selects, stores the state, adds the score column to every document and drops the unselected
    ones with reason ``not_selected``.
    """

    score_column: ClassVar[str] = "score"
    higher_is_better: ClassVar[bool] = True
    #: what the score column holds and when it is null (its :class:`Column` declaration)
    score_doc: ClassVar[str] = "the selector's score"
    score_null: ClassVar[str] = "never null"

    class Params(SelectParams):
        pass

    def compute_scores(self, ctx: FitContext) -> pl.DataFrame | list[Path]:
        """The scores: a frame, or the per-shard parquet files (``__uid``, ``score``) the workers wrote
        (``ctx.map_shards``), which the base class selects from without reading them all at once."""
        raise NotImplementedError

    def adds(self) -> dict[str, Column]:
        return {self.score_column: Column(pl.Float64, self.score_doc, self.score_null)}

    def _direction(self) -> bool:
        hib = getattr(self.params, "higher_is_better", None)
        return self.higher_is_better if hib is None else hib

    def fit(self, ctx: FitContext) -> None:
        scores = self.compute_scores(ctx)
        if isinstance(scores, list):
            if self._by_rule(scores):
                self._fit_files(ctx, scores)
                return
            scores = (pl.concat([pl.read_parquet(f) for f in scores], how="vertical_relaxed") if scores
                      else pl.DataFrame(schema={UID: pl.UInt64, "score": pl.Float64}))
        if "tokens" not in scores.columns and getattr(self.params, "budget_tokens", None) is not None:
            frames = [b.select(UID, pl.col("text").str.count_matches(r"\S+").alias("tokens"))
                      for b in ctx.iter_batches(columns=[UID, "text"])]
            tok = pl.concat(frames) if frames else pl.DataFrame(schema={UID: pl.UInt64, "tokens": pl.UInt32})
            scores = scores.join(tok, on=UID, how="left")
        hib = self._direction()

        def top_k(frame: pl.DataFrame, k: int) -> pl.DataFrame:  # where the executor ranks (Ray: per block)
            return ctx.global_ops.top_k(frame, k, score="score", order=UID, higher_is_better=hib)

        keep, cutoff = _decide(scores, self.params, hib, top_k=top_k)
        (ctx.state_dir / "rule.json").unlink(missing_ok=True)  # a files-mode state of an earlier fit
        state = scores.select(UID, pl.col("score").alias(self.score_column)).with_columns(keep)
        state.write_parquet(ctx.state_dir / "selection.parquet")
        (ctx.state_dir / "cutoff.txt").write_text("" if cutoff is None else repr(cutoff))

    def _by_rule(self, files: list[Path]) -> bool:
        """Per-shard score files are selected by a rule on (score, ``__uid``) (threshold, top_k, fraction
        or keep-all): a token budget and joint or exempt selections need all rows in one frame."""
        if getattr(self.params, "budget_tokens", None) is not None:
            return False
        return not files or not ({_SELECTED, _EXEMPT} & set(pl.read_parquet_schema(files[0])))

    def _fit_files(self, ctx: FitContext, files: list[Path]) -> None:
        """Selection from per-shard score files: the driver gets the row count (file metadata) and, for
        top_k / fraction, the k best rows from ``ctx.global_ops.top_k`` (``__uid`` and score only) to
        read the k-th from; the state is the score files (copied into the state dir one at a time) and
        the rule ``setup`` applies to them: the same selection as :func:`select` on the whole frame."""
        import pyarrow.parquet as pq

        p = self.params
        hib = self._direction()
        n = sum(pq.read_metadata(f).num_rows for f in files)
        part_dir = ctx.state_dir / "scores"
        shutil.rmtree(part_dir, ignore_errors=True)
        part_dir.mkdir(parents=True)
        parts = []
        for i, f in enumerate(files):
            part = part_dir / f"part-{i:05d}.parquet"
            pl.scan_parquet(f).select(UID, "score").sink_parquet(part)
            parts.append(part)
        rule: dict = {"mode": "all", "higher_is_better": hib}
        cutoff: float | None = None
        if n and p.threshold is not None:
            rule.update(mode="threshold", threshold=p.threshold)
            cutoff = p.threshold
        elif n and (p.top_k is not None or p.fraction is not None):
            k = min(p.top_k if p.top_k is not None else int(round(p.fraction * n)), n)
            rule["mode"] = "none"
            if k:
                best = ctx.global_ops.top_k(parts, k, score="score", order=UID, higher_is_better=hib)
                last = best["score"][k - 1]
                cutoff = None if last is None else float(last)
                rank_score = None if cutoff is None or math.isnan(cutoff) else cutoff
                rule.update(mode="rank", score=rank_score, uid=int(best[UID][k - 1]))
        (ctx.state_dir / "selection.parquet").unlink(missing_ok=True)  # a frame-mode state of an earlier fit
        (ctx.state_dir / "rule.json").write_text(json.dumps(rule))
        (ctx.state_dir / "cutoff.txt").write_text("" if cutoff is None else repr(cutoff))

    @staticmethod
    def _rule_expr(rule: dict) -> pl.Expr:
        """``__selected`` of a score file's rows under a rule of :meth:`_fit_files`: for ``rank``, the
        rows at or before the k-th best (score, NaN and null last; ties by ascending ``__uid``)."""
        s = pl.col("score").cast(pl.Float64).fill_nan(None)
        hib = rule["higher_is_better"]
        mode = rule["mode"]
        if mode == "all":
            return pl.lit(True)
        if mode == "none":
            return pl.lit(False)
        if mode == "threshold":
            return ((s >= rule["threshold"]) if hib else (s <= rule["threshold"])).fill_null(False)
        at_or_before = pl.col(UID) <= rule["uid"]
        if rule["score"] is None:  # the k-th best has no score: every scored row, and the unscored up to it
            return s.is_not_null() | at_or_before
        better = (s > rule["score"]) if hib else (s < rule["score"])
        return (better | ((s == rule["score"]) & at_or_before)).fill_null(False)

    def setup(self, ctx: RunContext) -> None:
        rule_file = Path(ctx.state_dir) / "rule.json"
        if rule_file.exists():
            rule = json.loads(rule_file.read_text())
            parts = sorted((Path(ctx.state_dir) / "scores").glob("part-*.parquet"))
            scores = (pl.read_parquet(parts) if parts
                      else pl.DataFrame(schema={UID: pl.UInt64, "score": pl.Float64}))
            self._state = scores.select(UID, pl.col("score").alias(self.score_column),
                                        self._rule_expr(rule).alias(_SELECTED))
        else:
            self._state = pl.read_parquet(Path(ctx.state_dir) / "selection.parquet")
        raw = (Path(ctx.state_dir) / "cutoff.txt").read_text()
        self._cutoff = float(raw) if raw else None

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        batch = batch.drop([c for c in (self.score_column,) if c in batch.columns])
        return batch.join(self._state, on=UID, how="left", maintain_order="left").with_columns(
            (~pl.col(_SELECTED).fill_null(True)).alias(_SELECTED))

    def rules(self) -> list[Rule]:
        # the column holds "not selected"; the recorded threshold is the cut-off score
        return [Rule("not_selected", _SELECTED, "is_true", getattr(self, "_cutoff", None),
                     score_column=self.score_column)]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop(_SELECTED)

