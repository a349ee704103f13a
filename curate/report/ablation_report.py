"""The report of a curate-then-distill ablation (``examples/curate_then_distill/run_ablation.py``), read from
its output folder: ``summary.json`` holds every run's row (arm, seed, held-out ppl, KL, top-1, retention,
ROUGE-L, distinct-2, tokens, wall time) and the per-arm mean and sample standard deviation over seeds; each
run's own distill output (``<arm>-seed<k>/``) is linked by name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from curate.core.errors import pip_hint
from curate.report.html import Page, have_matplotlib

#: (summary key, label, higher is better) of the per-arm table and plots
METRICS = (("student_ppl", "held-out ppl", False), ("kl", "KL(teacher || student)", False),
           ("top1", "top-1 agreement", True), ("retention", "retention (teacher ppl / student ppl)", True),
           ("rouge_l_reference", "ROUGE-L vs reference", True), ("rouge_l_teacher", "ROUGE-L vs teacher", True),
           ("distinct_2", "distinct-2", True), ("train_tokens", "train tokens", None), ("wall_s", "wall s", None))


def is_ablation_run(run_dir: Path) -> bool:
    f = run_dir / "summary.json"
    if not f.is_file():
        return False
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(d, dict) and isinstance(d.get("runs"), dict) and isinstance(d.get("summary"), dict)


def _pm(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    mu, sd = d.get("mean"), d.get("std")
    if mu is None:
        return "-"
    nd = 1 if abs(mu) >= 100 else 3
    return f"{mu:.{nd}f}" + ("" if sd is None or (isinstance(sd, float) and math.isnan(sd)) else f" ± {sd:.{nd}f}")


def ablation_report(run_dir: str | Path) -> Page:
    run = Path(run_dir)
    d = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summ: dict[str, dict[str, Any]] = d["summary"]
    runs: dict[str, list[dict[str, Any]]] = d["runs"]
    page = Page(f"curate-then-distill ablation: {d.get('size', run.name)}")

    sec = page.section("Arms (mean ± sample std over seeds)", "arms")
    if d.get("kept_layers"):
        page.text(sec, f"student: the teacher's layers {d['kept_layers']} (the same for every run)")
    page.table(sec, ["arm", "seeds"] + [label for _, label, _ in METRICS],
               [[arm, s.get("seeds")] + [_pm(s.get(k)) for k, _, _ in METRICS] for arm, s in summ.items()])

    sec = page.section("Per run", "runs")
    keys = [k for k, _, _ in METRICS]
    rows = [[r.get("arm", arm), r.get("seed")] + [r.get(k) for k in keys] + [_run_link(run, r, arm)]
            for arm, rs in runs.items() for r in rs]
    page.table(sec, ["arm", "seed"] + [label for _, label, _ in METRICS] + ["run dir"], rows)

    sec = page.section("Plots", "plots")
    if not have_matplotlib():
        page.note(sec, f"matplotlib is not installed ({pip_hint('report')}): plots left out.")
    else:
        import matplotlib.pyplot as plt

        arms = list(summ)
        for key, label, better in METRICS:
            if better is None or not any(key in summ[a] for a in arms):
                continue
            fig, ax = plt.subplots(figsize=(4.5, 2.6))
            mus = [summ[a].get(key, {}).get("mean", float("nan")) for a in arms]
            sds = [summ[a].get(key, {}).get("std", float("nan")) for a in arms]
            ax.bar(arms, mus, yerr=[0.0 if s != s else s for s in sds], capsize=4, color="#4c72b0", alpha=0.8)
            for i, a in enumerate(arms):  # every seed as a dot over its arm's bar
                ys = [r[key] for r in runs.get(a, []) if r.get(key) is not None]
                ax.plot([i] * len(ys), ys, "k.", ms=5)
            ax.set_ylabel(label + (" (higher is better)" if better else " (lower is better)"), fontsize=7)
            page.figure(sec, fig, f"{label} per arm: bar = mean, whisker = std, dots = seeds")
    return page


def _run_link(run: Path, r: dict[str, Any], arm: str) -> str:
    name = f"{r.get('arm', arm)}-seed{r.get('seed')}"
    return name if (run / name / "report.json").is_file() else "-"
