"""Dataset distillation for text: gradient matching, distribution matching and SRe2L relabelling against a
random subset and a k-center coreset of the same size, on student quality (held-out KL to the teacher,
perplexity), through :func:`curate.distill.dataset_distill.run_dataset_distill`.

Setup (all trained here, CPU, one thread): tinyshakespeare (``../shared/data/books``) as 65-character
blocks, the first 90 % for training; a 4-layer, 128-wide char-level GPT-2 teacher trained on hard labels
for ``--teacher-steps`` (as ``tests/distill/test_kd_beats_ce.py``); a 1-layer, 32-wide student, the same
initialisation for every method. Every set has ``--size`` sequences drawn from (or learned against) a
seeded pool of ``--pool`` training blocks; every student trains ``--steps`` AdamW steps (lr 3e-3, batch 8).
Held-out: 64 blocks spread over the last 10 %. Two reference rows train the same student on the *whole*
training set for the same steps (hard labels; teacher KD): what the small sets are measured against.

    python benchmarks/bench_dataset_distill.py            # about 3 minutes on a loaded 2-core box
    python benchmarks/bench_dataset_distill.py --size 64 --gm-iterations 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "benchmarks" / "_work" / "dataset_distill"
BLOCK = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="sequences per set")
    ap.add_argument("--pool", type=int, default=2048, help="training blocks the sets draw from")
    ap.add_argument("--steps", type=int, default=150, help="student optimizer steps (every method)")
    ap.add_argument("--teacher-steps", type=int, default=200)
    ap.add_argument("--gm-iterations", type=int, default=6)
    ap.add_argument("--dm-iterations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers import logging as hf_logging

    from curate.distill.config import DistillConfig
    from curate.distill.data import TokenData
    from curate.distill.dataset_distill import run_dataset_distill
    from curate.distill.evaluate import evaluate_models
    from curate.distill.run import Prepared
    from curate.distill.trainer import DistillTrainer

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    text = (SHARED / "books" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = [stoi[c] for c in text]
    n = int(0.9 * len(ids))
    train = TokenData.from_blocks(ids[:n], BLOCK + 1)
    held = TokenData.from_blocks(ids[n:], BLOCK + 1).subset(range(0, 1600, 25))
    V = len(chars)

    def make(layers: int, heads: int, embd: int, seed: int) -> GPT2LMHeadModel:
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=BLOCK + 1, n_embd=embd, n_layer=layers,
                                          n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    def config(out: Path, loss: dict, steps: int, **kw) -> DistillConfig:
        return DistillConfig.model_validate(dict(
            teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
            data={"train": ["tinyshakespeare.txt"]}, output_dir=str(out), loss=loss, seed=args.seed, progress=False,
            plot=False, threads=args.threads, **kw,
            optim={"lr": 3e-3 if "dataset_distill" in kw else 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1,
                   "warmup_steps": 10, "batch_size": 8 if "dataset_distill" in kw else 12, "max_steps": steps,
                   "clip": 1.0}))

    work = WORK / f"seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher = make(4, 4, 128, seed=0)
    DistillTrainer(config(work / "teacher", {"name": "ce"}, args.teacher_steps), teacher, train).train()
    teacher.eval()
    t_teacher = time.perf_counter() - t0

    student = make(1, 2, 32, seed=1)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    dd = {"size": args.size, "pool": args.pool, "methods": ["random", "kcenter", "random_kd", "sre2l", "gm", "dm"],
          "gm": {"iterations": args.gm_iterations, "outer_loop": 5, "inner_loop": 5, "batch_real": 64},
          "dm": {"iterations": args.dm_iterations, "batch_real": 64}}
    cfg = config(work / "run", {"name": "forward_kl", "alpha": 0.0}, args.steps, dataset_distill=dd,
                 eval={"batch_size": 16})
    p = Prepared(teacher=teacher, student=student, tokenizer=None, train=train, eval=held, vocab=V, pad_id=0, eos_id=None)
    t1 = time.perf_counter()
    res = run_dataset_distill(cfg, p)
    t_sets = time.perf_counter() - t1

    # reference: the same student on the whole training set, same steps and batch
    ref_rows = []
    for name, loss in (("full data, hard labels", {"name": "ce"}), ("full data, teacher KD", {"name": "forward_kl", "alpha": 0.0})):
        s = make(1, 2, 32, seed=1)
        s.load_state_dict(init)
        rc = config(work / name.replace(" ", "_").replace(",", ""), loss, args.steps, dataset_distill=dd)
        rc.dataset_distill = None
        DistillTrainer(rc, s, train, teacher=teacher if loss["name"] != "ce" else None).train()
        ev = evaluate_models(s, teacher, held, device=torch.device("cpu"), vocab=V, batch_size=16)
        ref_rows.append({"method": name, "sequences": len(train), "kl_teacher_student": ev["kl_teacher_student"],
                         "student_ppl": ev["student"]["ppl"], "top1_agreement": ev["top1_agreement"]})
    total = time.perf_counter() - t0

    rows = res.report["table"]
    print(f"\nteacher held-out ppl {rows[0]['teacher_ppl']:.3f} ({args.teacher_steps} steps, {t_teacher:.0f} s); "
          f"student init: 1 layer x 32; {args.steps} steps each; sets of {args.size} x {BLOCK + 1} chars from a "
          f"pool of {args.pool}; held-out {len(held)} blocks\n")
    print("| method | sequences | held-out KL(teacher‖student) | student ppl | top-1 agreement | own objective first → last | set s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        obj = "-" if r["objective_first"] is None else f"{r['objective_first']:.4g} → {r['objective_last']:.4g}"
        if r["method"] in ("sre2l", "random_kd", "random", "kcenter"):
            obj = f"train loss {r['train_first_loss']:.3f} → {r['train_final_loss']:.3f}"
        print(f"| {r['method']} | {r['sequences']} | {r['kl_teacher_student']:.4f} | {r['student_ppl']:.3f} | "
              f"{r['top1_agreement']:.4f} | {obj} | {r['set_s']:.1f} |")
    for r in ref_rows:
        print(f"| {r['method']} | {r['sequences']} | {r['kl_teacher_student']:.4f} | {r['student_ppl']:.3f} | "
              f"{r['top1_agreement']:.4f} | - | - |")
    print(f"\nwall {total:.0f} s (teacher {t_teacher:.0f} s, sets + students {t_sets:.0f} s); "
          f"load average {os.getloadavg()[0]:.1f}; report: {res.output_dir / 'report.md'}")
    (work / "bench.json").write_text(json.dumps({"rows": rows, "reference": ref_rows, "args": vars(args),
                                                 "wall_s": total, "loadavg": os.getloadavg()}, indent=1, default=str))


if __name__ == "__main__":
    main()
