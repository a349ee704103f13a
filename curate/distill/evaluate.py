"""Held-out evaluation: the training objective on held-out data during training (:func:`held_out_loss`),
and the final report of a distilled student against its teacher, written as report.md + report.json.

Per model: perplexity (token-level, masked NLL), ECE (15 bins, top-1 confidence vs the next token),
forward tokens/s, parameter count, peak memory (CUDA: ``max_memory_allocated`` per model; CPU: the
process peak RSS, which cannot be split per model). Between them: mean token KL(teacher || student)
(true KL), JS, top-1 agreement, performance retention = teacher_ppl / student_ppl (and on NLL).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from curate.distill.data import TokenData, collate
from curate.models.causal_lm import IGNORE
from curate.models.lm_metrics import LMEvalAccumulator
from curate.models.perf import param_count, peak_memory_mb, reset_peak_memory, tokens_per_second
from curate.models.retention import performance_retention

if TYPE_CHECKING:
    from curate.distill.trainer import DistillTrainer


@torch.no_grad()
def held_out_loss(trainer: DistillTrainer) -> dict[str, float]:
    """Held-out mean per-token training loss (same loss and teacher signal as training, no gradients) and its
    components (``ce``, ``kd``); batches the signal has nothing for (a cache-only teacher) are skipped."""
    d = trainer.eval_data
    assert d is not None
    cfg = trainer.cfg.eval
    trainer.student.eval()
    tot: dict[str, float] = {}
    n = 0
    nb = math.ceil(len(d) / cfg.batch_size)
    if cfg.max_batches:
        nb = min(nb, cfg.max_batches)
    for j in range(nb):
        idx = list(range(j * cfg.batch_size, min(len(d), (j + 1) * cfg.batch_size)))
        b: dict[str, Any] = collate([d.seqs[i] for i in idx], [d.n_prompt[i] for i in idx], trainer.pad_id)
        b["idx"] = None  # held-out rows are not in a teacher cache
        sums = trainer.batch_loss(b, 1, backward=False)
        sums.pop("tokens", None)
        if not sums:
            continue
        for k, v in sums.items():
            tot[k] = tot.get(k, 0.0) + v
        n += int((b["labels"][:, 1:] != IGNORE).sum())
    trainer.student.train()
    return {k: v / max(1, n) for k, v in tot.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate_models(student: Any, teacher: Any, data: TokenData, *, device: torch.device, vocab: int,
                    pad_id: int = 0, batch_size: int = 8, max_batches: int | None = None,
                    amp: torch.dtype | None = None, ece_bins: int = 15) -> dict[str, Any]:
    """Metrics of student (and teacher, if given) on held-out ``data``; see the module docstring.

    Batch by batch (logits are never kept for the whole set): each model's forward is timed on its
    own; metrics are accumulated exactly over all scored tokens.
    """
    models = {"student": student} | ({"teacher": teacher} if teacher is not None else {})
    stats = {k: {"secs": 0.0, "tokens": 0, "peak": 0.0} for k in models}
    for m in models.values():
        m.eval()
    acc = LMEvalAccumulator(n_bins=ece_bins)
    nb = math.ceil(len(data) / batch_size)
    if max_batches:
        nb = min(nb, max_batches)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    for j in range(nb):
        idx = range(j * batch_size, min(len(data), (j + 1) * batch_size))
        b = collate([data.seqs[i] for i in idx], [data.n_prompt[i] for i in idx], pad_id)
        ids, att = b["input_ids"].to(device), b["attention_mask"].to(device)
        out = {}
        for name, m in models.items():
            reset_peak_memory(str(device))
            box: dict[str, Any] = {}

            def run(m: Any = m, box: dict[str, Any] = box, ids: Any = ids, att: Any = att) -> int:
                with ctx():
                    box["lo"] = m(input_ids=ids, attention_mask=att).logits
                return int(att.sum())

            _, n, secs = tokens_per_second(run, str(device))
            st = stats[name]
            st["secs"] += secs
            st["tokens"] += n
            st["peak"] = max(st["peak"], peak_memory_mb(str(device)))
            out[name] = box["lo"][:, :-1, :vocab].float()
        acc.add(out["student"], b["labels"][:, 1:].to(device), out.get("teacher"))
    res: dict[str, Any] = {"eval_examples": len(data)}
    for name, m in models.items():
        st = stats[name]
        res[name] = {"params": param_count(m), "tokens_per_s": st["tokens"] / st["secs"] if st["secs"] else None,
                     "eval_tokens": st["tokens"], "eval_s": st["secs"], "peak_memory_mb": st["peak"],
                     "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"}
    r = acc.result()
    res["student"].update(r["student"])
    res["tokens_scored"] = r["tokens"]
    if "teacher" in r:
        res["teacher"].update(r["teacher"])
        res["kl_teacher_student"] = r["kl_teacher_student"]
        res["js_teacher_student"] = r["js_teacher_student"]
        res["top1_agreement"] = r["top1_agreement"]
        res["retention_ppl"] = performance_retention(res["student"]["ppl"], res["teacher"]["ppl"], higher_is_better=False)
        res["retention_nll"] = performance_retention(res["student"]["nll"], res["teacher"]["nll"], higher_is_better=False)
        res["compression"] = res["teacher"]["params"] / max(1, res["student"]["params"])
    return res


def _f(v: Any, nd: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report_markdown(rep: dict[str, Any]) -> str:
    """The report as a markdown document (tables of per-model and teacher-vs-student metrics)."""
    ev = rep["eval"]
    lines = [f"# Distillation report: {rep.get('name', '')}".rstrip(), ""]
    lines += ["| metric | teacher | student |", "|---|---|---|"]
    t, s = ev.get("teacher", {}), ev["student"]
    for key, label in (("params", "parameters"), ("ppl", "held-out perplexity"), ("nll", "held-out NLL (nats/token)"),
                       ("ece", "ECE (15 bins)"), ("tokens_per_s", "eval forward tokens/s"),
                       ("peak_memory_mb", "peak memory MiB")):
        if key in s or key in t:  # a mode's own report may not have every metric (cross-tokenizer: no shared ids)
            lines.append(f"| {label} | {_f(t.get(key, '-'))} | {_f(s.get(key))} |")
    lines += ["", "| teacher vs student | value |", "|---|---|"]
    for key, label in (("retention_ppl", "performance retention (teacher ppl / student ppl)"),
                       ("retention_nll", "retention on NLL (teacher / student)"),
                       ("top1_agreement", "top-1 agreement"), ("kl_teacher_student", "mean token KL(teacher || student)"),
                       ("js_teacher_student", "mean token JS (nats)"), ("compression", "parameter ratio teacher/student"),
                       ("tokens_scored", "held-out tokens scored")):
        if key in ev:
            lines.append(f"| {label} | {_f(ev[key])} |")
    tr = rep.get("train", {})
    if tr:
        lines += ["", "| training | value |", "|---|---|"]
        for key in ("steps", "final_loss", "train_tokens", "train_s", "train_tokens_per_s", "peak_memory_mb", "device"):
            if key in tr and tr[key] is not None:
                lines.append(f"| {key} | {_f(tr[key])} |")
    if s.get("peak_memory_kind") == "process_peak_rss":
        lines += ["", "Peak memory on CPU is the process's peak RSS (teacher and student share the process)."]
    if rep.get("config"):
        lines += ["", "Loss: " + json.dumps(rep["config"].get("loss", {})),
                  "Teacher signal: " + json.dumps(rep["config"].get("teacher_signal", {}))]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, rep: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pj, pm = out / "report.json", out / "report.md"
    pj.write_text(json.dumps(rep, indent=1, default=str), encoding="utf-8")
    pm.write_text(report_markdown(rep), encoding="utf-8")
    return pj, pm
