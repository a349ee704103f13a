"""The local executor run from a plain :class:`RunSpec`, no :class:`Pipeline` built: outputs, rejects
with reasons, stats, resume and the run lock are the executor's own work."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from curate import read, read_output, write
from curate.core.run import RunSpec
from curate.executors.local import LocalExecutor
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from tests.conftest import planted_copies_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two files of the bundled real sample with exact copies of earlier documents planted."""
    return planted_copies_corpus(tmp_path_factory.mktemp("corpus"), files=2, rows=200)


def _spec(corpus: Path, root: Path, workers: int = 1) -> RunSpec:
    return RunSpec(input=read(str(corpus / "*.jsonl"), batch_size=40),
                   steps=(C4Quality(filter_no_terminal_punct=False), ExactDedup()),
                   output=write(str(root / "out"), format="parquet"), work_dir=root / "work", workers=workers)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_spec_is_frozen_and_resolved(corpus, tmp_path):
    spec = _spec(corpus, tmp_path)
    with pytest.raises(AttributeError):
        spec.seed = 1  # type: ignore[misc]
    assert spec.rejects_spec.path == str(tmp_path / "work" / "rejects")
    assert [op.step_name for op in spec.steps] == ["c4_quality", "exact_dedup"]
    assert spec.to_config()["steps"][1] == {"exact_dedup": spec.steps[1].config()}


def test_local_executor_runs_a_spec_without_a_pipeline(corpus, tmp_path):
    res = LocalExecutor(_spec(corpus, tmp_path)).run(progress=False)
    kept = read_output(str(tmp_path / "out"))
    stats = json.loads((tmp_path / "work" / "stats.json").read_text())
    assert res.docs_out == kept.height == stats["docs_out"] > 0
    by_step = {s["step"]: s for s in stats["steps"]}
    rej = pl.concat([pl.read_ndjson(p) for p in (tmp_path / "work" / "rejects").rglob("*.jsonl")],
                    how="diagonal_relaxed")
    # nothing lost: rows in = kept + rejected, and every rejected row names its reason
    assert by_step["read"]["docs_out"] == kept.height + rej.height
    assert rej["reason"].null_count() == 0
    assert sum(by_step["exact_dedup"]["dropped"].values()) == by_step["exact_dedup"]["counters"]["duplicates"] > 0
    assert (tmp_path / "work" / "pipeline.yaml").read_text() == _spec(corpus, tmp_path).to_yaml()
    # resumed: a second executor on the same spec reruns no shard and leaves the files as they were
    before = _digest(tmp_path / "out")
    again = LocalExecutor(_spec(corpus, tmp_path)).run(progress=False)
    assert again.resumed_shards > 0 and _digest(tmp_path / "out") == before


def test_executors_do_not_import_the_pipeline_facade():
    """The circle core/pipeline.py <-> executors/ is gone: no executor module imports the facade."""
    for path in (REPO / "curate" / "executors").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        # ``import curate`` (for __version__) is fine; ``from curate import Pipeline`` is the facade
        assert "curate.core.pipeline" not in names and "curate" not in names, path
    op = ast.parse((REPO / "curate" / "core" / "operator.py").read_text())
    assert not any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("curate.executors")
                   for n in ast.walk(op)), "FitContext.map_shards must use core's pool"
