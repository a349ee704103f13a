"""End-to-end learning test (distillation.md C4/C5): a char-level teacher trained from config on
tinyshakespeare, then a 7x smaller student trained for the same steps twice -- with forward-KL KD
and on hard labels alone. KD must end closer to the teacher on held-out text (lower KL, higher
top-1 agreement) without a worse held-out loss. Teacher, students and evaluation all go through
curate's own trainer (``DistillTrainer``) and metrics (``evaluate_models``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from curate.distill.config import DistillConfig  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.evaluate import evaluate_models  # noqa: E402
from curate.distill.trainer import DistillTrainer  # noqa: E402

BLOCK = 64
STEPS = 200


def make(vocab: int, layers: int, heads: int, embd: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=BLOCK + 1, n_embd=embd, n_layer=layers,
                                      n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def config(out, loss: dict, seed: int) -> DistillConfig:
    return DistillConfig.model_validate(dict(
        teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
        data={"train": ["tinyshakespeare.txt"]}, output_dir=str(out), loss=loss, seed=seed, progress=False,
        plot=False, optim={"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1, "warmup_steps": 30,
                           "batch_size": 12, "max_steps": STEPS, "clip": 1.0}))


def test_kd_beats_hard_labels_on_held_out_kl(shared_data, tmp_path, one_thread):
    text = (shared_data / "books" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = [stoi[c] for c in text]
    n = int(0.9 * len(ids))
    train = TokenData.from_blocks(ids[:n], BLOCK + 1)
    held = TokenData.from_blocks(ids[n:], BLOCK + 1).subset(range(0, 1600, 25))  # 64 spread-out blocks
    V = len(chars)

    teacher = make(V, 4, 4, 128, seed=0)
    DistillTrainer(config(tmp_path / "t", {"name": "ce"}, 0), teacher, train).train()
    teacher.eval()

    res = {}
    for kind, loss in (("ce", {"name": "ce"}), ("kd", {"name": "forward_kl", "alpha": 0.5, "temperature": 1.0})):
        student = make(V, 2, 2, 64, seed=1)
        DistillTrainer(config(tmp_path / kind, loss, 1), student, train,
                       teacher=teacher if kind == "kd" else None).train()
        res[kind] = evaluate_models(student, teacher, held, device=torch.device("cpu"), vocab=V, batch_size=16)
    t_nll = res["kd"]["teacher"]["nll"]
    ce, kd = res["ce"], res["kd"]
    msg = {k: {m: r[m] for m in ("kl_teacher_student", "top1_agreement")} | {"nll": r["student"]["nll"]}
           for k, r in res.items()} | {"teacher_nll": t_nll}
    print(msg)
    assert t_nll < ce["student"]["nll"], msg  # the teacher is better than the small student
    assert kd["kl_teacher_student"] < ce["kl_teacher_student"] - 0.005, msg
    assert kd["top1_agreement"] > ce["top1_agreement"], msg
    assert kd["student"]["nll"] <= ce["student"]["nll"] + 0.02, msg
    assert kd["retention_ppl"] >= ce["retention_ppl"] - 0.01, msg
