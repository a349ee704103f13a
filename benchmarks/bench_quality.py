"""Data-level quality: do curate's default filters and dedup agree with human labels?

    python benchmarks/bench_quality.py [--pairs 1000] [--no-semdedup]

1. Filters vs DCLM's human quality judgments (``../shared/data/quality/majority_data.jsonl``, 499 real
   Common Crawl snippets labelled 1 = good / 0 = bad by majority vote): each filter of the default
   FineWeb-style chain (examples/pipeline.yaml: Gopher repetition, Gopher quality, C4 quality, FineWeb
   quality) alone and the whole chain; a kept document is a "good" prediction. Prints precision (share of
   kept that humans call good), recall (share of good that is kept), the kept share and the base rate.
2. Dedup vs MRPC paraphrase labels (``../shared/data/paraphrase/msr_paraphrase_train.txt``): both
   sentences of the first ``--pairs`` pairs become documents; a pair is predicted duplicate when dedup
   puts both sentences in one cluster (MinHash: same ``dup_cluster_id``; SemDeDup: one removed as
   ``semdup_of`` the other). Precision/recall against the paraphrase label, for MinHash at several
   thresholds (word 5-grams; and char 5-grams, closer to sentence-level rewording) and SemDeDup on
   all-MiniLM-L6-v2 at several eps.

Everything runs through curate's own pipeline API, so the figures are the operators' real decisions.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _pr(pred: list[bool], gold: list[bool]) -> dict[str, float]:
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if tp else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "predicted": tp + fp, "n": len(gold)}


def _kept_ids(tmp: Path, name: str, docs_path: Path, *ops) -> set[str]:
    from curate import Pipeline, read, read_output, write

    out = tmp / name
    Pipeline(read(str(docs_path)), *ops, write(str(out / "out"), format="parquet")).run(
        work_dir=str(out / "work"), workers=1, progress=False)
    df = read_output(out / "out")
    return set(df["id"].to_list()) if df.height else set()


def bench_filters(tmp: Path) -> list[dict]:
    from curate.filters.c4 import C4Quality, FineWebQuality
    from curate.filters.gopher import GopherQuality, GopherRepetition

    rows = [json.loads(line) for line in open(DATA / "quality" / "majority_data.jsonl", encoding="utf-8")]
    docs = tmp / "quality.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"q{i}", "text": r["text"], "label": int(r["label"])}) + "\n")
    gold = [int(r["label"]) == 1 for r in rows]
    chains = {
        "gopher_repetition": [GopherRepetition()],
        "gopher_quality": [GopherQuality()],
        "c4_quality (no terminal-punct rule, as FineWeb)": [C4Quality(filter_no_terminal_punct=False)],
        "fineweb_quality": [FineWebQuality()],
        "default chain (examples/pipeline.yaml order)": [GopherRepetition(), GopherQuality(),
                                                         C4Quality(filter_no_terminal_punct=False), FineWebQuality()],
    }
    out = []
    for i, (name, ops) in enumerate(chains.items()):
        kept = _kept_ids(tmp, f"f{i}", docs, *ops)
        pred = [f"q{j}" in kept for j in range(len(rows))]
        res = _pr(pred, gold) | {"filter": name, "kept_share": sum(pred) / len(pred), "base_rate": sum(gold) / len(gold)}
        out.append(res)
    return out


def _mrpc(n_pairs: int) -> tuple[list[tuple[str, str, bool]], dict[str, str]]:
    pairs, sents = [], {}
    with open(DATA / "paraphrase" / "msr_paraphrase_train.txt", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            if len(row) != 5:
                continue
            label, a, b, sa, sb = row
            pairs.append((f"s{a}", f"s{b}", label == "1"))
            sents[f"s{a}"], sents[f"s{b}"] = sa, sb
            if len(pairs) >= n_pairs:
                break
    return pairs, sents


def _clusters(tmp: Path, name: str, docs: Path, op, column: str) -> dict[str, object]:
    """id -> cluster key from the output and the rejects of one dedup run."""
    import polars as pl

    from curate import Pipeline, read, read_output, write
    from curate.io.writers import RejectsSpec

    out = tmp / name
    Pipeline(read(str(docs)), op, write(str(out / "out"), format="parquet"),
             RejectsSpec(path=str(out / "rej"), format="parquet")).run(work_dir=str(out / "work"), workers=1,
                                                                        progress=False)
    frames = [read_output(out / "out")]
    for step_dir in (out / "rej").iterdir():
        frames.append(read_output(step_dir))
    df = pl.concat([f.select("id", column) for f in frames if column in f.columns], how="vertical_relaxed")
    return dict(df.iter_rows())


def bench_dedup(tmp: Path, n_pairs: int, semdedup: bool) -> list[dict]:
    from curate.filters.minhash import MinHashDedup

    pairs, sents = _mrpc(n_pairs)
    docs = tmp / "mrpc.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for sid, text in sents.items():
            f.write(json.dumps({"id": sid, "text": text}) + "\n")
    gold = [g for _, _, g in pairs]
    out = []
    for ngram_kind, n in (("word", 5), ("char", 5)):
        for thr in (0.8, 0.5, 0.3):
            t0 = time.perf_counter()
            cl = _clusters(tmp, f"mh_{ngram_kind}{thr}", docs,
                           MinHashDedup(threshold=thr, ngram=n, shingle=ngram_kind, verify=False), "dup_cluster_id")
            pred = [cl.get(a) is not None and cl.get(a) == cl.get(b) for a, b, _ in pairs]
            out.append(_pr(pred, gold) | {"method": f"minhash {ngram_kind} {n}-grams, threshold {thr}",
                                          "seconds": time.perf_counter() - t0})
    if semdedup:
        from curate.filters.semdedup import SemDeDup

        for eps in (0.05, 0.1, 0.2):
            t0 = time.perf_counter()
            cl = _clusters(tmp, f"sd{eps}", docs, SemDeDup(eps=eps), "semdup_of")
            pred = [cl.get(a) == b or cl.get(b) == a for a, b, _ in pairs]
            out.append(_pr(pred, gold) | {"method": f"semdedup MiniLM, eps {eps} (cosine > {1 - eps:.2f})",
                                          "seconds": time.perf_counter() - t0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000, help="MRPC pairs to use (4,076 in the train file)")
    ap.add_argument("--no-semdedup", action="store_true", help="skip SemDeDup (embedding is the slow part)")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder not found at {DATA}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("## Filters vs DCLM human quality labels (499 docs)\n")
        print("| filter | precision | recall | F1 | kept share | base rate (good) |\n|---|---|---|---|---|---|")
        for r in bench_filters(tmp):
            print(f"| {r['filter']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                  f"{r['kept_share']:.3f} | {r['base_rate']:.3f} |")
        print(f"\n## Dedup vs MRPC paraphrase labels ({args.pairs} pairs)\n")
        print("| method | precision | recall | F1 | pairs predicted | seconds |\n|---|---|---|---|---|---|")
        for r in bench_dedup(tmp, args.pairs, not args.no_semdedup):
            print(f"| {r['method']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                  f"{r['predicted']} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
