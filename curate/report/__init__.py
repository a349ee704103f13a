"""``curate report RUN_DIR``: an HTML page (plots inlined) and a markdown twin for a pipeline or distill run.

:func:`build_report` tells the kind of run from the files in the folder: a pipeline work dir holds
``stats.json`` and ``pipeline.yaml``; a distill output dir holds ``report.json``; a curate-then-distill
ablation folder holds ``summary.json`` (per-arm runs and their mean/std over seeds).
"""

from __future__ import annotations

from pathlib import Path

from curate.core.errors import ConfigError
from curate.report.ablation_report import ablation_report, is_ablation_run
from curate.report.distill_report import distill_report, is_distill_run
from curate.report.html import Page
from curate.report.pipeline_report import is_pipeline_run, pipeline_report

__all__ = ["Page", "build_report", "write_report"]


def build_report(run_dir: str | Path) -> Page:
    run = Path(run_dir)
    if is_pipeline_run(run):
        return pipeline_report(run)
    if is_distill_run(run):
        return distill_report(run)
    if is_ablation_run(run):
        return ablation_report(run)
    raise ConfigError(f"'{run}' is neither a pipeline work dir (stats.json + pipeline.yaml), a distill "
                      "output dir (report.json) nor an ablation folder (summary.json)")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (default: into the run dir; a distill run's own report.md is
    kept, the page is ``run_report.*`` there)."""
    run = Path(run_dir)
    page = build_report(run)
    stem = "run_report" if is_distill_run(run) and out_dir is None else "report"
    return page.write(out_dir or run, stem=stem)
