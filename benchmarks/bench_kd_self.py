"""Self-distillation, co-training and sequence-level KD side by side (issue 13 items 2 and 6, for item 9).

Same teacher, student architecture, data and step budget per student; every arm goes through curate's own
``DistillTrainer`` (its hooks/signals are exactly what ``distill.yaml`` builds) and ``evaluate_models``.

* data: tinyshakespeare (``../shared/data/books``), character level, blocks of 65; 90 % train, held-out =
  64 spread-out blocks of the last 10 %;
* teacher: GPT-2 4 layers x 128, trained ``--teacher-steps`` on the labels;
* students: GPT-2 2 layers x 64 (7x smaller), ``--steps`` each, batch 12, same init (seed 1):
  ``ce`` (labels only), ``kd`` (forward KL + 0.5 CE from the teacher: the single-teacher path),
  ``ema`` (its own EMA copy as teacher, no real teacher), ``born_again`` (round 1 = ce, round 2 from the
  same init taught by round 1; 2x the steps in total), ``mutual_copy`` (DML with a second student),
  ``mutual_teacher`` (co-training: the teacher copy also updates, lr / 10), ``seq_kd`` (teacher greedy
  continuations of the first 32 characters of ``steps x 12`` random blocks -- what the budget reads --,
  32 new characters, CE), ``seq_kd_word`` (the same
  plus forward-KL word KD, alpha 0.5).

Columns: held-out NLL / ppl, retention = teacher ppl / student ppl, top-1 agreement and mean token
KL(teacher || student) on the held-out blocks, training tokens/s of the student's steps (the teacher
forward, the EMA update and the peer's step included; seq_kd's one-off generation timed apart).

    python benchmarks/bench_kd_self.py                    # CPU, one thread, a few minutes
    python benchmarks/bench_kd_self.py --steps 300 --teacher-steps 400
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from curate.distill.config import DistillConfig, SeqKD  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.evaluate import evaluate_models  # noqa: E402
from curate.distill.self_distill import EMAHook, MutualHook, online_signal  # noqa: E402
from curate.distill.seq_kd import generate  # noqa: E402
from curate.distill.trainer import DistillTrainer  # noqa: E402

BLOCK = 64
DATA = ROOT.parent / "shared" / "data" / "books" / "tinyshakespeare.txt"


def make(vocab: int, layers: int, heads: int, embd: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=2 * BLOCK + 2, n_embd=embd, n_layer=layers,
                                      n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def config(out: Path, loss: dict, steps: int, lr: float = 1e-3) -> DistillConfig:
    return DistillConfig.model_validate(dict(
        teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
        data={"train": ["tinyshakespeare.txt"]}, output_dir=str(out), loss=loss, seed=1, progress=False,
        plot=False, optim={"lr": lr, "betas": (0.9, 0.99), "weight_decay": 0.1, "warmup_steps": 30,
                           "batch_size": 12, "max_steps": steps, "clip": 1.0}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated arms")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "kd_self"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = [{c: i for i, c in enumerate(chars)}[c] for c in text]
    n = int(0.9 * len(ids))
    train = TokenData.from_blocks(ids[:n], BLOCK + 1)
    held = TokenData.from_blocks(ids[n:], BLOCK + 1).subset(range(0, 1600, 25))
    V = len(chars)
    t0 = time.perf_counter()
    teacher = make(V, 4, 4, 128, seed=0)
    DistillTrainer(config(out / "teacher", {"name": "ce"}, a.teacher_steps), teacher, train).train()
    teacher.eval()
    print(f"teacher trained in {time.perf_counter() - t0:.0f} s", flush=True)
    kd = {"name": "forward_kl", "alpha": 0.5, "temperature": 1.0}
    student = lambda: make(V, 2, 2, 64, seed=1)  # noqa: E731 -- the same init for every arm

    def run(name: str, loss: dict, data: TokenData = train, **kw) -> tuple[GPT2LMHeadModel, dict]:
        s = kw.pop("model", None) or student()
        tr = DistillTrainer(config(out / name, loss, a.steps), s, data, **kw)
        summ = tr.train()
        return s, summ

    rows = []
    arms = a.only.split(",") if a.only else ["ce", "kd", "ema", "born_again", "mutual_copy", "mutual_teacher",
                                            "seq_kd", "seq_kd_word"]
    for arm in arms:
        t1 = time.perf_counter()
        extra: dict = {}
        if arm == "ce":
            s, summ = run(arm, {"name": "ce"})
        elif arm == "kd":
            s, summ = run(arm, kd, teacher=teacher)
        elif arm == "ema":
            s = student()
            ema = copy.deepcopy(s)
            s, summ = run(arm, kd, model=s, teacher=ema, hooks=[EMAHook(ema, decay=0.99, warmup=True)])
        elif arm == "born_again":
            r1, s1 = run(arm + "_1", {"name": "ce"})
            s, summ = run(arm + "_2", kd, teacher=r1)
            summ["train_s"] += s1["train_s"]
            summ["train_tokens"] += s1["train_tokens"]
        elif arm.startswith("mutual"):
            s = student()
            peer = make(V, 2, 2, 64, seed=2) if arm == "mutual_copy" else copy.deepcopy(teacher).train()
            for w in peer.parameters():  # the kd arm's trainer froze the teacher
                w.requires_grad_(True)
            c = config(out / arm, kd, a.steps, lr=1e-3 if arm == "mutual_copy" else 1e-4)
            p_tr = DistillTrainer(c, peer, train, signal=online_signal(s, c, V))
            s, summ = run(arm, kd, model=s, signal=online_signal(peer, c, V), hooks=[MutualHook(p_tr)])
            extra["peer"] = evaluate_models(peer, teacher, held, device=torch.device("cpu"), vocab=V,
                                            batch_size=16)["student"]["nll"]
        else:  # seq_kd: the teacher's greedy continuation of each block's first 32 characters
            sk = SeqKD(decoding="greedy", max_new_tokens=32)
            g0 = time.perf_counter()
            # as many blocks as the step budget reads (each arm sees each block at most once)
            g = torch.Generator().manual_seed(3)
            pick = torch.randperm(len(train), generator=g)[: a.steps * 12].tolist()
            prompts = [train.seqs[i][:32] for i in pick]
            answers: list[list[int]] = []
            for j in range(0, len(prompts), 256):
                answers += generate(teacher, prompts[j:j + 256], sk, stops=[], pad_id=0, device=torch.device("cpu"))
            extra["generate_s"] = time.perf_counter() - g0
            data = TokenData([q + g for q, g in zip(prompts, answers, strict=True)], [len(q) for q in prompts])
            s, summ = run(arm, {"name": "ce"} if arm == "seq_kd" else kd, data=data,
                          teacher=None if arm == "seq_kd" else teacher)
        ev = evaluate_models(s, teacher, held, device=torch.device("cpu"), vocab=V, batch_size=16)
        row = {"arm": arm, "nll": ev["student"]["nll"], "ppl": ev["student"]["ppl"], "retention_ppl": ev["retention_ppl"],
               "top1_agreement": ev["top1_agreement"], "kl_teacher_student": ev["kl_teacher_student"],
               "train_tokens_per_s": summ["train_tokens"] / summ["train_s"], "train_s": summ["train_s"],
               "teacher_nll": ev["teacher"]["nll"], "wall_s": time.perf_counter() - t1, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r["train_tokens_per_s"] for r in rows if r["arm"] == "kd"), None)
    print(f"\nteacher held-out NLL {rows[0]['teacher_nll']:.4f}; student steps {a.steps}, teacher steps "
          f"{a.teacher_steps}\n")
    print("| arm | held-out NLL | ppl | retention | top-1 agr. | KL(T||S) | train tok/s | vs kd |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = f"{r['train_tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['arm']} | {r['nll']:.4f} | {r['ppl']:.3f} | {r['retention_ppl']:.3f} | {r['top1_agreement']:.3f} | "
              f"{r['kl_teacher_student']:.4f} | {r['train_tokens_per_s']:.0f} | {rel} |")
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
