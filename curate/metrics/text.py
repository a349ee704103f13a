"""Text-level metrics for generated and distilled outputs: answers, overlap and diversity.

Each function works on plain lists of strings and returns plain floats, so reports and tests can use
them without a model:

* :func:`exact_match` and :func:`token_f1`: SQuAD v1.1's answer normalisation (lower case, no punctuation,
  no articles ``a/an/the``, single spaces; Rajpurkar et al. 2016, the official ``evaluate-v1.1.py``), or
  numeric comparison of the final answers :mod:`curate.metrics.answers` extracts (GSM8K's ``#### n``,
  "the answer is n", the last number) with ``numeric=True``.
* :func:`bleu`: corpus BLEU through ``sacrebleu`` (Post 2018), the reference implementation, with its
  defaults (13a tokenisation, exponential smoothing off for corpus BLEU).
* :func:`rouge_l`: ROUGE-L F-measure (Lin 2004) with ``rouge-score``'s tokenisation (lower case,
  non-alphanumerics to spaces), computed by a longest-common-subsequence kernel; equals
  ``rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred).fmeasure``.
* :func:`distinct_n`: distinct n-grams / all n-grams over a corpus (Li et al. 2016, "distinct-1/2").
* :func:`self_bleu` / :func:`self_bleu_scores`: BLEU of each text against all the others as references
  (Zhu et al. 2018, Texygen); lower means a more diverse set. Each score equals
  ``sacrebleu.sentence_bleu(text, others)`` (exponential smoothing, effective order) on lower-cased
  whitespace tokens, computed from per-n-gram maxima over the other texts in time linear in the corpus
  instead of n sentence-BLEU calls against n-1 references.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from curate.metrics.answers import answers_match, extract_answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_ROUGE_TOKEN = re.compile(r"[^a-z0-9]+")


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
        hits = [answers_match(extract_answer(a)[0], extract_answer(b)[0]) for a, b in zip(predictions, references)]
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


def rouge_l_tokens(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) of two token lists (0 when either is empty)."""
    lcs = lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(prediction), lcs / len(reference)
    return 2 * prec * rec / (prec + rec)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) of one prediction against one reference, rouge-score tokenisation."""
    return rouge_l_tokens(rouge_tokens(prediction), rouge_tokens(reference))


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams divided by all n-grams over the corpus (whitespace tokens, lower-cased)."""
    total, seen = 0, set()
    for t in texts:
        toks = t.lower().split()
        grams = list(zip(*(toks[i:] for i in range(n))))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def _bleu_from_stats(correct: list[int], total: list[int], sys_len: int, ref_len: int, max_n: int) -> float:
    """sacreBLEU's ``compute_bleu`` with ``smooth_method='exp'`` and effective order, in 0..100."""
    if not any(correct):
        return 0.0
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    precisions = [0.0] * max_n
    smooth, eff = 1.0, max_n
    for n in range(1, max_n + 1):
        if total[n - 1] == 0:
            break
        eff = n
        if correct[n - 1] == 0:
            smooth *= 2
            precisions[n - 1] = 100.0 / (smooth * total[n - 1])
        else:
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1]
    logs = [math.log(p) if p > 0 else -9999999999 for p in precisions[:eff]]
    return bp * math.exp(sum(logs) / eff)


def _closest_other_len(sorted_lens: np.ndarray, own: int) -> int:
    """Closest reference length among the other texts (ties: the shorter), sacrebleu's rule."""
    i = int(np.searchsorted(sorted_lens, own))
    others = np.delete(sorted_lens, i) if i < len(sorted_lens) and sorted_lens[i] == own else sorted_lens
    j = int(np.searchsorted(others, own))
    best = None
    for k in (j - 1, j):
        if 0 <= k < len(others):
            v = int(others[k])
            if best is None or abs(own - v) < abs(own - best) or (abs(own - v) == abs(own - best) and v < best):
                best = v
    return best if best is not None else 0


def self_bleu_scores(texts: Sequence[str], max_n: int = 4) -> list[float]:
    """Sentence BLEU (0-100) of each text against all the others (see the module docstring)."""
    toks = [t.lower().split() for t in texts]
    if len(toks) < 2:
        return [0.0] * len(toks)
    counts = [[Counter(tuple(s[i:i + n]) for i in range(len(s) - n + 1)) for n in range(1, max_n + 1)] for s in toks]
    # per n-gram: (highest count, its text, second highest) gives the maximum over the OTHER texts in O(1)
    top: list[dict[tuple[str, ...], list[int]]] = [defaultdict(lambda: [0, -1, 0]) for _ in range(max_n)]
    for d, per_n in enumerate(counts):
        for n, c in enumerate(per_n):
            for g, k in c.items():
                e = top[n][g]
                if k > e[0]:
                    e[2], e[0], e[1] = e[0], k, d
                elif k > e[2]:
                    e[2] = k
    lens = np.array(sorted(len(s) for s in toks))
    out = []
    for d, s in enumerate(toks):
        correct, total = [], []
        for n in range(max_n):
            hit = 0
            for g, k in counts[d][n].items():
                e = top[n][g]
                hit += min(k, e[2] if e[1] == d else e[0])
            correct.append(hit)
            total.append(max(len(s) - n, 0))
        out.append(_bleu_from_stats(correct, total, len(s), _closest_other_len(lens, len(s)), max_n))
    return out


def self_bleu(texts: Sequence[str], *, max_texts: int | None = None, seed: int = 0) -> float:
    """Mean Self-BLEU (0-100) of a set; with ``max_texts``, of a seeded sample of that many texts."""
    items = list(texts)
    if max_texts is not None and len(items) > max_texts:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), size=max_texts, replace=False))]
    if len(items) < 2:
        return float("nan")
    return float(np.mean(self_bleu_scores(items)))


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")
