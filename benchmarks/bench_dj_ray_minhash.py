"""Data-Juicer's Ray MinHash (``ray_bts_minhash_deduplicator``) beside curate's ``minhash_dedup`` on a local
Ray instance, same data as bench_ray.py (``_corpus.real_documents``, jsonl files of ``--per-file`` docs).

    benchmarks/setup_peers.sh /work/peers dj
    python benchmarks/bench_dj_ray_minhash.py --dj-python /work/peers/dj/bin/python --docs 10000 --rounds 2

Both sides: word 5-grams split on whitespace, lower-cased, 128 permutations, threshold 0.8, 2 Ray CPUs, read
jsonl -> dedup -> write. Data-Juicer runs its documented CLI (``dj-process --config``, ``executor_type: ray``,
``ray_address: local``); its bands/rows come from its ``optimal_param`` (datasketch's rule, 9 x 13 at 0.8) and it
does not verify candidates. curate runs with ``verify=False, bands_rule=datasketch`` (the same 9 x 13, no
verification) so the two do the same work. Each run is a child process measured by benchmarks/_mem.py
(wall, CPU s of the tree, max VmHWM, peak summed PSS); the rounds alternate DJ, curate, DJ, curate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _mem import load, measure  # noqa: E402
from _workdir import clear_work  # noqa: E402

CURATE_CHILD = """
import sys, time, json, ray
from curate import Pipeline, read, write
from curate.filters.minhash import MinHashDedup
corpus, out = sys.argv[1], sys.argv[2]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
p = Pipeline(read(corpus + "/*.jsonl", batch_size=1000),
             MinHashDedup(num_perm=128, verify=False, bands_rule="datasketch"),
             write(out + "/out", format="jsonl"))
t = time.perf_counter()
r = p.run(work_dir=out + "/work", workers=2, progress=False, executor="ray")
print(json.dumps({"kept": r.docs_out, "run_s": round(time.perf_counter() - t, 1)}))
"""


def _dj_config(corpus: Path, out: Path) -> Path:
    cfg = {
        "project_name": "curate-bench",
        "dataset_path": str(corpus),
        "export_path": str(out / "out.jsonl"),
        "work_dir": str(out / "work"),
        "executor_type": "ray",
        "ray_address": "local",
        "np": 2,
        "open_monitor": False,
        "process": [{"ray_bts_minhash_deduplicator": {
            "tokenization": "space", "window_size": 5, "lowercase": True, "num_permutations": 128,
            "jaccard_threshold": 0.8}}],
    }
    out.mkdir(parents=True, exist_ok=True)
    f = out / "dj.yaml"
    f.write_text(json.dumps(cfg))  # JSON is YAML
    return f


def _kept(path: Path) -> int:
    return sum(sum(1 for _ in f.open()) for f in ([path] if path.is_file() else sorted(path.rglob("*.json*"))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dj-python", required=True)
    ap.add_argument("--docs", type=int, default=10000)
    ap.add_argument("--per-file", type=int, default=2500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", default=str(HERE / "_work" / "dj_ray"))
    a = ap.parse_args()
    from bench_ray import _corpus

    work = Path(a.work)
    corpus = _corpus(HERE / "_work" / "ray", a.docs, a.per_file)
    dj_cli = Path(a.dj_python).parent / "dj-process"
    for r in range(a.rounds):
        for side in ("dj", "curate"):
            out = work / side
            clear_work(out)
            if side == "dj":
                cmd = [str(dj_cli), "--config", str(_dj_config(corpus, out))]
            else:
                cmd = [sys.executable, "-c", CURATE_CHILD, str(corpus), str(out)]
            l0 = load()
            m = measure(cmd, log=out / "log.txt", interval=0.2)
            kept = "?"
            try:
                kept = _kept(out / "out.jsonl") if side == "dj" else _kept(out / "out")
            except OSError:
                pass
            print(f"round {r} {side}: rc {m['rc']}, wall {m['wall']:.1f} s, CPU {m['cpu_s']:.1f} s, "
                  f"max VmHWM {m['max_hwm_mb']:,.0f} MB, peak PSS {m['peak_pss_mb']:,.0f} MB, kept {kept} of "
                  f"{a.docs}, load {l0} -> {load()}", flush=True)
            if m["rc"]:
                print("   " + "\n   ".join((out / "log.txt").read_text().splitlines()[-15:]))


if __name__ == "__main__":
    main()
