"""Moore-Lewis cross-entropy difference selection between an in-domain and a general n-gram LM."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import PATH_FILE, UID, FitContext
from curate.core.registry import register
from curate.models.kenlm import LMScorer, LMTokenizer
from curate.selectors.base import Selector, SelectParams

_BITS_PER_LOG10 = math.log2(10.0)


def cross_entropy_difference(in_lp: np.ndarray, gen_lp: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """H_in - H_gen in bits per token, from log10 sums of the two LMs over the same tokens."""
    return -(np.asarray(in_lp) - np.asarray(gen_lp)) * _BITS_PER_LOG10 / np.asarray(tokens)


def _score_shard(in_model: str, gen_model: str, normalize: bool | None, sp_model: str | None,
                 shard: Path, out: Path) -> None:
    from curate.io.spill import read_spill

    lm_in = LMScorer(in_model, normalize=normalize, sp_model=sp_model)
    lm_gen = LMScorer(gen_model, normalize=normalize, sp_model=sp_model)
    frames = []
    for batch in read_spill(shard, [UID, "text"]):
        table = lm_in.line_table(batch["text"])  # one tokenisation serves both models (checked in fit)
        lp_in, ntok = lm_in.score_table(table)
        lp_gen, _ = lm_gen.score_table(table)
        doc = table.doc
        n = batch.height
        tokens = np.bincount(doc, weights=ntok, minlength=n)
        score = cross_entropy_difference(np.bincount(doc, weights=lp_in, minlength=n),
                                         np.bincount(doc, weights=lp_gen, minlength=n), tokens)
        frames.append(pl.DataFrame({UID: batch[UID], "score": score}))
    schema = {UID: pl.UInt64, "score": pl.Float64}
    (pl.concat(frames) if frames else pl.DataFrame(schema=schema)).write_parquet(out)


@register("moore_lewis")
class MooreLewis(Selector):
    """Keeps documents that look in-domain: Moore & Lewis (2010) cross-entropy difference
    H_in(x) - H_gen(x), each H = -(1/n) sum log2 p(token) over the document's tokens with one ``</s>`` per
    line (as the ``perplexity`` step counts them), under an in-domain LM and a general LM (both from
    ``curate train-lm``, same order, tokeniser and - for SentencePiece - the same piece model; words
    outside an LM's vocabulary score through ``<unk>``). Lower is more in-domain, so ``threshold`` keeps
    scores at most the threshold and ``top_k`` / ``fraction`` keep the lowest. The paper trains the
    general LM on a random sample of the pool of comparable size to the in-domain data.

    Columns: ``ml_score`` (bits per token).
    """

    requires: ClassVar[tuple[str, ...]] = ("kenlm",)
    extra: ClassVar[str] = "lm"
    score_column: ClassVar[str] = "ml_score"
    higher_is_better: ClassVar[bool] = False
    score_doc: ClassVar[str] = "cross-entropy difference H_in - H_gen in bits per token (lower: more in-domain)"

    class Params(SelectParams):
        in_domain_model: str = Field(json_schema_extra=PATH_FILE, description="LM trained on trusted in-domain "
                                     "text (required; from `curate train-lm`)")
        general_model: str = Field(json_schema_extra=PATH_FILE, description="LM trained on general text (e.g. a "
                                   "sample of the pool; required)")
        normalize: bool | None = Field(None, description="CCNet normalisation; default: as the models were trained")
        sp_model: str | None = Field(None, json_schema_extra=PATH_FILE, description="SentencePiece model; "
                                     "default: the models' own")

    def _check_models(self) -> None:
        p = self.params
        for m in (p.in_domain_model, p.general_model):
            if not Path(m).exists():
                raise ConfigError(f"moore_lewis: language model {m} not found")
        a = LMTokenizer.for_model(p.in_domain_model, p.normalize, p.sp_model)
        b = LMTokenizer.for_model(p.general_model, p.normalize, p.sp_model)
        same_sp = (a.sp_model is None and b.sp_model is None) or (
            a.sp_model is not None and b.sp_model is not None and Path(a.sp_model).read_bytes() == Path(b.sp_model).read_bytes())
        if a.normalize != b.normalize or not same_sp:
            raise ConfigError("moore_lewis: the two LMs must share normalisation and tokeniser "
                              f"(in-domain: {a}, general: {b}); train the second with --sp-model of the first")

    def compute_scores(self, ctx: FitContext) -> list[Path]:
        """Per-shard score files written by the workers (the base class selects from them: the scores
        never gather in the driver)."""
        self._check_models()
        p = self.params
        fn = functools.partial(_score_shard, str(p.in_domain_model), str(p.general_model), p.normalize, p.sp_model)
        return ctx.map_shards(fn, "moore_lewis")
