"""KenLM language-model benchmark: ``train-lm`` time / peak memory vs corpus size, and perplexity scoring
docs/s against a raw ``kenlm.Model.score`` loop, the load time of the ARPA model against its KenLM binaries
(``build_binary``, from ``scripts/build-kenlm-tools.sh``), plus multi-worker scaling of a perplexity pipeline
with either model.

    python benchmarks/bench_lm.py [--small] [--only score,workers] [--docs N] [--worker-docs N]

Data: Project Gutenberg paragraphs from ``../shared/data/books/gutenberg_slice.jsonl.gz``. The reference
trainer ``shared/reference/kn_arpa.py`` (pure Python) is timed on the smallest size as the peer for
training; Data-Juicer's perplexity filter is not run (its model is downloaded from the internet at first
use, which this machine cannot reach).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _mem import reset_peak, self_hwm_mb  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "books" / "gutenberg_slice.jsonl.gz"
REF = REPO.parent / "shared" / "reference" / "kn_arpa.py"


def paragraphs(max_words: int, skip_books: int = 0) -> list[str]:
    out, words = [], 0
    with gzip.open(DATA, "rt") as f:
        for i, row in enumerate(f):
            if i < skip_books:
                continue
            for p in re.split(r"\r?\n\s*\r?\n", json.loads(row)["text"]):
                n = len(p.split())
                if n >= 5:
                    out.append(p.strip())
                    words += n
                    if words >= max_words:
                        return out
    return out


def _rss_mb() -> float:
    """This process's own peak RSS (VmHWM, benchmarks/_mem.py), MB."""
    return self_hwm_mb()


def _train_child(texts: list[str], out: str, order: int, q) -> None:
    from curate.models.kenlm import train_lm

    reset_peak()  # a forked child: its VmHWM starts from the parent's resident pages, count from here
    base = _rss_mb()
    t = time.perf_counter()
    rep = train_lm(texts, out, order=order, use_lmplz="never")
    q.put((time.perf_counter() - t, _rss_mb(), base, rep.tokens, sum(rep.ngram_counts)))


def _ref_child(texts: list[str], out: str, order: int, q) -> None:
    import importlib.util

    import polars as pl

    from curate.models.kenlm import LMTokenizer

    spec = importlib.util.spec_from_file_location("kn_arpa", REF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines = LMTokenizer().lines(pl.Series(texts))["line"]
    lines = lines.filter(lines.str.contains(r"\S")).to_list()
    base = _rss_mb()
    t = time.perf_counter()
    mod.write_arpa(mod.train(lines, order=order), out)
    q.put((time.perf_counter() - t, _rss_mb(), base, 0, 0))


def in_child(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def bench_train(sizes: list[int], order: int, tmp: Path, ref_size: int) -> list[str]:
    rows = ["| corpus words | tokens | n-grams | train-lm s | tokens/s | peak RSS MB (after imports) |",
            "|---:|---:|---:|---:|---:|---:|"]
    prev = None
    for size in sizes:
        texts = paragraphs(size)
        secs, peak, base, ntok, ngrams = in_child(_train_child, texts, str(tmp / f"m{size}.arpa"), order)
        growth = "" if prev is None else f" (x{secs / prev[0]:.2f} time, x{peak / prev[1]:.2f} RSS for x{size / prev[2]:.0f} data)"
        print(f"train-lm order {order}: {size:>9,} words  {secs:6.2f}s  {ntok / secs:>10,.0f} tok/s  "
              f"peak RSS {peak:,.0f} MB (base {base:,.0f}){growth}", flush=True)
        rows.append(f"| {size:,} | {ntok:,} | {ngrams:,} | {secs:.2f} | {ntok / secs:,.0f} | {peak:,.0f} ({base:,.0f}) |")
        prev = (secs, peak, size)
    if REF.exists():
        texts = paragraphs(ref_size)
        secs, peak, base, _, _ = in_child(_ref_child, texts, str(tmp / "ref.arpa"), order)
        ours = in_child(_train_child, texts, str(tmp / "ours.arpa"), order)
        print(f"reference kn_arpa.py on {ref_size:,} words: {secs:.2f}s, peak RSS {peak:,.0f} MB; "
              f"curate {ours[0]:.2f}s, {ours[1]:,.0f} MB -> x{secs / ours[0]:.1f} faster", flush=True)
        rows.append(f"\nPeer: reference `kn_arpa.py` (pure Python) on {ref_size:,} words: {secs:.2f} s, peak RSS "
                    f"{peak:,.0f} MB; curate {ours[0]:.2f} s, {ours[1]:,.0f} MB (x{secs / ours[0]:.1f} faster).")
    return rows


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_score(model: Path, docs: list[str], repeats: int = 6) -> list[str]:
    """Operator vs bare kenlm loops on the same docs, each timed ``repeats`` times in turn (A B A B, so load
    hits all alike); the best wall and the best CPU seconds (this process, polars threads included)."""
    import kenlm

    from curate.selectors.perplexity import Perplexity

    op = Perplexity(model=str(model))
    batch = pl.DataFrame({"text": docs})
    op.score(batch.head(100))  # load the model (setup) outside the timing
    raw_model = kenlm.Model(str(model))
    norm = op._scorer.lines(batch["text"])["line"]
    lines, blines = norm.to_list(), norm.cast(pl.Binary).to_list()
    sys.path.insert(0, str(REPO / "tests"))
    from core.text_reference import ccnet_normalize_line  # CCNet's own per-line Python normaliser

    paths = {
        "raw": lambda: [raw_model.score(s) for s in lines],
        "raw_bytes": lambda: [raw_model.score(s) for s in blines],
        "op": lambda: op.score(batch),
        "norm": lambda: op._scorer.line_table(batch["text"]),
        "raw_docs": lambda: [raw_model.score(s) for s in docs],
        "ccnet": lambda: [raw_model.score(ccnet_normalize_line(ln)) for d in docs for ln in d.split("\n")],
    }
    wall = {k: float("inf") for k in paths}
    cpu = dict(wall)
    for _ in range(repeats):
        for k, fn in paths.items():
            c, t = _cpu(), time.perf_counter()
            fn()
            wall[k], cpu[k] = min(wall[k], time.perf_counter() - t), min(cpu[k], _cpu() - c)
    n = len(docs)

    def row(label: str, k: str) -> str:
        return (f"| {label} | {n / wall[k]:,.0f} | {wall['raw'] / wall[k]:.2f} | {cpu[k]:.3f} | "
                f"{cpu['raw'] / cpu[k]:.2f} |")

    out = ["| path | docs/s | vs raw loop (wall) | CPU s | vs raw loop (CPU) |", "|---|---:|---:|---:|---:|",
           row("raw `kenlm.Model.score` loop over the normalised lines, str (no normalisation)", "raw"),
           row("the same loop over the lines as bytes (what the operator calls)", "raw_bytes"),
           row("`perplexity` operator `score()` (CCNet normalisation + split + score + token counts + per-doc sums)", "op"),
           row("its line split + CCNet normalisation + token counts alone (one numba pass, polars for the "
               "lines it leaves)", "norm"),
           row("raw `kenlm.Model.score(doc)` on raw, unnormalised docs (one call per doc)", "raw_docs"),
           row("CCNet's way: its Python normaliser per line + `kenlm.Model.score`", "ccnet"),
           f"| **operator vs CCNet's way** (same work: normalise + score) | | **{wall['ccnet'] / wall['op']:.2f}x** | | "
           f"**{cpu['ccnet'] / cpu['op']:.2f}x** |"]
    print(f"scoring {n:,} docs ({len(lines):,} lines): operator {n / wall['op']:,.0f} docs/s, raw kenlm loop "
          f"{n / wall['raw']:,.0f} docs/s -> ratio {wall['raw'] / wall['op']:.2f} wall, {cpu['raw'] / cpu['op']:.2f} CPU; "
          f"(bytes loop: {cpu['raw_bytes'] / cpu['op']:.2f} CPU); split + normalisation + counts {cpu['norm']:.3f} of "
          f"{cpu['op']:.3f} CPU s", flush=True)
    return out


def _load_child(model: str, q) -> None:
    import kenlm

    c0, t0 = time.process_time(), time.perf_counter()
    m = kenlm.Model(model)
    q.put((time.perf_counter() - t0, time.process_time() - c0, m.order))


def bench_load(arpa: Path, tmp: Path) -> tuple[list[str], dict[str, Path]]:
    """Load time of the ARPA model vs its KenLM binaries (each in a fresh process, best of 3), and sizes.
    Every worker of a perplexity pipeline pays this once."""
    from curate.models.kenlm import build_binary, kenlm_tool

    models = {"arpa": arpa}
    rows = ["| model | MB on disk | build s | load s (wall, best of 3) | load CPU s |", "|---|---:|---:|---:|---:|"]
    build = {"arpa": 0.0}
    if kenlm_tool("build_binary") is None:
        print("build_binary not found (bash scripts/build-kenlm-tools.sh): binary rows skipped", flush=True)
    else:
        for st in ("probing", "trie"):
            t = time.perf_counter()
            models[st] = build_binary(arpa, tmp / f"m.{st}.binary", structure=st, overwrite=True)
            build[st] = time.perf_counter() - t
    for name, path in models.items():
        runs = [in_child(_load_child, str(path)) for _ in range(3)]
        wall, cpu, _ = min(runs)
        mb = path.stat().st_size / 1e6
        print(f"load {name}: {mb:.1f} MB, {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
        rows.append(f"| {name} | {mb:.1f} | {build[name]:.2f} | {wall:.3f} | {cpu:.3f} |")
    return rows, models


def _pipeline_run(model: Path, src: Path, tmp: Path, w: int, tag: str) -> tuple[float, float]:
    """Wall and CPU seconds (this process + every worker it waited for) of read -> perplexity -> write."""
    from curate import Pipeline, read, write
    from curate.selectors.perplexity import Perplexity

    work, out = tmp / f"work-{tag}{w}", tmp / f"out-{tag}{w}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    r0s, r0c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    Pipeline(read(str(src)), Perplexity(model=str(model)), write(str(out))).run(
        work_dir=str(work), workers=w, progress=False)
    secs = time.perf_counter() - t
    r1s, r1c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((r0s, r1s), (r0c, r1c)) for f in ("ru_utime", "ru_stime"))
    return secs, cpu


def _shards(docs: list[str], folder: Path, k: int) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(k):  # several shards so workers have something to share
        pl.DataFrame({"id": [f"{i}-{j}" for j in range(len(docs[i::k]))], "text": docs[i::k]}).write_ndjson(
            folder / f"part{i}.jsonl")
    return folder


def bench_workers(model: Path, docs: list[str], tmp: Path, workers: list[int]) -> list[str]:
    """1 vs 2 workers end to end, with start-up apart: each setting also runs on 200 documents (the same
    shards, start-up dominated), and steady docs per CPU second = extra docs / extra CPU seconds."""
    src = _shards(docs, tmp / "docs", 4)
    tiny = _shards(docs[:200], tmp / "tiny", 4)
    rows = [f"model: {model.name}, {len(docs):,} docs in 4 shards; start-up = the same pipeline on 200 docs", "",
            "| workers | wall s | docs/s | speed-up | CPU s (all processes) | start-up CPU s (200 docs) | "
            "steady docs per CPU s |", "|---:|---:|---:|---:|---:|---:|---:|"]
    base = None
    for w in workers:
        t0, c0 = _pipeline_run(model, tiny, tmp, w, "tiny")
        secs, cpu = _pipeline_run(model, src, tmp, w, "full")
        base = base or secs
        steady = (len(docs) - 200) / max(cpu - c0, 1e-9)
        print(f"pipeline {model.name} workers={w}: {secs:.2f} s, {len(docs) / secs:,.0f} docs/s (x{base / secs:.2f}), "
              f"{cpu:.2f} CPU s; 200 docs: {t0:.2f} s, {c0:.2f} CPU s; steady {steady:,.0f} docs per CPU s", flush=True)
        rows.append(f"| {w} | {secs:.2f} | {len(docs) / secs:,.0f} | {base / secs:.2f} | {cpu:.2f} | {c0:.2f} | "
                    f"{steady:,.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="smaller sizes (about a minute)")
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--only", default="train,score,load,workers",
                    help="comma-separated parts to run (default all; arpa-workers adds the workers run with the ARPA "
                    "model); the model is trained in any case")
    ap.add_argument("--docs", type=int, default=None, help="held-out paragraphs to score (default 40,000; "
                    "10,000 with --small)")
    ap.add_argument("--repeats", type=int, default=6, help="rounds of the scoring paths, run in turn (A B A B); "
                    "the best of each is reported (default 6)")
    ap.add_argument("--worker-docs", type=int, default=None, help="documents of the workers run (default: "
                    "--docs); repeats the held-out paragraphs when larger")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if not DATA.exists():
        sys.exit(f"data not found: {DATA}")
    sizes = [100_000, 300_000, 900_000] if args.small else [250_000, 1_000_000, 4_000_000]
    ref_size = 50_000 if args.small else 100_000
    n_docs = args.docs or (10_000 if args.small else 40_000)
    (REPO / "benchmarks" / "_work").mkdir(parents=True, exist_ok=True)
    train_rows, score_rows, load_rows, worker_rows = [], [], [], []
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks" / "_work") as tmp_s:
        tmp = Path(tmp_s)
        if "train" in parts:
            train_rows = bench_train(sizes, args.order, tmp, ref_size)
        model = tmp / f"m{sizes[1]}.arpa"
        if not model.exists():
            in_child(_train_child, paragraphs(sizes[1]), str(model), args.order)
        docs = paragraphs(n_docs * 80, skip_books=150)[:n_docs]
        if "score" in parts:
            score_rows = bench_score(model, docs, args.repeats)
        if "load" in parts or "workers" in parts:
            load_rows, models = bench_load(model, tmp)
        if "workers" in parts:
            wdocs = docs * -(-(args.worker_docs or n_docs) // len(docs))
            wdocs = wdocs[:args.worker_docs or n_docs]
            if "arpa-workers" in parts or "probing" not in models:  # each ARPA worker parses the text model
                worker_rows = bench_workers(model, wdocs, tmp, [1, 2, 1, 2]) + [""]
            if "probing" in models:
                worker_rows += bench_workers(models["probing"], wdocs, tmp, [1, 2, 1, 2])
    cmd = "python " + " ".join(["benchmarks/bench_lm.py", *sys.argv[1:]])
    print("\n".join([f"\n## `{cmd}`", "", f"### train-lm (order {args.order}, whitespace tokens)", *train_rows,
                     "", f"### perplexity scoring ({len(docs):,} held-out Gutenberg paragraphs, model from "
                     f"{sizes[1]:,} words)", *score_rows, "", "### model load (per worker process)", *load_rows,
                     "", "### workers (run in the order 1, 2, 1, 2)", *worker_rows]))


if __name__ == "__main__":
    main()
