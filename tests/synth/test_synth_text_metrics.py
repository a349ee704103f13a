"""ROUGE-L and its candidate index, answer checking, judge parsing and Self-BLEU on real text, against the
reference packages (rouge-score, sacrebleu) and brute force."""

from __future__ import annotations

import json
import random

import pytest

from curate.metrics.answers import answers_match, extract_answer, gsm8k_label, normalize_number
from curate.metrics.text import rouge_l
from curate.synth._judge_parse import parse_score
from curate.synth._rouge import RougeIndex
from curate.synth.report import distinct_n, self_bleu_scores
from tests.conftest import shared_file


def _seed_instructions() -> list[str]:
    f = shared_file("instructions/self_instruct_seed_tasks.jsonl")
    return [json.loads(line)["instruction"] for line in f.read_text().splitlines() if line.strip()]


def _variants(texts: list[str], n: int, rng: random.Random) -> list[str]:
    """Near copies (word drops/swaps) and unrelated texts: queries above and below the 0.7 threshold."""
    out = []
    for _ in range(n):
        w = rng.choice(texts).split()
        for _ in range(rng.randint(0, 4)):
            i = rng.randrange(len(w))
            if rng.random() < 0.5 and len(w) > 2:
                del w[i]
            else:
                w[i] = rng.choice(rng.choice(texts).split())
        out.append(" ".join(w))
    return out


def test_rouge_l_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = _seed_instructions()
    rng = random.Random(0)
    pairs = [(rng.choice(seeds), rng.choice(seeds)) for _ in range(150)]
    pairs += list(zip(_variants(seeds, 150, rng), seeds[:150]))
    pairs += [("", "a b"), ("Café au lait?!", "cafe AU lait"), ("x", "x")]
    for a, b in pairs:
        assert rouge_l(a, b) == pytest.approx(scorer.score(b, a)["rougeL"].fmeasure, abs=1e-12), (a, b)


def test_rouge_index_equals_brute_force():
    seeds = _seed_instructions()
    rng = random.Random(1)
    index = RougeIndex(seeds)
    queries = _variants(seeds, 120, rng) + rng.sample(seeds, 10)
    above = 0
    for q in queries:
        brute = max(rouge_l(q, s) for s in seeds)
        got, _ = index.max_score(q, 0.7)
        assert (got > 0.7) == (brute > 0.7), q
        if brute > 0.7:
            above += 1
            assert got == pytest.approx(brute)
    assert 20 < above < len(queries)  # both sides of the threshold are exercised
    # the shortlist is what saves work: far fewer exact LCS runs than len(queries) * len(seeds)
    assert index.exact_comparisons < 0.1 * len(queries) * len(seeds)
    # incremental adds are indexed too
    new = "Compose a limerick about a forgetful robot who loves tea."
    assert index.max_score(new, 0.7)[0] <= 0.7
    index.add(new)
    assert index.max_score(new + " Please.", 0.7)[0] > 0.7


def test_gsm8k_labels_and_model_solutions():
    rows = [json.loads(line) for line in shared_file("instructions/gsm8k/test.jsonl").read_text().splitlines()[:300]]
    labels = [gsm8k_label(r["answer"]) for r in rows]
    assert all(lab is not None for lab in labels)
    assert labels[0] == "18" and labels[1] == "3"
    # a reference solution's own answer agrees with its label
    assert all(answers_match(extract_answer(r["answer"])[0], lab) for r, lab in zip(rows, labels))
    # real model solutions with their published correctness flags
    sols = [json.loads(line) for line in
            shared_file("instructions/gsm8k/example_model_solutions.jsonl").read_text().splitlines()[:200]]
    agree = total = 0
    for s in sols:
        gold = normalize_number(s["ground_truth"].rsplit("A:", 1)[-1]) if "A:" in s["ground_truth"] \
            else gsm8k_label(s["ground_truth"])
        for v in s.values():
            if isinstance(v, dict) and "solution" in v:
                total += 1
                agree += answers_match(extract_answer(v["solution"])[0], gold) == bool(v["is_correct"])
    assert total > 100 and agree / total > 0.95


@pytest.mark.parametrize(("text", "want"), [
    ("1,234", "1234"), ("$18.00", "18"), ("18.", "18"), ("3/4", "0.75"), ("-5", "-5"), ("50%", "50"),
    ("abc", None), ("", None),
])
def test_normalize_number(text, want):
    assert normalize_number(text) == want


@pytest.mark.parametrize(("text", "want"), [
    ("Janet sells 9 eggs, 9 * 2 = 18.\nThe answer is $18.", "18"),
    ("So the total is 1,250 dollars.\n#### 1,250", "1250"),
    ("Thus \\boxed{42}.", "42"),
    ("Answer: 7.0", "7"),
    ("She has 3 apples and buys 4 more, so 7", "7"),
    ("no digits here", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text)[0] == want


JUDGE_TABLE = [
    ("Score: 7/10", 1, 10, 7.0, None),
    ("**8**\nThe response is accurate.", 1, 10, 8.0, None),
    ('```json\n{"score": 4, "reason": "ok"}\n```', 1, 6, 4.0, None),
    ('{"rating": "5/6"}', 1, 6, 5.0, None),
    ("Rating: 4\nRationale: mostly correct but verbose.", 1, 5, 4.0, None),
    ("I would give this response a 3 out of 5.", 1, 5, 3.0, None),
    ("[[6]]", 1, 10, 6.0, None),
    ("Quality: 9", 1, 6, None, "out_of_range"),
    ("The response is helpful and clear.", 1, 6, None, "no_number"),
    ("", 1, 6, None, "empty"),
    ("##Complexity: 2", 1, 6, 2.0, None),
    ("In 2023 the query would score 5.", 1, 6, 5.0, None),
]


@pytest.mark.parametrize(("text", "lo", "hi", "score", "reason"), JUDGE_TABLE)
def test_judge_parsing(text, lo, hi, score, reason):
    assert parse_score(text, lo, hi) == (score, reason)


def test_self_bleu_matches_sacrebleu_and_distinct_n():
    sacrebleu = pytest.importorskip("sacrebleu")
    texts = _seed_instructions()[:60] + _variants(_seed_instructions()[:20], 20, random.Random(2))
    mine = self_bleu_scores(texts)
    for i in range(0, len(texts), 7):
        refs = [t.lower() for j, t in enumerate(texts) if j != i]
        ref = sacrebleu.sentence_bleu(texts[i].lower(), refs, tokenize="none").score
        assert mine[i] == pytest.approx(ref, abs=1e-9)
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)


def test_report_never_overwrites_a_foreign_file(tmp_path):
    from curate.core.errors import CurateError
    from curate.synth.report import write_report

    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.jsonl").write_text('{"id": "a", "text": "hello world"}\n')
    work = tmp_path / "work"
    work.mkdir()
    j, m = write_report(out, work, embeddings=False)
    assert json.loads(j.read_text())["rows"] == 1
    write_report(out, work, embeddings=False)  # its own report is replaced
    m.write_text("my notes\n")
    with pytest.raises(CurateError):
        write_report(out, work, embeddings=False)
    assert m.read_text() == "my notes\n"
