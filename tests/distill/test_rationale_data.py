"""distill.yaml rationale mode: each generated row becomes a label task and a rationale task."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.core.errors import ConfigError  # noqa: E402
from curate.distill.config import DataSpec, DistillConfig  # noqa: E402
from curate.distill.data import TASK_LABEL, TASK_RATIONALE, tokenize_records  # noqa: E402
from curate.distill.losses import LABEL_PREFIX, RATIONALE_PREFIX  # noqa: E402
from tests.conftest import shared_file  # noqa: E402


def _gsm_rows(n: int) -> pl.DataFrame:
    from curate.metrics.answers import extract_answer, gsm8k_label

    rows = [json.loads(x) for x in shared_file("instructions/gsm8k/train.jsonl").read_text().splitlines()[:n]]
    # the rationale step's columns, filled from the reference solutions
    return pl.DataFrame({"text": [r["question"] for r in rows],
                         "rationale": [r["answer"][:extract_answer(r["answer"])[1]].strip() for r in rows],
                         "gold_answer": [gsm8k_label(r["answer"]) for r in rows]})


def test_rationale_mode_two_tasks_with_prefixes():
    from tests.models.test_teacher import byte_tokenizer

    tok = byte_tokenizer()
    df = _gsm_rows(5).with_columns(pl.when(pl.int_range(pl.len()) == 4).then(None)
                                   .otherwise(pl.col("rationale")).alias("rationale"))
    spec = DataSpec(train=["x"], mode="rationale", max_len=4096)
    data = tokenize_records(df, tok, spec)
    assert data.task == [TASK_LABEL, TASK_RATIONALE] * 4 + [TASK_LABEL]  # row 5 lacks a rationale
    first = tok.decode(data.seqs[0][:data.n_prompt[0]])
    assert first.startswith(LABEL_PREFIX) and df["text"][0] in first
    assert tok.decode(data.seqs[0][data.n_prompt[0]:]).strip().startswith(df["gold_answer"][0])
    assert tok.decode(data.seqs[1][:data.n_prompt[1]]).startswith(RATIONALE_PREFIX)
    assert tok.decode(data.seqs[1][data.n_prompt[1]:]).strip().startswith(df["rationale"][0][:20])
    sub = data.subset([1, 2])
    assert sub.task == [TASK_RATIONALE, TASK_LABEL]
    plain = tokenize_records(df.rename({"gold_answer": "response"}).select("text", "response"), tok,
                             DataSpec(train=["x"], prompt_field="text", response_field="response", max_len=4096))
    assert plain.task == [] and plain.fingerprint() != data.fingerprint()


def test_rationale_mode_config(tmp_path):
    f = tmp_path / "r.jsonl"
    _gsm_rows(3).write_ndjson(f)
    y = tmp_path / "distill.yaml"
    y.write_text(f"teacher: {{path: {tmp_path}}}\nstudent: {{from_config: {{base: teacher}}}}\n"
                 f"data: {{train: [{f.name}], mode: rationale}}\nloss: {{rationale_weight: 0.3}}\noutput_dir: out\n")
    cfg = DistillConfig.from_yaml(y)
    assert cfg.data.mode == "rationale" and cfg.loss.rationale_weight == 0.3
    with pytest.raises(ValidationError):
        DataSpec(train=["x"], mode="rationale", prompt_field="a", response_field="b")
    with pytest.raises(ConfigError):
        tokenize_records(pl.DataFrame({"text": ["q"]}), None, DataSpec(train=["x"], mode="rationale"))


def test_trainer_weights_label_and_rationale_task_means(tmp_path):
    """Gradient of a rationale-mode step == gradient of w*mean(label tokens) + (1-w)*mean(rationale tokens)."""
    import torch

    from curate.distill.data import TokenData
    from curate.distill.trainer import DistillTrainer, _task_weights
    from tests.distill.test_trainer import cfg, data, gpt2, reference_loss

    base = data(4)
    d = TokenData(base.seqs, base.n_prompt, [TASK_LABEL, TASK_RATIONALE, TASK_LABEL, TASK_RATIONALE])
    w = 0.3
    teacher, student, ref_student = gpt2(2, 32, seed=1), gpt2(1, 16, seed=2), gpt2(1, 16, seed=2)
    c = cfg(tmp_path, loss={"name": "forward_kl", "alpha": 0.5, "rationale_weight": w})
    tr = DistillTrainer(c, student, d, teacher=teacher)
    b = tr._batch([0, 1, 2, 3])
    n_total = int((b["labels"][:, 1:] != -100).sum())
    _task_weights([b], w)  # what train_step does for two-task data
    tr._micro(b, n_total)
    lab_rows, rat_rows = [0, 2], [1, 3]
    sub = lambda rows: {k: v[rows] for k, v in b.items() if k in ("input_ids", "attention_mask", "labels")}  # noqa: E731
    ref = w * reference_loss(ref_student, teacher, sub(lab_rows), 0.5, 1.0) \
        + (1 - w) * reference_loss(ref_student, teacher, sub(rat_rows), 0.5, 1.0)
    ref.backward()
    for (name, p), (_, q) in zip(student.named_parameters(), ref_student.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
    # and it is not the plain token mean the trainer used before rationale mode
    plain = gpt2(1, 16, seed=2)
    reference_loss(plain, teacher, sub([0, 1, 2, 3]), 0.5, 1.0).backward()
    assert not all(torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4)
                   for p, q in zip(student.parameters(), plain.parameters()))
