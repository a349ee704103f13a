"""``curate run --limit N``: try a pipeline on the first N documents of its input.

The trial never touches the full run's folders: the first N documents are copied to
``<work_dir>.limit-N.input/docs.parquet`` and the pipeline runs on that copy with the work dir, output
and rejects paths suffixed ``.limit-N`` (e.g. ``out/example.limit-100``), so a trial's output cannot be
mistaken for (or resumed as) a full run's. Rows the reader skips among the first N lines are not part of
the sample (the trial's ``read`` step counts only the sample's rows).
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from curate.core.errors import ConfigError
from curate.core.operator import UID
from curate.core.pipeline import Pipeline
from curate.io.readers import InputSpec
from curate.io.writers import OutputSpec, RejectsSpec


def limit_suffix(n: int) -> str:
    return f".limit-{n}"


def _suffixed(path: str, n: int) -> str:
    return os.path.normpath(path) + limit_suffix(n)


def limited(p: Pipeline, n: int) -> Pipeline:
    """A copy of ``p`` over the first ``n`` documents of its input, writing only to ``.limit-n`` paths."""
    if n <= 0:
        raise ConfigError(f"--limit must be a positive number of documents, got {n}")
    assert p.input is not None and p.output is not None
    work = _suffixed(p.work_dir, n)
    sample = Path(work + ".input") / "docs.parquet"
    frames, have = [], 0
    for batch in p.input.iter_batches():
        frames.append(batch.head(n - have).drop(UID, strict=False))
        have += frames[-1].height
        if have >= n:
            break
    if not frames:
        raise ConfigError(f"input '{p.input.path}' has no readable documents to try the pipeline on")
    _write_if_changed(pl.concat(frames, how="diagonal_relaxed"), sample)
    inp = InputSpec(path=str(sample), format="parquet", text_field="text", id_field="id",
                    batch_size=p.input.batch_size, on_error=p.input.on_error)
    out = OutputSpec(**{**p.output.model_dump(), "path": _suffixed(p.output.path, n)})
    parts: list = [inp, *p.steps, out]
    if p.rejects is not None:
        parts.append(RejectsSpec(**{**p.rejects.model_dump(), "path": _suffixed(p.rejects.path, n)}))
    return Pipeline(*parts, work_dir=work, executor=p.executor, seed=p.seed)


def _write_if_changed(df: pl.DataFrame, path: Path) -> None:
    """Write the sample, keeping the old file (and so the trial's resume) when its rows are the same."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            if pl.read_parquet(path).equals(df):
                return
        except (OSError, pl.exceptions.PolarsError):
            pass
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    df.write_parquet(tmp)
    os.replace(tmp, path)
