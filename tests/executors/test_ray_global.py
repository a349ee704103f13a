"""Global stages on Ray Data (:mod:`curate.executors.ray_global`) give the local executor's results: the
same components (large-star / small-star against a brute-force union-find, long chains included), the
same MinHash clusters and kept documents, the same exact-dedup groups, and a top-k equal to a sort.
Needs the `ray` extra; a local Ray instance with 2 CPUs started here."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, write
from curate.core.global_ops import GlobalOps
from curate.core.operator import UID
from curate.executors.local import LocalExecutor
from curate.executors.ray import RayExecutor
from curate.filters.exact_dedup import ExactDedup
from curate.filters.minhash import MinHashDedup
from curate.filters.semdedup import SemDeDup

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'curate-llm[ray]')")
from curate.executors.ray_global import RayGlobalOps  # noqa: E402 - needs ray


@pytest.fixture
def ops(local_ray) -> RayGlobalOps:
    return RayGlobalOps(lambda: local_ray, partitions=3)  # 3: not a divisor of the id patterns below


# ------------------------------------------------------------------------------- components
def _brute_labels(edges: list[tuple[int, int]]) -> dict[int, int]:
    """Union-find written out plainly: node -> smallest node of its component."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


def _graph(seed: int) -> list[tuple[int, int]]:
    """Long chains and a cycle over shuffled ids (the worst case for label propagation), random sparse
    graphs, a star, a clique, repeated edges both ways and a self loop; ids spread like row keys."""
    rng = random.Random(seed)
    ids = rng.sample(range(1, 1 << 50), 3000)
    edges: list[tuple[int, int]] = []
    chain = ids[:700]
    edges += list(zip(chain, chain[1:]))
    ring = ids[700:900]
    edges += list(zip(ring, ring[1:] + ring[:1]))
    sparse = ids[900:2400]
    edges += [tuple(rng.sample(sparse, 2)) for _ in range(1200)]
    star = ids[2400:2500]
    edges += [(star[0], x) for x in star[1:]]
    clique = ids[2500:2520]
    edges += [(x, y) for x in clique for y in clique if x < y]
    edges += [(b, a) for a, b in edges[:50]] + edges[:20]
    edges.append((ids[2600], ids[2600]))
    rng.shuffle(edges)
    return edges


def _edge_file(tmp: Path, edges: list[tuple[int, int]]) -> list[Path]:
    files = []
    for i in range(3):  # several files, as the per-band pair files a stage hands over
        f = tmp / f"edges{i}.parquet"
        part = edges[i::3]
        pl.DataFrame({"a": [a for a, _ in part], "b": [b for _, b in part]},
                     schema={"a": pl.UInt64, "b": pl.UInt64}).write_parquet(f)
        files.append(f)
    return files


def _labels(files: list[Path]) -> dict[int, int]:
    df = pl.concat([pl.read_parquet(f) for f in files])
    assert df["node"].n_unique() == df.height  # one label per node
    return dict(zip(df["node"].to_list(), df["label"].to_list()))


class _InProcess(RayGlobalOps):
    """The same rounds (the same large-star / small-star functions, the same keying) with the shuffle done
    in this process: the algorithm on big graphs and long chains in a second; the Ray Data shuffle that
    carries it is checked on a smaller graph below."""

    def __init__(self):
        super().__init__(lambda: None, partitions=3, finish_edges=-1)  # never hand over to the union-find

    def _shuffle(self, ray, files, columns, keyer, fn, groups):
        keyed = keyer(pl.concat([pl.read_parquet(f, columns=columns) for f in files]))
        return [fn(g.drop("__part"), int(g["__part"][0])) for g in keyed.partition_by("__part")]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_small_star_equals_union_find(tmp_path, seed):
    edges = _graph(seed)
    files = _edge_file(tmp_path, edges)
    want = _brute_labels(edges)
    assert _labels(GlobalOps().connected_components(files, out_dir=tmp_path / "local")) == want
    ops = _InProcess()
    assert _labels(ops.connected_components(files, out_dir=tmp_path / "stars")) == want
    assert ops.rounds > 3  # the chain needed real rounds: the input was not a star forest already
    assert len(set(want.values())) > 50  # many components, not one


def test_components_on_ray_equal_union_find(tmp_path, local_ray):
    """On a real Ray instance: rounds of Ray Data shuffles, and the hand-over to one task."""
    rng = random.Random(5)
    ids = rng.sample(range(1, 1 << 50), 60)
    edges = list(zip(ids[:12], ids[1:12])) + [(ids[20], x) for x in ids[21:30]] + [(ids[40], ids[40])]
    edges += [tuple(rng.sample(ids[30:60], 2)) for _ in range(12)]
    files = _edge_file(tmp_path, edges)
    want = _brute_labels(edges)
    rounds = RayGlobalOps(lambda: local_ray, partitions=3, finish_edges=0)
    assert _labels(rounds.connected_components(files, out_dir=tmp_path / "rounds")) == want
    assert rounds.rounds >= 2
    task = RayGlobalOps(lambda: local_ray, partitions=3)
    assert _labels(task.connected_components(files, out_dir=tmp_path / "task")) == want
    assert task.rounds == 0


def test_components_of_no_edges(tmp_path):
    f = tmp_path / "none.parquet"
    pl.DataFrame(schema={"a": pl.UInt64, "b": pl.UInt64}).write_parquet(f)
    assert _labels(_InProcess().connected_components([f], out_dir=tmp_path / "stars")) == {}
    assert _labels(GlobalOps().connected_components([f], out_dir=tmp_path / "local")) == {}


# ------------------------------------------------------------------------------- top-k
def test_top_k_equals_a_sort(ops):
    """Per-block top-k on Ray, merged on the driver, equals a sort of all rows (ties, NaN and nulls)."""
    rng = np.random.default_rng(1)
    n = 5000
    score = rng.integers(0, 50, n).astype(np.float64)  # many ties: the order column decides
    score[rng.choice(n, 40, replace=False)] = np.nan
    df = pl.DataFrame({UID: rng.permutation(n).astype(np.uint64), "score": score})
    df = df.with_columns(pl.when(pl.col(UID) % 97 == 0).then(None).otherwise(pl.col("score")).alias("score"))
    for k, hib in ((37, False), (n - 10, True)):
        got = ops.top_k(df, k, score="score", order=UID, higher_is_better=hib)
        ref = df.sort([pl.col("score").fill_nan(None), pl.col(UID)], descending=[hib, False],
                      nulls_last=True).head(k)
        assert got.equals(ref), (k, hib)


# ------------------------------------------------------------------------------- groups
def test_group_first_and_star_pairs_equal_local(tmp_path, ops):
    rng = np.random.default_rng(2)
    n = 4000
    files = []
    for i in range(3):
        uid = np.arange(i * n, (i + 1) * n, dtype=np.uint64)
        h = rng.integers(0, 1500, n).astype(np.uint64)  # many repeated keys across files
        f = tmp_path / f"h{i}.parquet"
        pl.DataFrame({UID: uid, "id": [f"d{u}" for u in uid], "h": h, "n_shingles": rng.integers(0, 3, n),
                      "b0": h, "b1": h // 3}).write_parquet(f)
        files.append(f)
    lf, lg = GlobalOps().group_first(files, key="h", order=UID, value="id", out_dir=tmp_path / "gl")
    rf, rg = ops.group_first(files, key="h", order=UID, value="id", out_dir=tmp_path / "gr")
    assert rg == lg == 1500
    assert pl.concat([pl.read_parquet(f) for f in rf]).sort(UID).equals(pl.read_parquet(lf[0]))
    for memory_mb in (1024, 16):  # one partition per band, and several (hash partitions of the band key)
        kw = dict(key_columns=["b0", "b1"], node=UID, active="n_shingles", memory_mb=memory_mb, nrows=1 << 20)
        loc = GlobalOps().star_pairs(files, out_dir=tmp_path / f"sl{memory_mb}", **kw)
        on_ray = ops.star_pairs(files, out_dir=tmp_path / f"sr{memory_mb}", **kw)
        assert [f.name for f in loc] == [f.name for f in on_ray]
        assert [f.read_bytes() for f in loc] == [f.read_bytes() for f in on_ray]
        assert sum(pl.read_parquet(f).height for f in loc) > 1000


# ------------------------------------------------------------------------------- stages, end to end
def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".curate")}


def _counters(work: Path) -> dict[str, dict]:
    return {s["step"]: s["counters"] for s in json.loads((work / "stats.json").read_text())["steps"]}


def _same_on_ray(tmp_path: Path, pipeline: Callable[[Path], Pipeline]) -> dict[str, dict]:
    """Run ``pipeline(root)`` (whose output is ``root / "out"``) with 2 workers under the local executor
    (root ``tmp_path / "l"``) and on Ray (``tmp_path / "r"``); assert the same output, rejects and step
    counters byte for byte, and return the counters."""
    for executor, root in (("local", tmp_path / "l"), ("ray", tmp_path / "r")):
        spec = pipeline(root).spec(work_dir=str(root / "work"), workers=2, executor=executor)
        (LocalExecutor if executor == "local" else RayExecutor)(spec).run(progress=False)
    assert _digest(tmp_path / "l" / "out") == _digest(tmp_path / "r" / "out")
    assert _digest(tmp_path / "l" / "work" / "rejects") == _digest(tmp_path / "r" / "work" / "rejects")
    local, on_ray = _counters(tmp_path / "l" / "work"), _counters(tmp_path / "r" / "work")
    assert local == on_ray
    return on_ray


def test_minhash_without_verify_on_ray_equals_local(near_dups, tmp_path, local_ray):
    """Buckets grouped and components found on Ray: the same clusters, kept documents and rejects."""
    def pipeline(root: Path) -> Pipeline:
        return Pipeline(read(str(near_dups / "*.jsonl"), batch_size=100), ExactDedup(),
                        MinHashDedup(threshold=0.6, verify=False, keep="longest"),
                        write(str(root / "out"), format="parquet"))

    on_ray = _same_on_ray(tmp_path, pipeline)
    assert on_ray["minhash_dedup"]["removed"] >= 40  # the planted chains were found (real clusters compared)
    # the components were computed by the Ray ops (a graph this small: handed to one Ray task, round 0)
    assert list((tmp_path / "r" / "work").rglob("minhash_components_*/round000-final/labels-0000.parquet"))
    assert not list((tmp_path / "l" / "work").rglob("round000-final"))


def test_minhash_verified_on_ray_equals_local(near_dups, tmp_path, local_ray):
    """Verified MinHash: components found on Ray, then the verified union run per group of components in
    Ray tasks (a hash join of the pairs with their component, a shuffle by component): the same clusters,
    kept documents, rejects and counters (verified and rejected pairs included) as the local executor."""
    def pipeline(root: Path) -> Pipeline:
        return Pipeline(read(str(near_dups / "*.jsonl"), batch_size=100),
                        MinHashDedup(threshold=0.7, verify=True, keep="longest"),
                        write(str(root / "out"), format="parquet"))

    on_ray = _same_on_ray(tmp_path, pipeline)
    c = on_ray["minhash_dedup"]
    assert c["removed"] >= 100 and c["verified_pairs"] >= 100 and c["false_positive_pairs"] > 0
    # locally one partition; on Ray the groups were spread over several (2 CPUs: 4 partitions)
    (lv,) = (tmp_path / "l" / "work").rglob("minhash_verified_*")
    (rv,) = (tmp_path / "r" / "work").rglob("minhash_verified_*")
    assert len(list(lv.glob("part-*.parquet"))) == 1
    assert len(list(rv.glob("part-*.parquet"))) > 1


def test_semdedup_on_ray_equals_local(shared_data, tmp_path, local_ray):
    """SemDeDup with embeddings computed in the fit (model2vec: MiniLM's static distillation) on real
    MRPC paraphrases and exact copies in three files: k-means on the driver, each cluster's pruning in
    Ray tasks over the per-shard embedding files; the same kept set, rejects (with the earlier item they
    duplicate), eps report and counters as the local executor."""
    pytest.importorskip("model2vec")
    import csv

    with open(shared_data / "paraphrase/msr_paraphrase_train.txt", encoding="utf-8-sig") as f:
        pairs = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r and r[0] == "1"][:60]
    texts = [t for r in pairs for t in (r[3], r[4])]
    texts += texts[:40:4]  # 10 exact copies
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        (src / f"part{k}.jsonl").write_text("".join(json.dumps({"id": f"d{i:04d}", "text": t}) + "\n"
                                                    for i, t in enumerate(texts) if i % 3 == k))

    def pipeline(root: Path) -> Pipeline:
        return Pipeline(read(str(src / "*.jsonl")), SemDeDup(eps=0.1, n_clusters=4, backend="model2vec"),
                        write(str(root / "out"), format="parquet"))

    on_ray = _same_on_ray(tmp_path, pipeline)
    assert on_ray["semdedup"]["removed"] >= 10 and on_ray["semdedup"]["clusters"] == 4
    reports = [json.loads(next((tmp_path / x / "work").rglob("eps_report.json")).read_text()) for x in "lr"]
    assert reports[0] == reports[1]
    (parts,) = {p.parent for p in (tmp_path / "r" / "work").rglob("semdup/part-*.parquet")}
    assert len(list(parts.glob("part-*.parquet"))) > 1  # the clusters were spread over partitions


def test_moore_lewis_on_ray_selects_from_score_files_as_local(shared_data, tmp_path, local_ray):
    """A selector scoring per shard (Moore-Lewis, small real LMs: GSM8K questions vs 20news posts): the
    workers write score files, top-k reads them on Ray (per block, then the best k of the candidates),
    and the kept set, rejects (with the cut-off) and counters equal the local executor's."""
    pytest.importorskip("kenlm")
    from curate.models.kenlm import train_lm
    from curate.selectors.moore_lewis import MooreLewis

    with open(shared_data / "instructions" / "gsm8k" / "train.jsonl") as fh:
        gsm = [json.loads(line)["question"] for line in fh][:600]
    with gzip.open(shared_data / "web" / "20news-bydate.jsonl.gz", "rt") as fh:
        news = [json.loads(line)["text"] for _, line in zip(range(900), fh)]
    train_lm(gsm[:400], tmp_path / "gsm.arpa", order=3, use_lmplz="never")
    train_lm(news[:600], tmp_path / "news.arpa", order=3, use_lmplz="never")
    rows = [{"id": f"g{i}", "text": t} for i, t in enumerate(gsm[400:])]
    rows += [{"id": f"n{i}", "text": t} for i, t in enumerate(news[600:])]
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        (src / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[k::3]))

    def pipeline(root: Path) -> Pipeline:
        return Pipeline(read(str(src / "*.jsonl"), batch_size=100),
                        MooreLewis(in_domain_model=str(tmp_path / "gsm.arpa"),
                                   general_model=str(tmp_path / "news.arpa"), fraction=0.4),
                        write(str(root / "out"), format="parquet"))

    _same_on_ray(tmp_path, pipeline)
    kept = pl.read_parquet(sorted((tmp_path / "r" / "out").rglob("*.parquet")))
    assert kept.height == 200 and kept["id"].str.starts_with("g").mean() > 0.9  # in-domain kept
    (rule,) = (tmp_path / "r" / "work").rglob("rule.json")  # selected by a rule over the score files
    assert json.loads(rule.read_text())["mode"] == "rank"
    assert len(list((rule.parent / "scores").glob("part-*.parquet"))) == 3
