"""``rationale``: the teacher writes a step-by-step rationale and an answer; keep rows whose answer is right.

Distilling step by step (Hsieh et al. 2023, Sec. 3.1): an LLM is prompted with chain-of-thought
(Wei et al. 2022) to produce a rationale and a label for each training input; the student then learns both
as two tasks (``curate distill`` with ``data.mode: rationale``). Rationales whose final answer disagrees
with the gold label are dropped, as STaR (Zelikman et al. 2022, Sec. 3.1) does, so the student never
learns a wrong chain. The default prompt asks for GSM8K's "The answer is N." ending (Wei et al. 2022,
Appendix G exemplars end that way); labels are read from GSM8K's ``#### N`` line.
"""

from __future__ import annotations

import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import Column, Filter, Rule, RunContext
from curate.core.registry import register
from curate.metrics.answers import answers_match, extract_answer, gsm8k_label, normalize_number
from curate.synth._base import GeneratorMixin, GenParams, check_template, fill, provenance_columns

DEFAULT_PROMPT = ("Solve this math word problem. Reason step by step, then finish with the sentence "
                  "\"The answer is <number>.\"\n\nQuestion: {text}")


@register("rationale")
class Rationale(GeneratorMixin, Filter):
    """Teacher rationale + answer per question; drops rows whose answer does not match the label.

    Adds ``rationale`` (the teacher's text before its answer statement), ``pred_answer``, ``gold_answer``,
    ``answer_correct`` and provenance. Drops: ``missing_label`` (no gold number), ``no_answer`` (no number in
    the teacher's text), ``answer_mismatch`` (wrong number) -- the last two only with ``require_correct``."""

    class Params(GenParams):
        template: str = Field(DEFAULT_PROMPT, description="prompt over columns (chain-of-thought, Wei et al. 2022)")
        label_column: str = Field("answer", description="gold answer column")
        label_format: str = Field("gsm8k", description="gsm8k: number after '####'; plain: the column is the answer")
        require_correct: bool = Field(True, description="drop rationales whose answer is wrong (Hsieh et al. 2023 "
                                                        "keep teacher labels; filtering as STaR does)")

    def setup(self, ctx: RunContext) -> None:
        check_template(self.params.template, where="rationale.template")
        if self.params.label_format not in ("gsm8k", "plain"):
            raise ConfigError("rationale.label_format must be 'gsm8k' or 'plain'")
        self.setup_teacher(ctx)

    def needs(self) -> list[str]:
        return [self.params.label_column]

    def adds(self) -> dict[str, Column]:
        return {"rationale": Column(pl.String, "the teacher's step-by-step solution", "null when nothing was asked"),
                "pred_answer": Column(pl.String, "final answer extracted from the rationale (normalised number)",
                                      "null when the rationale states no answer (the row is dropped)"),
                "gold_answer": Column(pl.String, "the label's final answer (GSM8K '#### n', normalised)",
                                      "null when the label has none (the row is dropped)"),
                "answer_correct": Column(pl.Boolean, "pred_answer equals gold_answer", "null when either is null"),
                **provenance_columns()}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        if p.label_column not in batch.columns:
            raise ConfigError(f"rationale: label column '{p.label_column}' not in the data ({batch.columns})")
        prompts, missing = fill(p.template, batch)
        if missing:
            raise ConfigError(f"rationale: template fields {missing} are not columns ({batch.columns})")
        raw = batch.get_column(p.label_column).cast(pl.String, strict=False).to_list()
        gold = [gsm8k_label(x) if p.label_format == "gsm8k" else normalize_number(x) if x is not None else None
                for x in raw]
        todo = [i for i, q in enumerate(prompts) if q is not None and gold[i] is not None]
        salt = int(batch.get_column("__uid").min() or 0) if "__uid" in batch.columns and batch.height else 0
        outs = self.ask([prompts[i] for i in todo], salt=salt)  # type: ignore[misc]
        rat: list[str | None] = [None] * batch.height
        pred: list[str | None] = [None] * batch.height
        for i, text in zip(todo, outs, strict=True):
            ans, at = extract_answer(text)
            pred[i] = ans
            rat[i] = text[:at].strip() or text.strip()
        correct = [answers_match(a, g) if a is not None and g is not None else None for a, g in zip(pred, gold)]
        todo_set = set(todo)
        done = [i in todo_set for i in range(batch.height)]
        return batch.with_columns(
            pl.Series("rationale", rat, dtype=pl.String),
            pl.Series("pred_answer", pred, dtype=pl.String),
            pl.Series("gold_answer", gold, dtype=pl.String),
            pl.Series("answer_correct", correct, dtype=pl.Boolean),
            pl.Series("__missing_label", [g is None for g in gold], dtype=pl.Boolean),
            pl.Series("__no_answer", [d and a is None for d, a in zip(done, pred)], dtype=pl.Boolean),
            pl.Series("__mismatch", [c is False for c in correct], dtype=pl.Boolean),
            **self.provenance([q if d else None for q, d in zip(prompts, done)], salt=salt),
        )

    def rules(self) -> list[Rule]:
        rules = [Rule("missing_label", "__missing_label", "is_true")]
        if self.params.require_correct:
            rules += [Rule("no_answer", "__no_answer", "is_true"), Rule("answer_mismatch", "__mismatch", "is_true")]
        return rules

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop("__missing_label", "__no_answer", "__mismatch")
