"""Python API: run a generation pipeline (generator steps, then filters and dedup) and write its report.

>>> from curate.synth.api import synthesize
>>> result, (report_json, report_md) = synthesize("examples/synth/self_instruct.yaml")

A generation config is an ordinary ``pipeline.yaml``: generator steps (``self_instruct``,
``evol_instruct``, ``prompt_template``, ``rationale``, ``llm_judge``, ``ape``) are operators like any other,
so their rows flow through the filters and dedup that follow them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.core.pipeline import Pipeline
from curate.synth._teach import forget_teachers
from curate.synth.report import write_report


def synthesize(config: str | Path | Pipeline, *, work_dir: str | None = None, workers: int | None = None,
               progress: bool = False, report: bool = True, embeddings: bool = True) -> tuple[Any, tuple[Path, Path] | None]:
    """Run ``config`` (a YAML path or a :class:`Pipeline`); returns (RunResult, report paths or None)."""
    p = config if isinstance(config, Pipeline) else Pipeline.from_yaml(config)
    try:
        result = p.run(work_dir=work_dir, workers=workers, progress=progress)
    finally:
        forget_teachers()  # loaded teachers are per run: a second run reloads (and rereads its cache)
    paths = write_report(result.output, result.work_dir, embeddings=embeddings) if report else None
    return result, paths
