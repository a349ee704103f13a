"""``llm_judge``: a teacher scores each row (pointwise quality or complexity); a filter or a selector score.

Prompts follow Deita (Liu et al. 2024, "What Makes Good Data for Alignment?", Sec. 2.2-2.3): the
complexity scorer rates an instruction alone and the quality scorer rates a response to its instruction,
both on 1-6; and UltraFeedback (Cui et al. 2023, Sec. 2.2): rate a response 1-5 on one aspect
(helpfulness / honesty / instruction following / truthfulness) with a ``Rating: N`` line. Deita reads the
score from the logits of the tokens "1".."6"; a generating backend (a server) only returns text, so the
score is parsed from the text (:func:`curate.synth._judge_parse.parse_score`): unparseable answers get a
null score and a counted reason in ``<score_column>_error``.

Use ``min_score`` to drop rows below a score, or leave it null and select on the column with any selector
(e.g. ``top_k`` on ``judge_quality``).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.synth._base import GeneratorMixin, GenParams, check_template, fill, provenance_columns
from curate.synth._judge_parse import parse_score

log = logging.getLogger(__name__)

_RENAME = {"generator": "judge", "teacher": "judge_teacher", "prompt_id": "judge_prompt_id",
           "gen_params": "judge_gen_params"}

PROMPTS: dict[str, tuple[str, float, float]] = {
    # (template over columns, lowest score, highest score)
    "deita_complexity": (
        "You are a helpful assistant. Rate the complexity of the following user query on a scale of 1 to 6, "
        "where 1 is trivial and 6 is very complex (many constraints, several reasoning steps).\n"
        "##Query: {instruction}\n"
        "Reply with the line \"Score: <number>\".", 1, 6),
    "deita_quality": (
        "You are a helpful assistant. Rate the quality of the Response to the Question on a scale of 1 to 6, "
        "where 1 is useless and 6 is excellent (correct, complete, helpful, well written).\n"
        "#Question#:\n{instruction}\n#Response#:\n{response}\n"
        "Reply with the line \"Score: <number>\".", 1, 6),
    "ultrafeedback_helpfulness": (
        "Evaluate the text for helpfulness: is it correct, informative and relevant to the task?\n"
        "Rate it 1 (severely incorrect) to 5 (outstandingly helpful).\n"
        "Task: {instruction}\nText: {response}\n"
        "Answer in the format:\nRating: <1-5>\nRationale: <one sentence>", 1, 5),
    "ultrafeedback_instruction_following": (
        "Evaluate how well the text follows the task's intent and restrictions.\n"
        "Rate it 1 (irrelevant) to 5 (comprehensive compliance).\n"
        "Task: {instruction}\nText: {response}\n"
        "Answer in the format:\nRating: <1-5>\nRationale: <one sentence>", 1, 5),
}


@register("llm_judge")
class LLMJudge(GeneratorMixin, Filter):
    """Pointwise LLM-judge score per row (Deita complexity/quality, UltraFeedback aspects).

    Adds ``score_column`` (float, null when the answer has no score in range), ``<score_column>_error``
    (empty | no_number | out_of_range) and ``<score_column>_raw`` (the judge's text). Drops rows with
    score < ``min_score`` (``below_min_score``) and, with ``drop_unparsed``, rows without a score
    (``judge_unparsed``); otherwise nothing is dropped."""

    class Params(GenParams):
        prompt: Literal["deita_complexity", "deita_quality", "ultrafeedback_helpfulness",
                        "ultrafeedback_instruction_following", "custom"] = Field(
            "deita_quality", description="built-in judge prompt (Deita 1-6, UltraFeedback 1-5) or 'custom'")
        template: str | None = Field(None, description="custom: prompt over columns; give scale_min/scale_max")
        scale_min: float | None = Field(None, description="lowest valid score (default: the prompt's)")
        scale_max: float | None = Field(None, description="highest valid score (default: the prompt's)")
        columns: dict[str, str] = Field(default_factory=lambda: {"instruction": "text", "response": "response"},
                                        description="template field -> column (default instruction=text)")
        score_column: str | None = Field(None, description="default: judge_<quality|complexity|aspect>")
        min_score: float | None = Field(None, description="drop rows scoring below this (null: score only)")
        drop_unparsed: bool = Field(False, description="drop rows whose judge answer has no valid score")

    def __init__(self, params: OpParams | None = None, /, **kw: Any) -> None:
        super().__init__(params, **kw)
        p = self.params
        p.sampling = p.sampling if "sampling" in p.model_fields_set else p.sampling.model_copy(
            update={"temperature": 0.0, "max_new_tokens": 32})  # judges decode greedily and briefly
        if p.prompt == "custom":
            if not p.template or p.scale_min is None or p.scale_max is None:
                raise ConfigError("llm_judge: prompt 'custom' needs template, scale_min and scale_max")
            self.template, self.lo, self.hi = p.template, p.scale_min, p.scale_max
        else:
            t, lo, hi = PROMPTS[p.prompt]
            self.template = t
            self.lo = p.scale_min if p.scale_min is not None else lo
            self.hi = p.scale_max if p.scale_max is not None else hi
        self.col = p.score_column or "judge_" + p.prompt.split("_", 1)[-1]
        self.reasons: Counter[str] = Counter()

    def setup(self, ctx: RunContext) -> None:
        check_template(self.template, where="llm_judge.template")
        self.setup_teacher(ctx)

    def adds(self) -> dict[str, Column]:
        col = self.params.score_column or "judge_" + self.params.prompt.split("_", 1)[-1]
        return {col: Column(pl.Float64, "the judge's score on its scale", "null when the answer held no score"),
                col + "_error": Column(pl.String, "why no score could be parsed", "null when a score was parsed"),
                col + "_raw": Column(pl.String, "the judge's raw answer", "null when nothing was asked"),
                **provenance_columns(_RENAME)}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        cols = self.params.columns
        extra = {f: batch.get_column(cols.get(f, f)).cast(pl.String, strict=False).to_list()
                 for f in dict.fromkeys(self._fields()) if cols.get(f, f) in batch.columns}
        prompts, missing = fill(self.template, batch, extra)
        if missing:
            raise ConfigError(f"llm_judge: fields {missing} map to no column (columns: {batch.columns}; "
                              f"set llm_judge.columns)")
        todo = [i for i, q in enumerate(prompts) if q is not None]
        salt = int(batch.get_column("__uid").min() or 0) if "__uid" in batch.columns and batch.height else 0
        raw: list[str | None] = [None] * batch.height
        scores: list[float | None] = [None] * batch.height
        errs: list[str | None] = ["missing_field"] * batch.height
        for i, text in zip(todo, self.ask([prompts[i] for i in todo], salt=salt), strict=True):  # type: ignore[misc]
            s, why = parse_score(text, self.lo, self.hi)
            raw[i], scores[i], errs[i] = text, (round(s, 4) if s is not None else None), why
        self.reasons.update(e for e in errs if e)
        bad = sum(e is not None for e in errs)
        if bad:
            log.info("llm_judge %s: %d of %d answers without a score (%s)", self.step_name, bad, batch.height,
                     dict(Counter(e for e in errs if e)))
        return batch.with_columns(pl.Series(self.col, scores, dtype=pl.Float64),
                                  pl.Series(self.col + "_error", errs, dtype=pl.String),
                                  pl.Series(self.col + "_raw", raw, dtype=pl.String),
                                  # judge_* names: the row's own generator provenance stays as it is
                                  **{_RENAME[k]: v.alias(_RENAME[k])
                                     for k, v in self.provenance(prompts, salt=salt).items()})

    def _fields(self) -> list[str]:
        from curate.synth._base import template_fields

        return template_fields(self.template)

    def rules(self) -> list[Rule]:
        rules = []
        if self.params.min_score is not None:
            rules.append(Rule("below_min_score", self.col, "<", self.params.min_score))
        if self.params.drop_unparsed:
            rules.append(Rule("judge_unparsed", self.col + "_error", "not_null"))
        return rules
