"""``prompt_template``: the teacher answers a prompt built from each row's columns (sequence-level KD data).

Sequence-level knowledge distillation (Kim & Rush 2016, Sec. 3.2) trains the student on the teacher's
own outputs for the training inputs; instruction datasets built this way (Alpaca, Taori et al. 2023) use
one prompt per instruction with the optional input appended. The default template is that shape.
"""

from __future__ import annotations

import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import Column, Filter, Rule, RunContext
from curate.core.registry import register
from curate.synth._base import GeneratorMixin, GenParams, check_template, fill, provenance_columns


@register("prompt_template")
class PromptTemplate(GeneratorMixin, Filter):
    """Ask the teacher one prompt per row (``template`` over the row's columns) and store its answer.

    Adds ``output_column`` plus provenance (generator, teacher, prompt_id, gen_params). Drops rows whose
    template fields are null (``missing_field``) and rows whose answer is empty (``empty_response``);
    ``text_template`` (over the columns, the answer included) rewrites ``text`` so later filters and
    dedup see the generated example."""

    class Params(GenParams):
        template: str = Field("{text}", description="str.format over columns; Alpaca style is "
                                                    "'{instruction}\\n\\n{input}' (Taori et al. 2023)")
        output_column: str = Field("response", description="column receiving the teacher's answer")
        text_template: str | None = Field(None, description="rewrite `text` from columns incl. the answer, e.g. "
                                                            "'{text}\\n\\n{response}'; null keeps `text`")

    rewrites_text = True

    def setup(self, ctx: RunContext) -> None:
        check_template(self.params.template, where="prompt_template.template")
        if self.params.text_template:
            check_template(self.params.text_template, where="prompt_template.text_template")
        self.setup_teacher(ctx)

    def adds(self) -> dict[str, Column]:
        return {self.params.output_column: Column(pl.String, "the teacher's answer to the filled template",
                                                  "null when a template field was missing (the row is dropped)"),
                **provenance_columns()}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        prompts, missing = fill(p.template, batch)
        if missing:
            raise ConfigError(f"prompt_template: template fields {missing} are not columns ({batch.columns})")
        todo = [i for i, q in enumerate(prompts) if q is not None]
        answers: list[str | None] = [None] * batch.height
        salt = int(batch.get_column("__uid").min() or 0) if "__uid" in batch.columns and batch.height else 0
        for i, a in zip(todo, self.ask([prompts[i] for i in todo], salt=salt), strict=True):  # type: ignore[misc]
            answers[i] = a.strip()
        out = batch.with_columns(pl.Series(p.output_column, answers, dtype=pl.String),
                                 pl.Series("__missing_field", [q is None for q in prompts], dtype=pl.Boolean),
                                 **self.provenance(prompts, salt=salt))
        return out.with_columns((pl.col(p.output_column).fill_null("").str.strip_chars() == "")
                                .and_(~pl.col("__missing_field")).alias("__empty_response"))

    def rules(self) -> list[Rule]:
        return [Rule("missing_field", "__missing_field", "is_true"),
                Rule("empty_response", "__empty_response", "is_true")]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        kept = kept.drop("__missing_field", "__empty_response")
        t = self.params.text_template
        if t and kept.height:
            texts, missing = fill(t, kept)
            if missing:
                raise ConfigError(f"prompt_template.text_template fields {missing} are not columns")
            kept = kept.with_columns(pl.Series("text", texts, dtype=pl.String))
        return kept
