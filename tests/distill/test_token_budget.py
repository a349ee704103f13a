"""``optim.max_tokens``: training stops at the step that spends the token budget, going round the data as
often as needed, with the LR schedule planned over the estimated steps (the curate-then-distill ablation
compares arms at equal compute this way)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.distill.test_trainer import cfg, data, gpt2  # noqa: E402

from curate.distill.trainer import DistillTrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


def step_tokens(d, tr: DistillTrainer, steps: int) -> list[int]:
    """Non-padding tokens of each of the first ``steps`` optimizer steps, from the trainer's own order."""
    ga = tr.cfg.optim.grad_accum
    return [sum(len(d.seqs[i]) for j in range(ga) for i in tr.batch_indices(s * ga + j)) for s in range(steps)]


@pytest.mark.parametrize("budget", [1, 150, 700])
def test_stops_at_the_step_that_spends_the_budget(tmp_path, budget):
    d = data(12)  # 3 batches of 4 per epoch: 700 tokens need more than one epoch
    c = cfg(tmp_path, optim={"max_steps": None, "max_tokens": budget, "batch_size": 4})
    tr = DistillTrainer(c, gpt2(1, 16, seed=2), d, teacher=gpt2(1, 16, seed=1))
    summary = tr.train()
    per_step = step_tokens(d, tr, tr.step)
    cum = [sum(per_step[:i + 1]) for i in range(len(per_step))]
    want = next(i + 1 for i, c_ in enumerate(cum) if c_ >= budget)  # the first step reaching the budget
    assert tr.step == want
    assert summary["train_tokens"] == cum[-1] >= budget
    assert cum[-1] - per_step[-1] < budget  # one step fewer would not have spent it
    assert [r["tokens"] for r in tr.history] == per_step
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
