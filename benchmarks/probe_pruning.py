"""Probe: SmolLM2-135M-Instruct layer importance on Dolly calibration examples, and the held-out NLL a
depth-pruned copy starts at for several kept-layer counts, by Block Influence, by drop-one NLL, and for
evenly spaced layers (the baseline that the calibration note shows to break the model).

    PYTHONPATH=. python benchmarks/probe_pruning.py [--calib 32] [--keep 12,16,20]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from curate.distill.config import DistillConfig
from curate.distill.data import collate
from curate.distill.run import prepare
from curate.models import pruning as P


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/distill/smollm2_cpu.yaml")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--keep", default="12,16,20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/probe_pruning.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = DistillConfig.from_yaml(a.config)
    p = prepare(cfg, need_student=False)
    pad = p.pad_id

    def batches(data, n):
        out = []
        for s in range(0, min(n, len(data)), 8):
            idx = range(s, min(n, len(data), s + 8))
            b = collate([data.seqs[i] for i in idx], [data.n_prompt[i] for i in idx], pad)
            out.append((b["input_ids"], b["attention_mask"], b["labels"]))
        return out

    cal, ho = batches(p.train, a.calib), batches(p.eval, a.heldout)
    t = p.teacher.eval()
    res = {"teacher_heldout_nll": P.calibration_nll(t, ho)}
    t0 = time.perf_counter()
    res["block_influence"] = P.block_influence(t, cal)
    res["block_influence_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["nll_drop"] = P.nll_drop(t, cal)
    res["nll_drop_s"] = time.perf_counter() - t0
    n = len(P.decoder_layers(t))
    for k in [int(x) for x in a.keep.split(",")]:
        even = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
        for name, kept in (("block_influence", P.choose_layers(res["block_influence"], k)),
                           ("nll_drop", P.choose_layers(res["nll_drop"], k)), ("even", even)):
            s = P.depth_prune(t, kept)
            res[f"keep{k}_{name}"] = {"layers": kept, "heldout_nll": P.calibration_nll(s, ho)}
            print(k, name, kept, round(res[f"keep{k}_{name}"]["heldout_nll"], 3), flush=True)
            del s
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    main()
