"""Uncertainty-aware KD side by side on one CPU-sized setup (issue 13 item 3).

A char-level GPT-2 teacher (4 layers, 128 wide) is trained on hard labels on tinyshakespeare
(../shared/data/books), then the same 2-layer, 64-wide student (same seed) is distilled for the same steps
with forward KL + 0.5 CE, once per option: plain KD, ``token_weighting: teacher_entropy``,
``teacher_exp_entropy``, and ``teacher_prior: label_smoothing``. Printed per arm: held-out NLL, KL(teacher
|| student), top-1 agreement, retention (teacher ppl / student ppl) and training tokens/s, as a markdown
table. Online teacher (the weights cost one extra teacher-head pass per micro-batch).

    PYTHONPATH=. python benchmarks/bench_kd_uncert.py [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from curate.distill.config import DistillConfig
from curate.distill.data import TokenData
from curate.distill.evaluate import evaluate_models
from curate.distill.trainer import DistillTrainer

BLOCK = 64
DATA = Path(os.environ.get("CURATE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ARMS = {"kd": {}, "teacher_entropy": {"token_weighting": "teacher_entropy"},
        "teacher_exp_entropy": {"token_weighting": "teacher_exp_entropy"},
        "label_prior": {"teacher_prior": "label_smoothing"}}


def _model(vocab: int, layers: int, embd: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=BLOCK + 1, n_embd=embd, n_layer=layers,
                                      n_head=layers, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def _cfg(out: Path, loss: dict, seed: int, steps: int) -> DistillConfig:
    return DistillConfig.model_validate(dict(
        teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
        data={"train": ["tinyshakespeare.txt"]}, output_dir=str(out), loss=loss, seed=seed, progress=False,
        plot=False, optim={"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1, "warmup_steps": 30,
                           "batch_size": 12, "max_steps": steps, "clip": 1.0}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    text = (DATA / "books" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = [stoi[c] for c in text]
    n = int(0.9 * len(ids))
    train = TokenData.from_blocks(ids[:n], BLOCK + 1)
    held = TokenData.from_blocks(ids[n:], BLOCK + 1).subset(range(0, 1600, 25))
    v = len(stoi)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        teacher = _model(v, 4, 128, 0)
        DistillTrainer(_cfg(Path(tmp) / "t", {"name": "ce"}, 0, a.steps), teacher, train).train()
        teacher.eval()
        print(f"teacher trained in {time.perf_counter() - t0:.0f} s")
        rows = []
        for arm, extra in ARMS.items():
            student = _model(v, 2, 64, 1)
            loss = {"name": "forward_kl", "alpha": 0.5} | extra
            summ = DistillTrainer(_cfg(Path(tmp) / arm, loss, 1, a.steps), student, train, teacher=teacher).train()
            ev = evaluate_models(student, teacher, held, device=torch.device("cpu"), vocab=v, batch_size=16)
            rows.append((arm, ev["student"]["nll"], ev["kl_teacher_student"], ev["top1_agreement"],
                         ev["retention_ppl"], summ["train_tokens_per_s"]))
        print(f"\nteacher held-out NLL {ev['teacher']['nll']:.4f}; {a.steps} steps x 12 x {BLOCK} chars per arm\n")
        print("| arm | held-out NLL | KL(teacher, student) | top-1 agreement | retention | train tok/s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.0f} |")


if __name__ == "__main__":
    main()
