"""The report of a pipeline run, read from its work dir (``stats.json``, ``pipeline.yaml``, rejects, output).

Sections: per-step kept/dropped with drop reasons; a histogram per threshold rule of the score of every
document that reached the step (kept and dropped, from the output and the rejects folders), with the
threshold marked; sample rejects per reason; near-duplicate cluster sizes for dedup steps; before/after
samples of text-rewriting steps. Nothing is recomputed: the report reads what the run wrote, sampling at
most ``max_rows`` rows per file so it stays fast on large runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from curate.core.errors import pip_hint
from curate.io.writers import read_part
from curate.report.html import Page, have_matplotlib

log = logging.getLogger("curate.report")
_DEDUP_COLUMNS = ("dup_of", "semdup_of")


def is_pipeline_run(run_dir: Path) -> bool:
    return (run_dir / "stats.json").is_file() and (run_dir / "pipeline.yaml").is_file()


def _parts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("part-") and p.is_file())


def _read_part(path: Path, columns: list[str] | None, max_rows: int) -> pl.DataFrame:
    """Up to ``max_rows`` rows of one part file; a part that cannot be read is logged and skipped."""
    try:
        return read_part(path, columns=columns, n_rows=max_rows)
    except Exception as e:  # noqa: BLE001 - a report never fails on one unreadable part; it says so
        log.warning("report: cannot read %s: %s", path, e)
        return pl.DataFrame()

def _column(folders: list[Path], column: str, max_rows: int) -> list[float]:
    vals: list[float] = []
    for folder in folders:
        for part in _parts(folder):
            df = _read_part(part, [column], max_rows)
            if column in df.columns:
                s = df.get_column(column).cast(pl.Float64, strict=False).drop_nulls().drop_nans()
                vals.extend(s.to_list())
    return vals


def _rules_of(step_cfg: dict[str, Any]) -> list[Any]:
    """The operator's threshold rules, built from its resolved config (empty when it cannot be built)."""
    from curate.core.registry import get_operator

    (name, params), = step_cfg.items()
    try:
        cls = get_operator(name)
        return list(cls(cls.Params.model_validate(params or {})).rules())
    except Exception as e:  # noqa: BLE001 - e.g. a model file gone since the run: no histogram, noted
        log.info("report: rules of %s unavailable: %s", name, e)
        return []


def pipeline_report(run_dir: str | Path, *, max_rows: int = 20_000, samples: int = 3) -> Page:
    run = Path(run_dir)
    stats = json.loads((run / "stats.json").read_text())
    cfg = yaml.safe_load((run / "pipeline.yaml").read_text())
    out_dir = Path(cfg["output"]["path"])
    rej_dir = Path((cfg.get("rejects") or {}).get("path") or run / "rejects")
    step_names = [s["step"] for s in stats["steps"]]
    page = Page(f"curate run report: {run}")

    sec = page.section("Steps", "steps")
    page.text(sec, f"{stats['docs_in']:,} documents in, {stats['docs_out']:,} out in {stats['seconds']:.1f} s "
                   f"({stats.get('resumed_shards', 0)} shards resumed).")
    rows = []
    for s in stats["steps"]:
        kept = 100.0 * s["docs_out"] / s["docs_in"] if s["docs_in"] else 100.0
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s["dropped"].items(), key=lambda kv: -kv[1]))
        rows.append([s["step"], s["docs_in"], s["docs_out"], s["docs_in"] - s["docs_out"], kept,
                     s["bytes_in"] / 1e6, s["bytes_out"] / 1e6, s["seconds"], reasons])
    page.table(sec, ["step", "docs in", "docs out", "dropped", "kept %", "MB in", "MB out", "seconds",
                     "drop reasons"], rows)
    if have_matplotlib():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
        names = [r[0] for r in rows][::-1]
        ax.barh(names, [r[2] for r in rows][::-1], color="#4c72b0", label="kept")
        ax.barh(names, [r[3] for r in rows][::-1], left=[r[2] for r in rows][::-1], color="#dd8452", label="dropped")
        ax.set_xlabel("documents")
        ax.legend(loc="lower right")
        page.figure(sec, fig, "documents kept and dropped per step")

    # -- histograms of each threshold rule ---------------------------------------------------------
    sec = page.section("Scores and thresholds", "scores")
    steps_cfg = cfg.get("steps") or []
    step_order = [n for n in step_names if n != "read"]
    drawn = 0
    if not have_matplotlib():
        page.note(sec, f"matplotlib is not installed ({pip_hint('report')}): histograms left out.")
    for i, step_cfg in enumerate(steps_cfg):
        if i >= len(step_order):
            break
        step = step_order[i]
        later = [rej_dir / s for s in step_order[i:]] + [out_dir]
        for rule in _rules_of(step_cfg):
            if rule.op not in ("<", "<=", ">", ">=") or not isinstance(rule.threshold, (int, float)):
                continue
            vals = _column(later, rule.column, max_rows)
            if not vals or not have_matplotlib():
                continue
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4.2, 2.6))
            ax.hist(vals, bins=40, color="#4c72b0")
            ax.axvline(float(rule.threshold), color="#c44e52", linestyle="--", label=f"{rule.op} {rule.threshold}: drop")
            ax.set_title(f"{step}: {rule.column}", fontsize=9)
            ax.legend(fontsize=7)
            page.figure(sec, fig, f"{step} · {rule.reason} ({len(vals):,} docs)")
            drawn += 1
    if drawn == 0:
        page.note(sec, "no threshold rule with recorded scores in this run.")

    # -- sample rejects ----------------------------------------------------------------------------
    sec = page.section("Sample rejects", "rejects")
    any_rejects = False
    for step in step_names:
        parts = _parts(rej_dir / step)
        if not parts:
            continue
        df = pl.concat([_read_part(p, None, max_rows) for p in parts], how="diagonal_relaxed")
        if df.is_empty() or "reason" not in df.columns:
            continue
        any_rejects = True
        rows = []
        for reason in sorted(df.get_column("reason").drop_nulls().unique().to_list()):
            sub = df.filter(pl.col("reason") == reason).head(samples)
            for r in sub.iter_rows(named=True):
                text = str(r.get("text") if r.get("text") is not None else r.get("raw", ""))
                rows.append([step, reason, r.get("id"), r.get("score"), r.get("threshold"),
                             text[:300] + ("…" if len(text) > 300 else "")])
        page.table(sec, ["step", "reason", "id", "score", "threshold", "text (first 300 chars)"], rows)
    if not any_rejects:
        page.note(sec, "no rejects recorded.")

    # -- dedup clusters ----------------------------------------------------------------------------
    sec = page.section("Duplicate clusters", "dedup")
    found = False
    for step in step_names:
        for col in _DEDUP_COLUMNS:
            parts = _parts(rej_dir / step)
            frames = [_read_part(p, [col], 10 * max_rows) for p in parts]
            frames = [f for f in frames if col in f.columns]
            if not frames:
                continue
            of = pl.concat(frames).get_column(col).drop_nulls()
            if of.is_empty():
                continue
            found = True
            sizes = (of.value_counts().get_column("count") + 1).to_list()
            page.text(sec, f"{step}: {len(sizes):,} clusters with duplicates, {len(of):,} documents removed, "
                           f"largest cluster {max(sizes):,}, mean size {sum(sizes) / len(sizes):.2f}.")
            if have_matplotlib():
                import matplotlib.pyplot as plt

                fig, ax = plt.subplots(figsize=(4.2, 2.6))
                ax.hist(sizes, bins=range(2, max(sizes) + 2), color="#55a868", log=True)
                ax.set_xlabel("cluster size (kept + removed)")
                ax.set_ylabel("clusters")
                page.figure(sec, fig, f"{step}: cluster sizes")
    if not found:
        page.note(sec, "no dedup step removed documents in this run.")

    # -- traces of text rewrites -------------------------------------------------------------------
    trace = run / "trace"
    if trace.is_dir():
        sec = page.section("Text rewrites (before / after)", "trace")
        for step_dir in sorted(p for p in trace.iterdir() if p.is_dir()):
            for f in sorted(step_dir.glob("*.json"))[:1]:
                for r in json.loads(f.read_text())[:2]:
                    page.text(sec, f"{step_dir.name} · {r['id']}")
                    page.code(sec, "BEFORE: " + r["before"][:600] + "\n\nAFTER: " + r["after"][:600])
    return page
