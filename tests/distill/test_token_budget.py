"""``optim.max_tokens``: training stops at the sequence that spends the token budget, going round the data as
often as needed, with the LR schedule planned over the estimated steps (the curate-then-distill ablation
compares arms at equal compute this way)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.distill.trainer import DistillTrainer  # noqa: E402
from tests.distill.test_trainer import cfg, data, gpt2  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


def sequence_order(tr: DistillTrainer, steps: int) -> list[list[int]]:
    """The example indices each of the first ``steps`` optimizer steps would train on without a budget."""
    ga = tr.cfg.optim.grad_accum
    return [[i for j in range(ga) for i in tr.batch_indices(s * ga + j)] for s in range(steps)]


@pytest.mark.parametrize("budget", [1, 150, 700])
def test_stops_at_the_sequence_that_spends_the_budget(tmp_path, budget):
    d = data(12)  # 3 batches of 4 per epoch: 700 tokens need more than one epoch
    c = cfg(tmp_path, optim={"max_steps": None, "max_tokens": budget, "batch_size": 4})
    tr = DistillTrainer(c, gpt2(1, 16, seed=2), d, teacher=gpt2(1, 16, seed=1))
    summary = tr.train()
    # the reference: walk the unbudgeted order sequence by sequence until the budget is spent
    want_steps, spent = [], 0
    for step in sequence_order(tr, 100):
        took = []
        for i in step:
            if spent >= budget:
                break
            took.append(len(d.seqs[i]))
            spent += took[-1]
        if not took:
            break
        want_steps.append(sum(took))
    assert [r["tokens"] for r in tr.history] == want_steps
    assert summary["train_tokens"] == spent >= budget
    assert spent - budget < max(len(s) for s in d.seqs)  # over by less than one sequence
    if budget == 700:
        assert tr.step > tr.batches_per_epoch  # went round the data again
    mean_step = d.n_tokens() / len(d) * 4
    assert tr.total_steps == max(1, math.ceil(budget / mean_step))  # what the LR schedule is planned over


def test_max_steps_still_caps_a_budget(tmp_path):
    d = data(12)
    c = cfg(tmp_path, optim={"max_steps": 2, "max_tokens": 10_000, "batch_size": 4})
    tr = DistillTrainer(c, gpt2(1, 16, seed=2), d, teacher=gpt2(1, 16, seed=1))
    tr.train()
    assert tr.step == 2 and tr.total_steps == 2


def test_budget_resumes_where_it_stopped(tmp_path):
    d = data(12)
    kw = dict(optim={"max_steps": None, "max_tokens": 400, "batch_size": 4})
    straight = DistillTrainer(cfg(tmp_path / "a", **kw), gpt2(1, 16, seed=2), d, teacher=gpt2(1, 16, seed=1))
    straight.train()
    c = cfg(tmp_path / "b", **kw)
    first = DistillTrainer(c, gpt2(1, 16, seed=2), d, teacher=gpt2(1, 16, seed=1))
    first.train(max_steps=1)
    again = DistillTrainer(c, gpt2(1, 16, seed=5), d, teacher=gpt2(1, 16, seed=1))
    again.train(resume=True)
    assert again.step == straight.step and again.tokens_seen == straight.tokens_seen
    assert [r["loss"] for r in again.history] == pytest.approx([r["loss"] for r in straight.history], rel=1e-6)
