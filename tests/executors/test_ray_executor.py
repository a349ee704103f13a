"""The Ray executor produces the local executor's output byte for byte, the same rejects with reasons, the
same dedup clusters and the same stats (needs the `ray` extra; a local Ray instance with 2 CPUs)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from curate import Pipeline, read, write
from curate.core.run import RunSpec
from curate.executors.ray import RayExecutor
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality
from curate.filters.minhash import MinHashDedup

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'curate-llm[ray]')")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "web_sample.jsonl.gz"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".curate")}


def _stats(work: Path) -> list[dict]:
    """stats.json without the wall-clock figures (seconds, phase timers), which differ run to run."""
    steps = json.loads((work / "stats.json").read_text())["steps"]
    return [{k: v for k, v in s.items() if k not in ("seconds", "timers")} for s in steps]


def test_ray_matches_local(tmp_path, local_ray):
    def pipe(out: Path) -> Pipeline:
        return Pipeline(read(str(EXAMPLE), batch_size=100, shard_mb=1), GopherQuality(), ExactDedup(),
                        write(str(out), format="parquet"))

    pipe(tmp_path / "local").run(work_dir=str(tmp_path / "wl"), workers=1, progress=False)
    pipe(tmp_path / "ray").run(work_dir=str(tmp_path / "wr"), workers=2, progress=False, executor="ray")
    assert _digest(tmp_path / "local") == _digest(tmp_path / "ray")
    assert _digest(tmp_path / "wl" / "rejects") == _digest(tmp_path / "wr" / "rejects")


@pytest.fixture(scope="module")
def mixed(shared_data, tmp_path_factory) -> Path:
    """Real web pages and 20news posts in three files, with exact and near copies planted across files."""
    web = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")][:150]
    with gzip.open(shared_data / "web" / "20news-bydate.jsonl.gz", "rt") as fh:
        news = [{"id": f"news-{i}", "text": json.loads(line)["text"]} for i, line in zip(range(150), fh)]
    rows = web + news
    near = [dict(r, id=f"near-{i}", text=r["text"].replace(" the ", " a ", 1) + " Thanks.")
            for i, r in enumerate(rows[::15])]
    exact = [dict(r, id=f"exact-{i}") for i, r in enumerate(rows[7::20])]
    d = tmp_path_factory.mktemp("mixed")
    allrows = rows + near + exact
    for k in range(3):
        (d / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in allrows[k::3]))
    return d


def test_ray_rule_filter_exact_and_minhash_dedup_match_local(mixed, tmp_path, local_ray):
    def spec(root: Path, executor: str) -> RunSpec:
        return Pipeline(read(str(mixed / "*.jsonl"), batch_size=50), C4Quality(filter_no_terminal_punct=False),
                        ExactDedup(), MinHashDedup(), write(str(root / "out"), format="parquet")
                        ).spec(work_dir=str(root / "work"), workers=2, executor=executor)

    from curate.executors.local import LocalExecutor

    LocalExecutor(spec(tmp_path / "l", "local")).run(progress=False)
    res = RayExecutor(spec(tmp_path / "r", "ray")).run(progress=False)
    assert _digest(tmp_path / "l" / "out") == _digest(tmp_path / "r" / "out")
    assert _digest(tmp_path / "l" / "work" / "rejects") == _digest(tmp_path / "r" / "work" / "rejects")
    local, on_ray = _stats(tmp_path / "l" / "work"), _stats(tmp_path / "r" / "work")
    assert local == on_ray
    by_step = {s["step"]: s for s in on_ray}
    # the planted copies were found: the comparison above compares real clusters, not two empty sets
    assert by_step["exact_dedup"]["counters"]["duplicates"] > 0
    assert by_step["minhash_dedup"]["counters"]["clusters"] > 0
    # resume on Ray: every shard and the fits are reused, the output left as it was
    before = _digest(tmp_path / "r" / "out")
    again = RayExecutor(spec(tmp_path / "r", "ray")).run(progress=False)
    assert again.resumed_shards > 0 and _digest(tmp_path / "r" / "out") == before
    assert res.docs_out == again.docs_out


@pytest.mark.gpu
def test_torch_operators_get_gpu_actors(tmp_path, local_ray):
    """With GPUs in the cluster, shard actors of a chain that needs torch ask for a share of one."""
    pytest.importorskip("torch")
    if not ray.cluster_resources().get("GPU"):
        pytest.skip("no GPU in this Ray cluster")
    from curate.filters.embed import Embed

    spec = RunSpec(input=read(str(EXAMPLE)), steps=(Embed(),), output=write(str(tmp_path / "o")),
                   work_dir=tmp_path / "w", workers=2)
    assert RayExecutor(spec).actor_gpus(ray) > 0
