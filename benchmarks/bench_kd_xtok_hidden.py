"""Cross-tokenizer (ULD) and hidden-state KD against the single-teacher path, on one budget (issue 13, items 4, 5, 9).

Data: tinyshakespeare (``../shared/data/books/tinyshakespeare.txt``), 128-character chunks of the first 200k
characters for training, of the last 50k for held-out evaluation (no end-of-sequence token). Teachers,
trained here on the training text: a char-level Llama (4 layers, width 128) and a BPE one (300-id
byte-level BPE trained on the same text, same size). Student: a char-level Llama, 2 layers, width 64, random
init, the same seed and the same number of steps, batch and lr in every arm:

  ce              hard labels only (no teacher)
  forward_kl      char teacher, alpha 0.5 forward KL (the single-teacher path)
  hidden_cosine   forward_kl + hidden_states cosine on layers (1, 2), (2, 4), weight 0.25
  uld_spans       BPE teacher, ULD (alpha 0.4), GOLD span alignment
  uld_position    BPE teacher, ULD (alpha 0.4), the ULD reference's positional alignment

Each arm goes through ``distill(cfg)``; reported: the student's held-out NLL per character (the unit every arm
shares), training tokens/s (student tokens), and, for the hidden arm, linear CKA of each pair before/after.

    python benchmarks/bench_kd_xtok_hidden.py            # one CPU thread: teachers ~3.5 min each on the first
                                                         # run (kept in benchmarks/_work), then ~4 min of arms
    python benchmarks/bench_kd_xtok_hidden.py --steps 400 --teacher-steps 600
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "kd_xtok_hidden"
TEXT = ROOT.parent / "shared" / "data" / "books" / "tinyshakespeare.txt"
CHUNK = 128


def _tokenizers(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = {"<unk>": 0, "</s>": 1, "<pad>": 2}
    chars = special | {c: i + 3 for i, c in enumerate(sorted(set(text)))}
    char = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=chars, merges=[], unk_token="<unk>")),
                                   unk_token="<unk>", eos_token="</s>", pad_token="<pad>")
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=list(special),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    bpe = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")
    return char, bpe


def _llama_cfg(vocab: int, hidden: int, layers: int) -> dict:
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": 1,
            "pad_token_id": 2, "bos_token_id": 1, "max_position_embeddings": 512}


def _train_teacher(tok, text: str, out: Path, steps: int) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").exists():
        return float(json.loads((out / "train.json").read_text())["seconds"])
    fields = _llama_cfg(len(tok), 128, 4)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        s = torch.randint(0, len(ids) - 97, (16,), generator=g)
        x = torch.stack([ids[i:i + 97] for i in s])
        loss = m(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    m.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "train.json").write_text(json.dumps({"seconds": secs, "final_loss": float(loss.detach())}))
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="student optimizer steps per arm")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--arms", default="ce,forward_kl,hidden_cosine,uld_spans,uld_position")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from curate.distill.run import distill

    torch.set_num_threads(1)
    text = TEXT.read_text(encoding="utf-8")
    train_text, eval_text = text[:200_000], text[-50_000:]
    WORK.mkdir(parents=True, exist_ok=True)
    char, bpe = _tokenizers(train_text)
    char.save_pretrained(WORK / "char_tok")
    for name, part in (("train", train_text), ("eval", eval_text)):
        with open(WORK / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(0, len(part) - CHUNK, CHUNK):
                f.write(json.dumps({"text": part[i:i + CHUNK]}) + "\n")
    t_secs = {k: _train_teacher(tok, train_text, WORK / f"teacher_{k}", args.teacher_steps)
              for k, tok in (("char", char), ("bpe", bpe))}
    student = {"from_config": _llama_cfg(len(char), 64, 2), "tokenizer": str(WORK / "char_tok")}
    base = dict(student=student, data={"train": [str(WORK / "train.jsonl")], "eval": [str(WORK / "eval.jsonl")],
                                       "max_len": CHUNK, "add_eos": False, "eval_max_examples": 96},
                optim={"lr": 3e-3, "batch_size": 8, "max_steps": args.steps, "warmup_steps": 10},
                eval={"samples": 0, "batch_size": 16}, progress=False, plot=False, threads=1, seed=0)
    arms = {
        "ce": {"teacher": {"path": str(WORK / "teacher_char")}, "loss": {"name": "ce"}},
        "forward_kl": {"teacher": {"path": str(WORK / "teacher_char")}, "loss": {"name": "forward_kl", "alpha": 0.5}},
        "hidden_cosine": {"teacher": {"path": str(WORK / "teacher_char")}, "loss": {"name": "forward_kl", "alpha": 0.5},
                          "hidden_states": {"layers": [[1, 2], [2, 4]], "loss": "cosine", "weight": 0.25}},
        "uld_spans": {"teacher": {"path": str(WORK / "teacher_bpe")}, "loss": {"name": "uld", "alpha": 0.4},
                      "cross_tokenizer": {"alignment": "spans"}},
        "uld_position": {"teacher": {"path": str(WORK / "teacher_bpe")}, "loss": {"name": "uld", "alpha": 0.4},
                         "cross_tokenizer": {"alignment": "position"}},
    }
    rows = []
    for name in args.arms.split(","):
        cfg = base | arms[name] | {"output_dir": str(WORK / "runs" / name)}
        t0 = time.perf_counter()
        res = distill(cfg)
        ev, tr = res.report["eval"], res.train
        if "nll_per_char" in ev["student"]:
            s_char, t_char = ev["student"]["nll_per_char"], ev["teacher"]["nll_per_char"]
        else:  # char student and teacher: one token = one character
            s_char, t_char = ev["student"]["nll"], ev["teacher"]["nll"]
        row = {"arm": name, "student_nll_per_char": s_char, "teacher_nll_per_char": t_char,
               "train_tokens_per_s": tr["train_tokens_per_s"], "train_s": tr["train_s"],
               "wall_s": time.perf_counter() - t0}
        if "hidden_states" in res.report:
            row["cka"] = [(p["student"], p["teacher"], round(p["cka_before"], 3), round(p["cka_after"], 3))
                          for p in res.report["hidden_states"]["pairs"]]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nteachers trained {args.teacher_steps} steps: char {t_secs['char']:.0f} s, bpe {t_secs['bpe']:.0f} s")
    print("| arm | teacher nats/char | student nats/char | train tokens/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['teacher_nll_per_char']:.3f} | {r['student_nll_per_char']:.3f} | "
              f"{r['train_tokens_per_s']:.0f} |")
    (WORK / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
