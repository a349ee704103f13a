"""CCNet perplexity scoring with a KenLM model (loaded by :class:`curate.models.kenlm.LMScorer`), and CCNet's
head/middle/tail buckets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.core.operator import (
    PATH_FILE,
    Column,
    Filter,
    FitContext,
    GlobalStage,
    OpParams,
    Rule,
    RunContext,
)
from curate.core.registry import register
from curate.models.kenlm import LMScorer


@register("perplexity")
class Perplexity(Filter):
    """Scores documents by KenLM perplexity (CCNet) and drops those above ``max_ppl``.

    ppl = 10^(-sum_lines log10 p(line) / sum_lines (tokens + 1)): CCNet's ``DocLM`` (``cc_net/perplexity.py``),
    one ``</s>`` per line, empty lines included. Each line is CCNet-normalised
    (``cc_net/text_normalizer.py``) and, when the model was trained with SentencePiece, encoded with the
    model's SentencePiece file (both read from the ``<model>.json`` sidecar ``curate train-lm`` writes).
    Production CCNet normalises the whole document before encoding, which deletes newlines and scores it
    as one line; scoring line by line (as BigScience's ac_dc does) keeps paragraph boundaries - the numbers
    differ slightly. The value is not rounded (CCNet rounds to 0.1). ``max_ppl`` is off by default; CCNet
    does not filter by perplexity, it buckets (see ``perplexity_bucket``).

    With ``per_paragraph``, also ``<column>_paragraphs``: one value per line, 10^(-score/(tokens+1)), CCNet's
    ``SentencesLM``.

    ``model`` may be an ARPA file or a KenLM binary (``curate binarize-lm``): each worker process parses an ARPA
    file again, while a binary is mmapped and its pages shared by all workers (load times in
    ``benchmarks/RESULTS.md``); scores are the same.
    """

    requires: ClassVar[tuple[str, ...]] = ("kenlm",)
    extra: ClassVar[str] = "lm"

    class Params(OpParams):
        model: str = Field(json_schema_extra=PATH_FILE, description="ARPA or kenlm binary model (required; from "
                           "`curate train-lm` or lmplz)")
        max_ppl: float | None = Field(None, gt=0, description="drop documents with a higher perplexity (default "
                                      "off: CCNet buckets instead of filtering)")
        per_paragraph: bool = Field(False, description="also add ppl_paragraphs, one perplexity per line "
                                    "(default false)")
        normalize: bool | None = Field(None, description="CCNet normalisation; default: as the model was trained")
        sp_model: str | None = Field(None, json_schema_extra=PATH_FILE, description="SentencePiece model; default: "
                                     "the one the model was trained with")
        column: str = Field("ppl", description="output column (default ppl, CCNet's perplexity field)")

    def adds(self) -> dict[str, Column]:
        col = self.params.column
        out = {col: Column(pl.Float64, "KenLM perplexity, 10^(-log10 p / tokens) over the lines")}
        if self.params.per_paragraph:
            out[f"{col}_paragraphs"] = Column(pl.List(pl.Float64), "perplexity of each line, in order")
        return out

    def setup(self, ctx: RunContext) -> None:
        p = self.params
        self._scorer = LMScorer(p.model, normalize=p.normalize, sp_model=p.sp_model)

    def _ensure(self) -> LMScorer:
        if not hasattr(self, "_scorer"):
            self.setup(RunContext(work_dir=Path("."), state_dir=Path(".")))
        return self._scorer

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        scorer = self._ensure()
        col = self.params.column
        table = scorer.line_table(batch["text"])
        lp, ntok = scorer.score_table(table)
        doc = table.doc
        n = batch.height
        ppl = np.power(10.0, -np.bincount(doc, weights=lp, minlength=n) / np.bincount(doc, weights=ntok, minlength=n))
        out = batch.with_columns(pl.Series(col, ppl, dtype=pl.Float64))
        if self.params.per_paragraph:
            per = (pl.DataFrame({"doc": doc, "p": np.power(10.0, -lp / ntok)})
                   .group_by("doc", maintain_order=True).agg(pl.col("p"))["p"])
            out = out.with_columns(per.alias(f"{col}_paragraphs"))
        return out

    def rules(self) -> list[Rule]:
        p = self.params
        return [] if p.max_ppl is None else [Rule("max_perplexity", p.column, ">", p.max_ppl)]


@register("perplexity_bucket")
class PerplexityBucket(GlobalStage):
    """CCNet's head / middle / tail buckets of a perplexity column (``PerplexityBucket`` in
    ``cc_net/perplexity.py``): head if ppl < cut_head, middle if ppl < cut_tail, tail otherwise; a missing
    or negative perplexity is "all". Cut-offs are the ``percentile_head`` / ``percentile_tail``
    percentiles (defaults 30 / 60, CCNet's) of this dataset's perplexities, computed in ``fit`` with linear
    interpolation (``numpy.percentile``), or fixed ``cutoffs`` (CCNet's English values: [340, 520]).
    ``keep_buckets`` drops the other buckets (CCNet's example config keeps ["head", "all"]; default keeps all).

    """

    class Params(OpParams):
        column: str = Field("ppl", description="perplexity column written by a `perplexity` step (default ppl)")
        percentile_head: float = Field(30.0, gt=0, lt=100, description="percentile below which a document is "
                                       "head (CCNet: 30)")
        percentile_tail: float = Field(60.0, gt=0, lt=100, description="percentile from which a document is "
                                       "tail (CCNet: 60)")
        cutoffs: list[float] | None = Field(None, min_length=2, max_length=2,
                                            description="fixed [head, tail] cut-offs instead of percentiles (default none; CCNet English: [340, 520])")
        keep_buckets: list[Literal["head", "middle", "tail", "all"]] | None = Field(
            None, description="keep only these buckets (default all; CCNet's example keeps [head, all])")
        bucket_column: str = Field("bucket", description="output column (default bucket, CCNet's field)")

        @model_validator(mode="after")
        def _ordered(self):
            if self.percentile_head > self.percentile_tail:
                raise ValueError("percentile_head must not exceed percentile_tail")
            if self.cutoffs is not None and self.cutoffs[0] > self.cutoffs[1]:
                raise ValueError("cutoffs must be [head, tail] with head <= tail")
            return self

    _DROP = "__bucket_drop"

    def needs(self) -> list[str]:
        return [self.params.column]

    def need_hint(self, column: str) -> str:
        return "add a `perplexity` step before this one (or set column)"

    def adds(self) -> dict[str, Column]:
        return {self.params.bucket_column: Column(pl.String, "head, middle, tail, or all (no usable perplexity)")}

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        if p.cutoffs is not None:
            cuts = list(p.cutoffs)
        else:
            vals = pl.concat([b.select(pl.col(p.column).cast(pl.Float64))
                              for b in ctx.iter_batches(columns=[p.column])] or
                             [pl.DataFrame({p.column: []}, schema={p.column: pl.Float64})])[p.column]
            vals = vals.drop_nulls().drop_nans().filter(vals.drop_nulls().drop_nans() >= 0).to_numpy()
            cuts = ([float(np.percentile(vals, p.percentile_head)), float(np.percentile(vals, p.percentile_tail))]
                    if len(vals) else [float("inf"), float("inf")])
        (ctx.state_dir / "cutoffs.json").write_text(json.dumps({"head": cuts[0], "tail": cuts[1]}))

    def setup(self, ctx: RunContext) -> None:
        state = json.loads((Path(ctx.state_dir) / "cutoffs.json").read_text())
        self.cutoffs = (state["head"], state["tail"])

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(bucket_expr(pl.col(self.params.column), *self.cutoffs)
                                  .alias(self.params.bucket_column)).with_columns(
            (~pl.col(self.params.bucket_column).is_in(self.params.keep_buckets or ["head", "middle", "tail", "all"]))
            .alias(self._DROP))

    def rules(self) -> list[Rule]:
        if not self.params.keep_buckets:
            return []
        return [Rule("perplexity_bucket", self._DROP, "is_true", ",".join(self.params.keep_buckets),
                     score_column=self.params.column)]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop(self._DROP)


def bucket_expr(ppl: pl.Expr, head: float, tail: float) -> pl.Expr:
    """CCNet's bucket of a perplexity: head < ``head`` <= middle < ``tail`` <= tail; null/NaN/negative: all."""
    x = ppl.cast(pl.Float64)
    return (pl.when(x.is_null() | x.is_nan() | (x < 0)).then(pl.lit("all"))
            .when(x < head).then(pl.lit("head"))
            .when(x < tail).then(pl.lit("middle"))
            .otherwise(pl.lit("tail")))
