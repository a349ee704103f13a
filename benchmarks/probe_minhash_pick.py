"""Driver memory of MinHash's keep step (issue 14 item 2), before and after it became a group step, on the
scratch files of a finished verified run (``bench_minhash_scale.py --keep-work``):

    python benchmarks/probe_minhash_pick.py WORK {old,local,ray}

``old``: what the driver did before (candidates' metadata gathered with the memory maps, every label read,
the one-process keep step: ``_old_cluster`` of tests/filters/test_minhash_pick.py); ``local``/``ray``: the
spill with row keys only, then ``map_groups`` of ``_pick_group`` with the local / Ray global ops (a local Ray
instance with 2 CPUs). Imports, numba kernels and (ray) a small warm-up map_groups come first; then the
process's peak RSS is reset (``/proc/self/clear_refs``) and the peaks above the RSS at their start of the
two phases (the spill into the memory maps, whose written pages count as RSS; the keep step) are printed as
JSON with the state rows and counters (the same in every mode).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":")) / 1024


def main() -> None:
    import numpy as np
    import polars as pl

    from curate.core.global_ops import GlobalOps
    from curate.core.operator import UID
    from curate.filters import _minhash_kernels as K
    from curate.filters.minhash import _pick_group, _spill_candidates

    work, mode = Path(sys.argv[1]), sys.argv[2]
    (mm,) = [p for p in work.rglob("minhash_mmap_*") if p.is_dir()]
    key = mm.name.removeprefix("minhash_mmap_")
    scratch = mm.parent
    cand_files = sorted((scratch / f"minhash_cand_{key}_1").glob("*.parquet"))
    label_files = sorted((scratch / f"minhash_verified_{key}").glob("part-*.parquet"))
    k = len(pl.read_parquet(cand_files[0], columns=["sig"], n_rows=1)["sig"][0]) // 4  # num_perm
    out = Path("/tmp") / f"probe_pick_{mode}"
    K.pair_jaccards(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, k), np.uint32),
                    np.zeros(1, np.uint64), np.array([0, 1], np.int64), True)
    s = {"keep": "earliest", "verify": True}
    ops: GlobalOps = GlobalOps()
    if mode == "ray":
        import ray

        from curate.executors.ray_global import RayGlobalOps

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=2048 << 20)
        ops = RayGlobalOps(lambda: ray)
    if mode == "old":  # the old step, kept as the reference of the tests
        test = HERE.parent / "tests" / "filters" / "test_minhash_pick.py"
        spec = importlib.util.spec_from_file_location("test_minhash_pick", test)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:  # warm-up: Ray Data's (or polars') first use on one file
        _spill_candidates(cand_files[:1], k, True, out / "warm_mm", columns=(UID,))
        ops.map_groups(cand_files[:1], key=UID, columns=[UID, "id", "length", "score"], labels=label_files,
                       order=[UID], fn=partial(_pick_group, str(out / "warm_mm"), "earliest", True),
                       out_dir=out / "warm_state")
    rss0 = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    phases = {}

    def phase(name: str, rss: float) -> float:  # the phase's peak above the RSS it started with; reset
        phases[name] = round(_status_mb("VmHWM") - rss)
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")

    if mode == "old":
        cands = _spill_candidates(cand_files, k, True, out / "mm")
        rss1 = phase("spill_peak_above_mb", rss0)
        labels = pl.read_parquet(label_files)
        stats: dict = {}
        state = mod._old_cluster(cands, s, stats, labels=labels)
        state.write_parquet(out / "state.parquet")
        rows = state.height
    else:
        c = _spill_candidates(cand_files, k, True, mm, columns=(UID,))
        n = c.meta.height
        del c
        rss1 = phase("spill_peak_above_mb", rss0)
        files, counts = ops.map_groups(cand_files, key=UID, columns=[UID, "id", "length", "score"],
                                       labels=label_files, order=[UID],
                                       fn=partial(_pick_group, str(mm), "earliest", True),
                                       out_dir=out / "state", nrows=n * 10)
        rows = sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)
        stats = {"clusters": counts["clusters"], "removed": counts["removed"]}
    secs = time.perf_counter() - t0
    phase("keep_step_peak_above_mb", rss1)
    print(json.dumps({"mode": mode, "candidates_files": len(cand_files), "state_rows": rows, **stats,
                      "rss_before_mb": round(rss0), "rss_after_spill_mb": round(rss1), **phases,
                      "seconds": round(secs, 1)}))


if __name__ == "__main__":
    main()
