"""Text-level metrics for generated and distilled outputs: answers, overlap and diversity.

Each function works on plain lists of strings and returns plain floats, so reports and tests can use
them without a model:

* :func:`extract_answer` / :func:`normalize_number`: the final answer of a GSM8K-style solution
  (``#### 42``, else the last number), with commas, ``$``, ``%`` and trailing ``.0`` removed.
* :func:`exact_match` and :func:`token_f1`: SQuAD v1.1's answer normalisation (lower case, no punctuation,
  no articles ``a/an/the``, single spaces; Rajpurkar et al. 2016, the official ``evaluate-v1.1.py``), or
  numeric comparison of extracted answers with ``numeric=True``.
* :func:`bleu`: corpus BLEU through ``sacrebleu`` (Post 2018), the reference implementation, with its
  defaults (13a tokenisation, exponential smoothing off for corpus BLEU).
* :func:`rouge_l`: ROUGE-L F-measure (Lin 2004) with ``rouge-score``'s tokenisation (lower case,
  non-alphanumerics to spaces), computed by a longest-common-subsequence kernel; equals
  ``rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred).fmeasure``.
* :func:`distinct_n`: distinct n-grams / all n-grams over a corpus (Li et al. 2016, "distinct-1/2").
* :func:`self_bleu`: mean BLEU of each text against all the others as references (Zhu et al. 2018,
  Texygen); lower means a more diverse set. Sentence BLEU via ``sacrebleu`` with exponential smoothing.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?%?|-?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_ROUGE_TOKEN = re.compile(r"[^a-z0-9]+")


def normalize_number(text: str) -> str:
    """``"$1,234.50"`` -> ``"1234.5"``; ``"7.0"`` -> ``"7"``; non-numbers are returned stripped."""
    s = text.strip().replace(",", "").replace("$", "").rstrip("%").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return text.strip()
    if v.is_integer():
        return str(int(v))
    return repr(v).rstrip("0").rstrip(".") if "e" not in repr(v) else repr(v)


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: the number after ``####`` (GSM8K's format), else the last number
    in the text; normalised by :func:`normalize_number`. None when the text holds no number."""
    m = _FINAL.search(text)
    if m:
        return normalize_number(m.group(1))
    nums = _NUMBER.findall(text)
    return normalize_number(nums[-1]) if nums else None


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    s = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(predictions: Sequence[str], references: Sequence[str], *, numeric: bool = False) -> float:
    """Fraction of predictions equal to their reference after normalisation (``numeric``: compare the
    answers :func:`extract_answer` finds; a prediction without a number never matches)."""
    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    if numeric:
        hits = [(p := extract_answer(a)) is not None and p == extract_answer(b) for a, b in zip(predictions, references)]
    else:
        hits = [normalize_answer(a) == normalize_answer(b) for a, b in zip(predictions, references)]
    return float(np.mean(hits))


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean SQuAD token F1 (bag-of-tokens overlap of normalised answers)."""
    _same_length(predictions, references)
    if not predictions:
        return float("nan")
    scores = []
    for p, r in zip(predictions, references):
        pt, rt = normalize_answer(p).split(), normalize_answer(r).split()
        common = sum((Counter(pt) & Counter(rt)).values())
        if not pt or not rt:
            scores.append(float(pt == rt))
            continue
        if common == 0:
            scores.append(0.0)
            continue
        prec, rec = common / len(pt), common / len(rt)
        scores.append(2 * prec * rec / (prec + rec))
    return float(np.mean(scores))


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's defaults; ``references`` is one reference per prediction or a
    list of reference streams (each as long as ``predictions``)."""
    import sacrebleu

    refs = [list(references)] if references and isinstance(references[0], str) else [list(r) for r in references]
    return float(sacrebleu.corpus_bleu(list(predictions), refs).score)


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokeniser: lower case, every run of non-[a-z0-9] is a separator."""
    return [t for t in _ROUGE_TOKEN.split(text.lower()) if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (row-vectorised dynamic program)."""
    if not a or not b:
        return 0
    vocab: dict[str, int] = {}
    ai = np.array([vocab.setdefault(t, len(vocab)) for t in a], dtype=np.int64)
    bi = np.array([vocab.setdefault(t, len(vocab)) for t in b], dtype=np.int64)
    prev = np.zeros(len(bi) + 1, dtype=np.int32)
    for x in ai:
        match = np.concatenate(([0], np.where(bi == x, prev[:-1] + 1, 0)))
        # row[j] = max(match[j], row[j-1], prev[j]): a running maximum completes the recurrence
        prev = np.maximum.accumulate(np.maximum(match, prev))
    return int(prev[-1])


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) of one prediction against one reference, rouge-score tokenisation."""
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams divided by all n-grams over the corpus (whitespace tokens, lower-cased)."""
    total, seen = 0, set()
    for t in texts:
        toks = t.lower().split()
        grams = list(zip(*(toks[i:] for i in range(n))))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def self_bleu(texts: Sequence[str], *, max_texts: int | None = 500, seed: int = 0) -> float:
    """Mean sentence BLEU (0-100) of each text against all the other texts (Texygen's Self-BLEU).

    O(n^2) in the number of texts: with more than ``max_texts`` a seeded sample of that many is scored
    (each still against every other text of the sample)."""
    import sacrebleu

    items = list(texts)
    if max_texts is not None and len(items) > max_texts:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), size=max_texts, replace=False))]
    if len(items) < 2:
        return float("nan")
    scores = [sacrebleu.sentence_bleu(h, items[:i] + items[i + 1:]).score for i, h in enumerate(items)]
    return float(np.mean(scores))


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")
