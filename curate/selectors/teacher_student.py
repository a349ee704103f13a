"""Select examples by what the teacher knows *and the student does not yet*: teacher-student KL, the
student's loss on the reference tokens, or KPOD's step difficulty (issue 17 item 2).

Signals, each a mean over the document's scored tokens (the response of prompt/response data, as the loss
of ``curate distill`` covers; else every token), computed in :mod:`curate.models.teacher_student`:

* ``teacher_student_kl``: KL(teacher || student) on the teacher's top-k ids plus one tail bucket (the
  student's log-probs gathered on the cached ids, its rest mass by logsumexp); exact when k = V, else a
  lower bound of the full-vocabulary KL -- what the distillation loss on a cached teacher sees. High = the
  student has the most to learn there (default: keep the highest).
* ``student_nll``: the student's NLL of the reference token (default: keep the highest, the hardest for
  the student).
* ``kpod_difficulty``: the mean over reasoning steps of KPOD's step difficulty, the weighted token
  generation loss of the step's tokens under the teacher (Feng et al. 2024; steps cut by ``step_pattern``,
  token weights ``significance``). Default: keep the lowest (easy rationales, as ``teacher_nll``).

The teacher's side comes from the top-k cache ``curate distill`` wrote (``cache_dir``, documents matched by
token ids as in the ``teacher_signal`` selector) or, for documents not in the cache, from a forward of
``model``; the student (``student``) runs once over the documents. Column: ``teacher_student``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from curate.core.operator import UID, FitContext
from curate.core.registry import register
from curate.selectors.teacher_signal import TeacherSignalSelector

Signal = Literal["teacher_student_kl", "student_nll", "kpod_difficulty"]
_HIGHER_IS_BETTER = {"teacher_student_kl": True, "student_nll": True, "kpod_difficulty": False}


@register("teacher_student")
class TeacherStudentSelector(TeacherSignalSelector):
    """Ranks documents by a teacher-student signal (``signal``; see the module docstring) and keeps the best
    by threshold / top_k / fraction / budget_tokens. Default direction: high KL, high student NLL (what
    the student has most to learn), low KPOD difficulty; ``higher_is_better`` flips it. Column:
    ``teacher_student``. Defaults k = 16 and max_len = 128, as examples/distill/smollm2_cpu.yaml caches."""

    score_column = "teacher_student"
    score_doc = "the teacher-student signal of the document (mean over its scored tokens)"
    score_null = "null when the document has no scored token"

    class Params(TeacherSignalSelector.Params):
        signal: Signal = Field("teacher_student_kl", description="which signal ranks the documents")
        student: str | None = Field(None, description="student folder or 'pkg:<package>' (same tokenizer as "
                                    "the teacher); needed by teacher_student_kl and student_nll")
        student_gguf_file: str | None = Field(None, description="GGUF file inside `student`")
        step_pattern: str = Field(r"\n|[.!?]\s*$", description="kpod_difficulty: regex on a token's decoded "
                                  "text that ends a reasoning step (as data.kpod.step_pattern)")
        significance: Literal["uniform", "teacher_confidence"] = Field(
            "uniform", description="kpod_difficulty: token weights in the step difficulty (as "
            "data.kpod.significance)")

        @model_validator(mode="after")
        def _student(self):
            if self.signal != "kpod_difficulty" and not self.student:
                raise ValueError(f"signal '{self.signal}' needs `student`")
            return self

    def _direction(self) -> bool:
        hib = self.params.higher_is_better
        return _HIGHER_IS_BETTER[self.params.signal] if hib is None else hib

    def _student(self, dev: str) -> Any:
        import importlib.util

        from curate.models.causal_lm import load_causal_lm

        p = self.params
        path = p.student
        assert path is not None
        if path.startswith("pkg:"):
            spec = importlib.util.find_spec(path[4:])
            if spec is None or not spec.submodule_search_locations:
                raise ValueError(f"student '{path}': package not installed")
            path = next(iter(spec.submodule_search_locations))
        model, _, _ = load_causal_lm(os.fspath(path), gguf_file=p.student_gguf_file, device=dev, dtype=p.dtype)
        return model.eval()

    def compute_scores(self, ctx: FitContext) -> pl.DataFrame:
        import torch

        from curate.models.teacher_student import (
            kpod_difficulty,
            step_end_table,
            student_signals,
            teacher_rows,
        )
        from curate.models.topk_cache import iter_sequences

        p = self.params
        df, tok, model, dev, seqs, n_prompt = self._tokenized(ctx)
        rows: list[dict[str, Any] | None] = [None] * len(seqs)
        self.cache_hits = 0
        if p.cache_dir is not None:
            where: dict[tuple[int, ...], list[int]] = {}
            for i, s in enumerate(seqs):
                where.setdefault(tuple(s), []).append(i)
            for row in iter_sequences(p.cache_dir):
                for i in where.pop(tuple(row["input_ids"].tolist()), None) or ():
                    rows[i] = row
                    self.cache_hits += 1
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            for i, r in zip(todo, teacher_rows(model, [seqs[i] for i in todo], k=p.k, pad_id=int(pad), device=dev,
                                               batch_size=p.batch_size), strict=True):
                rows[i] = r
        vocab = int(model.get_output_embeddings().weight.shape[0])
        starts = [max(1, n) for n in n_prompt]
        full = [r for r in rows if r is not None]
        if p.signal == "kpod_difficulty":
            ends = step_end_table(tok, vocab, p.step_pattern)
            scores = [kpod_difficulty(r, s, ends, vocab=vocab, significance=p.significance)
                      for r, s in zip(full, starts, strict=True)]
        else:
            del model  # the teacher's part is done: free it before the student loads
            student = self._student(dev)
            with torch.inference_mode():
                scores = student_signals(student, full, starts, pad_id=int(pad), device=dev,
                                         batch_size=p.batch_size, vocab=vocab)[p.signal]
        scores = [math.nan if s is None else s for s in scores]
        return pl.DataFrame({UID: df[UID], "score": pl.Series(scores, dtype=pl.Float64).fill_nan(None)})
