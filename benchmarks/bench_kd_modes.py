"""The KD modes side by side (issue 13, item 9): same teacher, student init, data and step budget.

Setup (built once under ``benchmarks/_work/kd_modes/``, real text, no hub): a character-level tokenizer over
tinyshakespeare (``../shared/data/books/tinyshakespeare.txt``), teachers trained here by plain next-token CE
on the first 90 % of the text (teacher A: 4 layers x 128 hidden; teacher B: 3 layers x 96, another seed, for
the multi-teacher rows; teacher C: the same text under a *word-piece* tokenizer, for the cross-tokenizer
row). The student (2 layers x 64, random init, seeded) is the same for every row. Training data: 256-char
windows of the first 90 %; held-out: windows of the last 10 %, never trained on.

Every mode runs ``curate.distill.distill(cfg)`` with the same ``optim`` (steps, batch, lr) and reports what
``report.json`` holds: held-out student perplexity, KL(teacher A || student), top-1 agreement with teacher
A, retention (teacher A ppl / student ppl), and training tokens/s against the single-teacher online path
(``forward_kl``). Each mode is also timed end to end (wall and CPU seconds, cache/generation builds
included).

    python benchmarks/bench_kd_modes.py                 # every mode, default budget (a few minutes)
    python benchmarks/bench_kd_modes.py --steps 40 --modes forward_kl,ema,uld
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "_work" / "kd_modes"
TEXT = ROOT.parent / "shared" / "data" / "books" / "tinyshakespeare.txt"
WINDOW = 256


# ----------------------------------------------------------------------------------------------- setup
def _char_tokenizer(text: str, out: Path) -> Any:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(text))
    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2} | {c: i + 3 for i, c in enumerate(chars)}
    t = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")
    tok.save_pretrained(out)
    return tok


def _bpe_tokenizer(text: str, out: Path, vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "</s>", "<pad>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")
    tok.save_pretrained(out)
    return tok


def _train_lm(folder: Path, tok: Any, text: str, *, layers: int, hidden: int, seed: int, steps: int) -> float:
    """A small Llama trained by next-token CE on ``text`` (saved with its tokenizer); returns the last loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    seq, bs = 128, 16
    loss = float("nan")
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (bs,), generator=g)
        x = torch.stack([ids[s:s + seq] for s in starts])
        out = m(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        for pg in opt.param_groups:
            pg["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
    m.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return loss


def setup(teacher_steps: int) -> dict[str, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    text = TEXT.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_text, held_text = text[:cut], text[cut:]
    paths = {"A": WORK / "teacher_a", "B": WORK / "teacher_b", "C": WORK / "teacher_c_bpe"}
    marker = WORK / f"teachers-{teacher_steps}.json"
    if not marker.exists():
        t0 = time.perf_counter()
        char = _char_tokenizer(text, WORK / "char_tok")
        la = _train_lm(paths["A"], char, train_text, layers=4, hidden=128, seed=0, steps=teacher_steps)
        lb = _train_lm(paths["B"], char, train_text, layers=3, hidden=96, seed=1, steps=teacher_steps)
        bpe = _bpe_tokenizer(train_text, WORK / "bpe_tok")
        lc = _train_lm(paths["C"], bpe, train_text, layers=4, hidden=128, seed=2, steps=teacher_steps)
        marker.write_text(json.dumps({"loss_a": la, "loss_b": lb, "loss_c": lc, "seconds": time.perf_counter() - t0}))
        print(f"teachers trained in {time.perf_counter() - t0:.0f} s: last CE A {la:.3f}, B {lb:.3f}, C {lc:.3f}",
              flush=True)
    for name, body in (("train", train_text), ("held", held_text)):
        rows = [body[i:i + WINDOW] for i in range(0, len(body) - WINDOW, WINDOW)]
        (WORK / f"{name}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------------------------- modes
def base_config(paths: dict[str, Path], out: Path, steps: int, seed: int) -> dict[str, Any]:
    return {
        "teacher": {"path": str(paths["A"])},
        "student": {"from_config": {"base": "teacher", "num_hidden_layers": 2, "hidden_size": 64,
                                    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}},
        "data": {"train": [str(WORK / "train.jsonl")], "eval": [str(WORK / "held.jsonl")], "text_field": "text",
                 "max_len": WINDOW + 2, "eval_max_examples": 64, "max_examples": 2048},
        "loss": {"name": "forward_kl", "alpha": 0.0, "temperature": 1.0},
        "optim": {"lr": 3e-3, "batch_size": 8, "max_steps": steps, "warmup_steps": 5},
        "eval": {"samples": 0, "batch_size": 16},
        "output_dir": str(out), "seed": seed, "progress": False, "plot": False,
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _two(p: dict[str, Path], mixing: str) -> dict[str, Any]:
    return {"teacher": None, "teachers": [{"name": "A", "path": str(p["A"])}, {"name": "B", "path": str(p["B"])}],
            "multi_teacher": {"mixing": mixing}}


# name -> (what it is, overrides of the base config given the teacher paths and the mode's work folder)
Mode = Callable[[dict[str, Path], Path], dict[str, Any]]
MODES: dict[str, tuple[str, Mode]] = {
    "ce": ("hard labels only (no teacher)", lambda p, d: {"loss": {"name": "ce", "alpha": 1.0}}),
    "forward_kl": ("single teacher, online, full vocabulary (the reference row)", lambda p, d: {}),
    "cached_topk": ("single teacher, cached top-16 (build included)",
                    lambda p, d: {"teacher_signal": {"mode": "cache", "dir": str(d / "cache"), "k": 16}}),
    "multi_fixed": ("two teachers (A, B), equal fixed weights, mixed in probability space",
                    lambda p, d: _two(p, "fixed")),
    "multi_confidence": ("two teachers, per-example weights softmax(-mean entropy), tau 1",
                         lambda p, d: _two(p, "confidence")),
    "multi_agreement": ("two teachers, per-example weights softmax(mean log p(gold)), tau 1",
                        lambda p, d: _two(p, "agreement")),
    "entropy_weighted": ("uncertainty-aware: KD term weighted by 1 - H(teacher)/log V",
                         lambda p, d: {"loss": {"token_weighting": "teacher_entropy"}}),
    "label_prior": ("uncertainty-aware: teacher mixed with a label-smoothed prior by its entropy",
                    lambda p, d: {"loss": {"teacher_prior": "label_smoothing"}}),
}


# ----------------------------------------------------------------------------------------------- run
def run_mode(name: str, paths: dict[str, Path], steps: int, seed: int) -> dict[str, Any]:
    from curate.distill import distill

    d = WORK / "runs" / f"{name}-s{seed}-n{steps}"
    import shutil

    shutil.rmtree(d, ignore_errors=True)
    cfg = _merge(base_config(paths, d / "out", steps, seed), MODES[name][1](paths, d))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = distill(cfg)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    ev = res.report.get("eval", {})
    tr = res.train
    return {"mode": name, "wall_s": wall, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "train_tok_s": tr.get("train_tokens_per_s"), "student_ppl": ev.get("student", {}).get("ppl"),
            "teacher_ppl": ev.get("teacher", {}).get("ppl"), "kl": ev.get("kl_teacher_student"),
            "top1": ev.get("top1_agreement"), "retention": ev.get("retention_ppl")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per mode (same for every mode)")
    ap.add_argument("--teacher-steps", type=int, default=400, help="CE steps to train each teacher")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    args = ap.parse_args()
    if not TEXT.exists():
        sys.exit(f"data not found: {TEXT}")
    import torch

    torch.set_num_threads(args.threads)
    paths = setup(args.teacher_steps)
    rows = []
    for name in args.modes.split(","):
        r = run_mode(name.strip(), paths, args.steps, args.seed)
        rows.append(r)
        print(json.dumps(r), flush=True)
    ref = next((r for r in rows if r["mode"] == "forward_kl"), None)
    load = os.getloadavg()
    print(f"\n## `python benchmarks/bench_kd_modes.py --steps {args.steps} --teacher-steps {args.teacher_steps}` "
          f"(load average {load[0]:.1f} at the end, {args.threads} threads)\n")
    print("| mode | what | student ppl | KL(A‖S) | top-1 | retention | train tok/s | vs forward_kl | wall s | CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rel = (r["train_tok_s"] / ref["train_tok_s"]) if ref and r["train_tok_s"] and ref["train_tok_s"] else None
        print(f"| {r['mode']} | {MODES[r['mode']][0]} | {_f(r['student_ppl'])} | {_f(r['kl'], 3)} | {_f(r['top1'], 3)} | "
              f"{_f(r['retention'], 3)} | {_f(r['train_tok_s'], 0)} | {_f(rel, 2)} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |")


def _f(v: Any, nd: int = 2) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


if __name__ == "__main__":
    main()
