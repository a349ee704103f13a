"""The Ray executor produces the local executor's output byte for byte (needs the `ray` extra)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from curate import Pipeline, read, write
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'curate-llm[ray]')")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "web_sample.jsonl.gz"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_matches_local(tmp_path):
    def pipe(out: Path) -> Pipeline:
        return Pipeline(read(str(EXAMPLE), batch_size=100, shard_mb=1), GopherQuality(), ExactDedup(),
                        write(str(out), format="parquet"))

    pipe(tmp_path / "local").run(work_dir=str(tmp_path / "wl"), workers=1, progress=False)
    try:
        pipe(tmp_path / "ray").run(work_dir=str(tmp_path / "wr"), workers=2, progress=False, executor="ray")
    finally:
        ray.shutdown()
    assert _digest(tmp_path / "local") == _digest(tmp_path / "ray")
    assert _digest(tmp_path / "wl" / "rejects") == _digest(tmp_path / "wr" / "rejects")
