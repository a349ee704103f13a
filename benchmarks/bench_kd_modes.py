"""KD modes side by side (issue 13 item 9) on one teacher/student/data budget: what each mode buys, and its
training tokens/s against the single-teacher path.

Setup (char-level, CPU-sized, all through curate's own trainer): tinyshakespeare (shared/data/books), 90/10
split into train / held-out blocks of 65 characters. Two teachers trained here with CE on *different halves*
of the training text (complementary teachers): ``A`` GPT-2 4 layers x 128 on the first half, ``B`` 3 layers x
96 on the second half. The student is GPT-2 2 layers x 64, the same seed and steps in every mode; forward KL
+ 0.5 CE (T = 1). Held-out: student perplexity, retention against the better teacher (its ppl / the
student's), KL(teacher || student) to each teacher and to their equal mixture, top-1 agreement with ``A``.

Modes (extend ``MODES`` with a new mode's trainer arguments):
  ce                 hard labels only (no teacher)
  kd:A, kd:B         single-teacher forward KL (the single-teacher path)
  multi:fixed        both teachers, equal fixed weights (curate.distill.multi_teacher)
  multi:confidence   per-example softmax(-mean entropy), tau 1
  multi:agreement    per-example softmax(mean log p(gold)), tau 1
  multi:conf-hard    confidence with tau 0 (the surer teacher per example)
  hidden:A           kd:A + hidden-state cosine on (1, 2), (2, 4), weight 0.25 (curate.distill.hidden); CKA
                     of the pairs before -> after in the row (cross-tokenizer ULD: bench_kd_xtok_hidden.py)
  uncert:entropy     kd:A with the KD term weighted per token by 1 - H(teacher)/log V (curate.distill.modes_uncert)
  uncert:prior       kd:A with the teacher mixed with a label-smoothed prior by its entropy
  self:ema           the student's own EMA copy (decay 0.99, Mean Teacher ramp-up) as teacher, no real teacher
  self:born_again    round 1 on the labels, round 2 from the same init taught by round 1 (2x the steps in all)
  mutual:copy        deep mutual learning with a second student (seed 2); mutual:A: the peer is a copy of A
                     that also updates (lr 1e-4); the peer's step is in the row's tokens/s
  seq_kd:A           CE on A's greedy continuations of the first 32 characters of steps x 12 random blocks
                     (what the budget reads; generation timed apart); seq_kd+word:A adds forward KL + 0.5 CE

    python benchmarks/bench_kd_modes.py                 # about 3 minutes on a quiet 2-core CPU
    python benchmarks/bench_kd_modes.py --steps 300 --teacher-steps 600
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "books" / "tinyshakespeare.txt"
BLOCK = 64

MODES: dict[str, dict[str, Any]] = {
    "ce": {"loss": {"name": "ce"}},
    "kd:A": {"teachers": ["A"]},
    "kd:B": {"teachers": ["B"]},
    "multi:fixed": {"teachers": ["A", "B"], "mixing": "fixed"},
    "multi:confidence": {"teachers": ["A", "B"], "mixing": "confidence", "tau": 1.0},
    "multi:agreement": {"teachers": ["A", "B"], "mixing": "agreement", "tau": 1.0},
    "multi:conf-hard": {"teachers": ["A", "B"], "mixing": "confidence", "tau": 0.0},
    "hidden:A": {"teachers": ["A"], "hidden": {"layers": [[1, 2], [2, 4]], "loss": "cosine", "weight": 0.25}},
    # self-distillation / co-training / sequence-level KD (curate.distill.self_distill, seq_kd)
    "uncert:entropy": {"teachers": ["A"], "loss": {"name": "forward_kl", "alpha": 0.5, "temperature": 1.0,
                                                   "token_weighting": "teacher_entropy"}},
    "uncert:prior": {"teachers": ["A"], "loss": {"name": "forward_kl", "alpha": 0.5, "temperature": 1.0,
                                                 "teacher_prior": "label_smoothing"}},
    "self:ema": {"self": "ema"},
    "self:born_again": {"self": "born_again"},
    "mutual:copy": {"self": "mutual"},
    "mutual:A": {"teachers": ["A"], "self": "mutual"},
    "seq_kd:A": {"teachers": ["A"], "seq_kd": True, "loss": {"name": "ce"}},
    "seq_kd+word:A": {"teachers": ["A"], "seq_kd": True},
}


def gpt2(vocab: int, layers: int, embd: int, seed: int) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=BLOCK + 1, n_embd=embd, n_layer=layers,
                                      n_head=4 if embd >= 96 else 2, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0))


def config(out: Path, *, steps: int, loss: dict[str, Any], teachers: int = 0, mixing: str = "fixed",
           tau: float = 1.0, hidden: dict[str, Any] | None = None) -> Any:
    from curate.distill.config import DistillConfig

    d: dict[str, Any] = dict(
        teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
        data={"train": ["tinyshakespeare.txt"]}, output_dir=str(out), loss=loss, seed=1, progress=False,
        plot=False, optim={"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1, "warmup_steps": 20,
                           "batch_size": 12, "max_steps": steps, "clip": 1.0}, eval={"batch_size": 16})
    if teachers >= 2:
        d["teachers"] = [{"from_config": {"model_type": "gpt2"}, "name": n} for n in "AB"[:teachers]]
        d["teacher"] = {"from_config": {"model_type": "gpt2"}}
        d["multi_teacher"] = {"mixing": mixing, "tau": tau}
    if hidden:
        d["hidden_states"] = hidden
    return DistillConfig.model_validate(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=80, help="student optimizer steps (every mode)")
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "kd_modes"))
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()

    import torch

    from curate.distill.config import SeqKD
    from curate.distill.data import TokenData
    from curate.distill.evaluate import evaluate_models
    from curate.distill.multi_teacher import MultiTeacher
    from curate.distill.self_distill import EMAHook, MutualHook, online_signal
    from curate.distill.seq_kd import generate
    from curate.distill.trainer import DistillTrainer

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = [stoi[c] for c in text]
    n = int(0.9 * len(ids))
    train = TokenData.from_blocks(ids[:n], BLOCK + 1)
    held = TokenData.from_blocks(ids[n:], BLOCK + 1).subset(range(0, 1600, 25))  # 64 spread-out blocks
    halves = {"A": train.subset(range(len(train) // 2)), "B": train.subset(range(len(train) // 2, len(train)))}
    vocab = len(chars)
    cpu = torch.device("cpu")

    t0 = time.perf_counter()
    teachers = {"A": gpt2(vocab, 4, 128, seed=0), "B": gpt2(vocab, 3, 96, seed=5)}
    for name, m in teachers.items():
        DistillTrainer(config(out / f"teacher_{name}", steps=args.teacher_steps, loss={"name": "ce"}), m,
                       halves[name]).train()
        m.eval()
    t_teachers = time.perf_counter() - t0
    t_ppl = {k: evaluate_models(m, None, held, device=cpu, vocab=vocab, batch_size=16)["student"]["ppl"]
             for k, m in teachers.items()}
    best = min(t_ppl, key=t_ppl.get)
    both = config(out / "probe", steps=1, loss={"name": "forward_kl"}, teachers=2)
    probe = MultiTeacher(both, ["A", "B"], [teachers["A"], teachers["B"]], [teachers["A"], teachers["B"]],
                         torch.tensor([0.5, 0.5], dtype=torch.float64), vocab)
    probe.make_signal(cpu, None)

    rows = []
    for mode in args.modes.split(","):
        spec = MODES[mode]
        names = spec.get("teachers", [])
        loss = spec.get("loss", {"name": "forward_kl", "alpha": 0.5, "temperature": 1.0})
        cfg = config(out / mode.replace(":", "_"), steps=args.steps, loss=loss, teachers=len(names),
                     mixing=spec.get("mixing", "fixed"), tau=spec.get("tau", 1.0), hidden=spec.get("hidden"))
        student = gpt2(vocab, 2, 64, seed=1)
        kw: dict[str, Any] = {}
        mt = None
        if len(names) == 1:
            kw["teacher"] = teachers[names[0]]
        elif names:
            mt = MultiTeacher(cfg, names, [teachers[x] for x in names], [teachers[x] for x in names],
                              torch.tensor([0.5, 0.5], dtype=torch.float64), vocab)
            kw["signal"] = mt.make_signal(cpu, None)
        cka = None
        if cfg.hidden_states is not None:
            from curate.distill.hidden import HiddenStateKD

            kw["aux"] = HiddenStateKD(cfg.hidden_states, student, teachers[names[0]])
            cka = kw["aux"].cka(held, pad_id=0, device=cpu)
        data, extra = train, {}
        if spec.get("self") == "ema":
            ema = copy.deepcopy(student)
            kw.update(teacher=ema, hooks=[EMAHook(ema, decay=0.99, warmup=True)])
        elif spec.get("self") == "born_again":  # round 1 on the labels, round 2 (same init) taught by round 1
            r1 = gpt2(vocab, 2, 64, seed=1)
            s1 = DistillTrainer(config(out / "born_again_r1", steps=args.steps, loss={"name": "ce"}), r1, train).train()
            extra["round1_train_s"] = s1["train_s"]
            kw["teacher"] = r1.eval()
        elif spec.get("self") == "mutual":
            peer = copy.deepcopy(teachers[names[0]]).train() if names else gpt2(vocab, 2, 64, seed=2)
            for w in peer.parameters():  # kd:* rows froze the teachers
                w.requires_grad_(True)
            pcfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 1e-4 if names else 1e-3})})
            p_tr = DistillTrainer(pcfg, peer, train, signal=online_signal(student, cfg, vocab))
            kw = {"signal": online_signal(peer, cfg, vocab), "hooks": [MutualHook(p_tr)]}
        if spec.get("seq_kd"):  # the teacher's greedy continuations of the blocks the budget reads
            g0 = time.perf_counter()
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[: args.steps * 12].tolist()
            prompts = [train.seqs[i][:32] for i in pick]
            answers: list[list[int]] = []
            for j in range(0, len(prompts), 256):
                answers += generate(teachers[names[0]], prompts[j:j + 256], SeqKD(max_new_tokens=32), stops=[],
                                    pad_id=0, device=cpu)
            data = TokenData([q + a for q, a in zip(prompts, answers, strict=True)], [len(q) for q in prompts])
            extra["generate_s"] = time.perf_counter() - g0
            if cfg.loss.name == "ce":
                kw.pop("teacher", None)
        summary = DistillTrainer(cfg, student, data, **kw).train()
        if cka is not None:
            cka = [(round(b, 3), round(a, 3)) for b, a in zip(cka, kw["aux"].cka(held, pad_id=0, device=cpu),
                                                               strict=True)]
            kw["aux"].close()
        ev = evaluate_models(student, teachers[best], held, device=cpu, vocab=vocab, batch_size=16)
        contrib = probe.contributions(student, held, device=cpu, pad_id=0)  # KL to each teacher and the mix
        row = {"mode": mode, "student_ppl": ev["student"]["ppl"], "retention_ppl": t_ppl[best] / ev["student"]["ppl"],
               "kl_A": contrib["teachers"][0]["kl_teacher_student"], "kl_B": contrib["teachers"][1]["kl_teacher_student"],
               "kl_mix": contrib["kl_mixture_student"], "top1_vs_best": ev["top1_agreement"],
               "train_tokens_per_s": summary["train_tokens_per_s"], "train_s": summary["train_s"]}
        row.update(extra)
        if mt is not None:
            row["mean_weight_train"] = mt.signal.stats.means()
        if cka is not None:
            row["cka_before_after"] = cka
        rows.append(row)
        print(json.dumps(row), flush=True)
    single = [r["train_tokens_per_s"] for r in rows if r["mode"].startswith("kd:")]
    ref_tps = sum(single) / len(single) if single else None
    print(f"\nteachers: A ppl {t_ppl['A']:.3f}, B ppl {t_ppl['B']:.3f} (held-out; trained {args.teacher_steps} steps "
          f"each on their half, {t_teachers:.0f} s); student 2x64, {args.steps} steps x 12 x {BLOCK} chars; "
          f"retention against {best}\n")
    print("| mode | student ppl | retention | KL(A‖s) | KL(B‖s) | KL(mix‖s) | top-1 vs best | train tok/s | "
          "vs single-teacher | mean weights A/B |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = f"{r['train_tokens_per_s'] / ref_tps:.2f}x" if ref_tps and r["mode"] != "ce" else "-"
        w = "/".join(f"{x:.2f}" for x in r["mean_weight_train"]) if r.get("mean_weight_train") else "-"
        print(f"| {r['mode']} | {r['student_ppl']:.3f} | {r['retention_ppl']:.3f} | {r['kl_A']:.4f} | {r['kl_B']:.4f} "
              f"| {r['kl_mix']:.4f} | {r['top1_vs_best']:.3f} | {r['train_tokens_per_s']:.0f} | {rel} | {w} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"teacher_ppl": t_ppl, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
