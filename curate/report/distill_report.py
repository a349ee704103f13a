"""The report of a distillation run, read from its output dir (``report.json``, ``metrics.jsonl``,
``samples.jsonl`` when the run wrote greedy answers of teacher and student)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curate.core.errors import pip_hint
from curate.report.html import Page, have_matplotlib

_EVAL_ROWS = (("params", "parameters"), ("ppl", "held-out perplexity"), ("nll", "held-out NLL (nats/token)"),
              ("ece", "ECE (15 bins)"), ("tokens_per_s", "eval forward tokens/s"), ("peak_memory_mb", "peak memory MiB"))
_PAIR_ROWS = (("retention_ppl", "retention (teacher ppl / student ppl)"), ("retention_nll", "retention on NLL"),
              ("top1_agreement", "top-1 agreement"), ("kl_teacher_student", "mean token KL(teacher || student)"),
              ("js_teacher_student", "mean token JS (nats)"), ("compression", "parameter ratio teacher/student"),
              ("distinct_2", "distinct-2 of the student's greedy answers"))


def is_distill_run(run_dir: Path) -> bool:
    return (run_dir / "report.json").is_file()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def distill_report(run_dir: str | Path) -> Page:
    run = Path(run_dir)
    rep = json.loads((run / "report.json").read_text())
    ev = rep.get("eval", {})
    page = Page(f"curate distill report: {rep.get('name') or run}")

    sec = page.section("Teacher and student", "retention")
    t, s = ev.get("teacher", {}), ev.get("student", {})
    page.table(sec, ["metric", "teacher", "student"], [[label, t.get(k), s.get(k)] for k, label in _EVAL_ROWS])
    page.table(sec, ["teacher vs student", "value"], [[label, ev[k]] for k, label in _PAIR_ROWS if k in ev])
    base = rep.get("baseline")
    if isinstance(base, dict):
        page.table(sec, ["baseline (" + str(base.get("name", "baseline")) + ")", "value"],
                   [[label, base.get(k)] for k, label in _PAIR_ROWS if k in base])
    multi = rep.get("teachers")  # multi-teacher KD (curate.distill.multi_teacher): each teacher's contribution
    if isinstance(multi, dict) and multi.get("teachers"):
        page.table(sec, [f"teacher (mixing: {multi.get('mixing')})", "prior weight", "mean weight (train)",
                         "mean weight (held-out)", "held-out ppl", "KL(teacher || student)"],
                   [[r.get("name"), r.get("prior_weight"), r.get("mean_weight_train"), r.get("mean_weight_eval"),
                     r.get("eval_ppl"), r.get("kl_teacher_student")] for r in multi["teachers"]])

    sec = page.section("Training curves", "curves")
    hist = _jsonl(run / "metrics.jsonl")
    if not hist:
        page.note(sec, "metrics.jsonl is empty or missing.")
    elif not have_matplotlib():
        page.note(sec, f"matplotlib is not installed ({pip_hint('report')}): curves left out.")
    else:
        import matplotlib.pyplot as plt

        steps = [h.get("step", i + 1) for i, h in enumerate(hist)]
        fig, ax = plt.subplots(figsize=(6, 3))
        for key, label in (("loss", "train loss"), ("ce", "CE"), ("kd", "KD")):
            ys = [h.get(key) for h in hist]
            if any(y is not None for y in ys):
                ax.plot([x for x, y in zip(steps, ys) if y is not None], [y for y in ys if y is not None], label=label)
        ev_pts = [(x, h["eval_loss"]) for x, h in zip(steps, hist) if h.get("eval_loss") is not None]
        if ev_pts:
            ax.plot(*zip(*ev_pts), "o-", label="held-out loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        page.figure(sec, fig, "loss per step")
        tps = [h.get("tok_per_s") for h in hist]
        if any(v is not None for v in tps):
            fig, ax = plt.subplots(figsize=(6, 2.4))
            ax.plot(steps, [v if v is not None else float("nan") for v in tps], color="#8172b2")
            ax.set_xlabel("step")
            ax.set_ylabel("tokens/s")
            page.figure(sec, fig, "training throughput")

    sec = page.section("Teacher vs student answers", "samples")
    samples = _jsonl(run / "samples.jsonl")
    if samples:
        page.table(sec, ["prompt", "teacher", "student"],
                   [[r.get("prompt", "")[:200], r.get("teacher", "")[:300], r.get("student", "")[:300]] for r in samples])
    else:
        page.note(sec, "this run wrote no samples.jsonl.")
    tr = rep.get("train", {})
    if tr:
        sec = page.section("Training", "training")
        page.table(sec, ["training", "value"], [[k, v] for k, v in tr.items() if not isinstance(v, (dict, list))])
    return page
