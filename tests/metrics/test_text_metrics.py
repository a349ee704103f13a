"""Text metrics against their reference packages (rouge-score, sacrebleu) and published values."""

from __future__ import annotations

import json
import random

import pytest

from curate.metrics.answers import extract_answer, normalize_number
from curate.metrics.text import (
    bleu,
    distinct_n,
    exact_match,
    lcs_length,
    rouge_l,
    self_bleu,
    self_bleu_scores,
    token_f1,
)
from tests.conftest import shared_file


def _dolly(n: int) -> list[str]:
    path = shared_file("instructions/databricks-dolly-15k.en.jsonl")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["response"])
            if len(out) >= n:
                break
    return out


def test_rouge_l_equals_rouge_score_on_real_text():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    texts = _dolly(240)
    rng = random.Random(0)
    pairs = [(texts[i], texts[i + 1]) for i in range(0, 200, 2)]
    # near copies too: a real response with a few words dropped, so scores span the whole range
    for t in texts[200:240]:
        words = t.split()
        pairs.append((" ".join(w for w in words if rng.random() > 0.2), t))
    diffs = [abs(rouge_l(p, r) - scorer.score(r, p)["rougeL"].fmeasure) for p, r in pairs]
    assert max(diffs) < 1e-9
    assert sum(rouge_l(p, r) > 0.7 for p, r in pairs) >= 20  # the near copies are really near


def test_lcs_edge_cases():
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4  # CLRS's textbook example
    assert rouge_l("", "anything") == 0.0


def test_gsm8k_answers_extract_from_the_reference_format():
    path = shared_file("instructions/gsm8k/test.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    for r in rows:
        tail = r["answer"].split("####")[-1].strip()
        assert extract_answer(r["answer"])[0] == normalize_number(tail)
    assert normalize_number("$1,234.50") == "1234.5"
    assert normalize_number("7.0") == "7"
    assert extract_answer("so she makes $18.")[0] == "18"
    assert extract_answer("no digits here")[0] is None


def test_numeric_exact_match_reproduces_openai_correctness_labels():
    """example_model_solutions.jsonl carries OpenAI's own is_correct label per model solution."""
    path = shared_file("instructions/gsm8k/example_model_solutions.jsonl")
    preds, refs, labels = [], [], []
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        for v in r.values():
            if isinstance(v, dict) and "solution" in v:
                preds.append(v["solution"])
                refs.append(r["ground_truth"])
                labels.append(bool(v["is_correct"]))
    ours = [exact_match([p], [g], numeric=True) == 1.0 for p, g in zip(preds, refs)]
    agree = sum(a == b for a, b in zip(ours, labels)) / len(labels)
    assert len(labels) >= 40 and agree >= 0.95


def test_squad_normalisation_em_and_f1():
    assert exact_match(["The Cat!"], ["cat"]) == 1.0
    assert exact_match(["a dog"], ["cat"]) == 0.0
    # normalised: [quick, brown, fox] vs [quick, fox, jumps]: 2 common, P = R = 2/3
    assert token_f1(["the quick brown fox"], ["quick fox jumps"]) == pytest.approx(2 / 3)
    assert token_f1(["", "x"], ["", "y"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_bleu_matches_sacrebleu_readme_example():
    pytest.importorskip("sacrebleu")
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    assert bleu(hyps, refs) == pytest.approx(48.53, abs=0.01)  # the value sacrebleu's README prints
    assert bleu(hyps, hyps) == pytest.approx(100.0)


def test_distinct_n_toy_values():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([], 2) == 0.0


def test_self_bleu_is_high_for_copies_and_lower_for_real_responses():
    pytest.importorskip("sacrebleu")
    texts = _dolly(40)
    same = [texts[0]] * 5
    assert self_bleu(same) == pytest.approx(100.0)
    assert self_bleu(texts) < 30
    assert self_bleu(texts, max_texts=10) == self_bleu(texts, max_texts=10)  # seeded sample
    import sacrebleu

    lowered = [t.lower() for t in texts[:12]]
    ref = [sacrebleu.sentence_bleu(h, lowered[:i] + lowered[i + 1:], tokenize="none").score
           for i, h in enumerate(lowered)]
    assert self_bleu_scores(texts[:12]) == pytest.approx(ref, abs=1e-6)
