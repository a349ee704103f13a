"""Greedy answers of teacher and student to held-out prompts: ``samples.jsonl`` + distinct-2 for the report.

One JSON object per prompt: ``{"prompt", "reference", "teacher", "student"}`` (decoded text, prompt
excluded, generation stopped at EOS or ``max_new_tokens``). Distinct-2 (Li et al. 2016, via
:func:`curate.metrics.text.distinct_n`) is reported over all student answers together and as the mean over
answers: a student that loops ("the the the ...") scores near 0 on the per-answer figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from curate.distill.data import left_pad


@torch.no_grad()
def greedy(model: Any, prompts: list[list[int]], *, pad_id: int, eos_id: int | None, max_new_tokens: int,
           device: torch.device) -> list[list[int]]:
    """Greedy continuations (token ids, prompt excluded, cut after EOS) of left-padded ``prompts``."""
    ids, att = left_pad(prompts, pad_id)
    lp = ids.shape[1]
    was = model.training
    model.eval()
    kw: dict[str, Any] = {"pad_token_id": pad_id}
    if eos_id is not None:
        kw["eos_token_id"] = eos_id
    out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, **kw)
    model.train(was)
    res = []
    for g in out[:, lp:].cpu().tolist():
        if eos_id is not None and eos_id in g:
            g = g[: g.index(eos_id)]
        res.append(g)
    return res


def write_samples(out_dir: str | Path, *, student: Any, teacher: Any, tokenizer: Any, data: Any, n: int,
                  max_new_tokens: int, pad_id: int, eos_id: int | None, device: torch.device) -> dict[str, Any]:
    """Write ``samples.jsonl`` for the first ``n`` held-out prompt/response examples; return the report
    fields (``samples``, ``distinct_2``, ``distinct_2_per_answer``, and the teacher's for comparison)."""
    from curate.metrics.text import distinct_n

    idx = [i for i in range(len(data)) if data.n_prompt[i] > 0][:n]
    if not idx:
        return {}
    prompts = [data.seqs[i][: data.n_prompt[i]] for i in idx]
    kw = {"pad_id": pad_id, "eos_id": eos_id, "max_new_tokens": max_new_tokens, "device": device}
    s_out = greedy(student, prompts, **kw)
    t_out = greedy(teacher, prompts, **kw)
    dec = lambda t: tokenizer.decode(t, skip_special_tokens=True).strip()  # noqa: E731
    rows = [{"prompt": dec(p), "reference": dec(data.seqs[i][data.n_prompt[i]:]), "teacher": dec(t),
             "student": dec(s)} for i, p, t, s in zip(idx, prompts, t_out, s_out, strict=True)]
    path = Path(out_dir) / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    def per_answer(texts: list[str]) -> float:
        vals = [distinct_n([t], 2) for t in texts if len(t.split()) >= 2]
        return sum(vals) / len(vals) if vals else 0.0

    st, te = [r["student"] for r in rows], [r["teacher"] for r in rows]
    return {"samples": len(rows), "distinct_2": distinct_n(st, 2), "distinct_2_per_answer": per_answer(st),
            "teacher_distinct_2": distinct_n(te, 2), "teacher_distinct_2_per_answer": per_answer(te)}
