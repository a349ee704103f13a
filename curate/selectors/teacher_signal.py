"""Select examples by what the teacher knows about them: teacher entropy, confidence, or NLL of the
reference answer, from the teacher's top-k next-token distributions.

The signals are those of :mod:`curate.models.topk_cache` (top-k + one tail bucket, as the distillation
trainer sees the teacher): ``teacher_entropy`` (low = the teacher is sure what comes next),
``teacher_confidence`` (mean top-1 probability), ``teacher_nll`` (difficulty of the reference answer for
the teacher; KPOD-style difficulty ranks by how hard a target is for the model). Each is averaged over the
response tokens (prompt/response data: the loss positions of ``curate distill``) or over all tokens.

Scores come from the teacher top-k cache ``curate distill`` / ``curate distill-cache`` already wrote
(``cache_dir``: documents are matched to cached sequences by their token ids, tokenised exactly as
``curate distill`` does with the same ``template``/``max_len``) and, for documents not in the cache, from
a forward pass of ``model`` (a folder or ``pkg:`` package + ``gguf_file``). ``model`` is always needed (its
tokenizer turns documents into the cache's token ids); a document with no scored token gets no score and
is not selected.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from curate.core.operator import UID, FitContext
from curate.core.registry import register
from curate.selectors.base import Selector

Signal = Literal["teacher_entropy", "teacher_confidence", "teacher_nll"]
_HIGHER_IS_BETTER = {"teacher_entropy": False, "teacher_confidence": True, "teacher_nll": False}


def tokenize_pairs(tokenizer: Any, prompts: list[str | None], responses: list[str], *, template: str,
                   max_len: int, add_eos: bool = True) -> tuple[list[list[int]], list[int]]:
    """Token ids and prompt lengths, as ``curate distill`` builds them (template, no special tokens, EOS
    appended, cut to ``max_len``); a None prompt means plain text (no prompt part)."""
    eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None
    pre = template.partition("{response}")[0]
    fulls = [r if p is None else template.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    heads = [pre.format(prompt=p) if p is not None else "" for p in prompts]
    p_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    seqs, n_prompt = [], []
    for p, f in zip(p_ids, f_ids, strict=True):
        n = 0
        for x, y in zip(p, f, strict=False):  # BPE may merge across the prompt/response boundary
            if x != y:
                break
            n += 1
        seqs.append((list(f) + ([eos] if eos is not None else []))[:max_len])
        n_prompt.append(n)
    return seqs, n_prompt


def teacher_topk(model: Any, seqs: list[list[int]], *, k: int, pad_id: int, device: str = "cpu",
                 batch_size: int = 8) -> list[dict[str, Any]]:
    """Per sequence the teacher's top-k rows ``{ids [L,k], logprobs [L,k], tail_logmass [L]}`` (log-softmax in
    float32, tail = exact log of the mass outside the top-k), as the cache stores them."""
    import torch

    out: list[dict[str, Any]] = []
    for a in range(0, len(seqs), batch_size):
        group = seqs[a:a + batch_size]
        w = max(len(s) for s in group)
        ids = torch.full((len(group), w), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, s in enumerate(group):
            ids[r, :len(s)] = torch.as_tensor(s)
            att[r, :len(s)] = 1
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float(), -1)
            kk = min(k, lp.shape[-1])
            top = lp.topk(kk, dim=-1)
            if kk == lp.shape[-1]:
                tail = torch.full(lp.shape[:-1], float("-inf"), device=lp.device)
            else:
                rest = lp.scatter(-1, top.indices, float("-inf"))
                tail = torch.logsumexp(rest, dim=-1)
        for r, s in enumerate(group):
            n = len(s)
            out.append({"ids": top.indices[r, :n].cpu(), "logprobs": top.values[r, :n].cpu(),
                        "tail_logmass": tail[r, :n].cpu()})
    return out


@register("teacher_signal")
class TeacherSignalSelector(Selector):
    """Ranks documents by a teacher signal (``signal``; see the module docstring) and keeps the best by
    threshold / top_k / fraction / budget_tokens. Default direction: low entropy, high confidence, low NLL
    (what the teacher knows); set ``higher_is_better`` to flip (e.g. hardest first). Column:
    ``teacher_signal``. Defaults: k = 16 and max_len = 128, as examples/distill/smollm2_cpu.yaml caches."""

    score_column = "teacher_signal"
    requires = ("torch", "transformers", "safetensors")
    extra = "distill"

    class Params(Selector.Params):
        signal: Signal = Field("teacher_entropy", description="which teacher signal ranks the documents")
        cache_dir: str | None = Field(None, description="a teacher top-k cache written by curate distill "
                                      "(matched to documents by token ids)")
        model: str = Field(description="teacher folder or 'pkg:<package>': its tokenizer matches documents "
                           "to the cache, and it scores documents the cache does not hold")
        gguf_file: str | None = Field(None, description="GGUF file inside `model`")
        prompt_field: str | None = Field(None, description="column holding the prompt (the document text is "
                                         "the response); none: the text alone, every token scored")
        template: str = Field("{prompt}\n{response}", description="as data.template of curate distill")
        max_len: int = Field(128, ge=2, description="tokens per document (as data.max_len of curate distill)")
        k: int = Field(16, ge=1, description="top-k ids per position (as teacher_signal.k; 16 by default)")
        batch_size: int = Field(8, ge=1, description="documents per teacher forward")
        device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the teacher runs (default auto: "
                                                       "CUDA when present, else CPU)")
        dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="teacher dtype (bfloat16: "
                                                              "3.3x faster on CPU at KL 0.0012, see distillation.md)")

        @model_validator(mode="after")
        def _source(self):
            if "{prompt}" not in self.template or "{response}" not in self.template:
                raise ValueError("`template` must contain {prompt} and {response}")
            return self

    def _direction(self) -> bool:
        hib = self.params.higher_is_better
        return _HIGHER_IS_BETTER[self.params.signal] if hib is None else hib

    def _tokenizer_and_model(self) -> tuple[Any, Any, str]:
        import importlib.util

        from curate.models.causal_lm import load_causal_lm

        p = self.params
        path = p.model
        if path.startswith("pkg:"):
            spec = importlib.util.find_spec(path[4:])
            if spec is None or not spec.submodule_search_locations:
                raise ValueError(f"model '{path}': package not installed")
            path = next(iter(spec.submodule_search_locations))
        model, tok, dev = load_causal_lm(os.fspath(path), gguf_file=p.gguf_file, device=p.device, dtype=p.dtype)
        return tok, model, dev

    def _tokenized(self, ctx: FitContext) -> tuple[pl.DataFrame, Any, Any, str, list[list[int]], list[int]]:
        """Every document's uid and text (and prompt), the loaded tokenizer/model/device, and the token
        sequences with their prompt lengths, as the teacher (and the trainer's cache) sees them."""
        p = self.params
        cols = [UID, "text"] + ([p.prompt_field] if p.prompt_field else [])
        frames = list(ctx.iter_batches(columns=cols))
        df = pl.concat(frames) if frames else pl.DataFrame(schema={UID: pl.UInt64, "text": pl.Utf8})
        tok, model, dev = self._tokenizer_and_model()
        prompts = df[p.prompt_field].cast(pl.Utf8).to_list() if p.prompt_field else [None] * df.height
        seqs, n_prompt = tokenize_pairs(tok, prompts, df["text"].cast(pl.Utf8).fill_null("").to_list(),
                                        template=p.template, max_len=p.max_len)
        return df, tok, model, dev, seqs, n_prompt

    def compute_scores(self, ctx: FitContext) -> pl.DataFrame:
        from curate.models.topk_cache import iter_sequences, signals_of

        p = self.params
        df, tok, model, dev, seqs, n_prompt = self._tokenized(ctx)
        scores: list[float] = [math.nan] * len(seqs)
        todo = list(range(len(seqs)))
        self.cache_hits = 0
        if p.cache_dir is not None:
            where: dict[tuple[int, ...], list[int]] = {}
            for i, s in enumerate(seqs):
                where.setdefault(tuple(s), []).append(i)
            for row in iter_sequences(p.cache_dir):
                hit = where.pop(tuple(row["input_ids"].tolist()), None)
                for i in hit or ():
                    scores[i] = signals_of(row["ids"], row["logprobs"], row["tail_logmass"], row["input_ids"],
                                           start=max(1, n_prompt[i]))[p.signal]
                    self.cache_hits += 1
            todo = [i for i in todo if math.isnan(scores[i])]
        if todo:
            import torch

            pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
            rows = teacher_topk(model, [seqs[i] for i in todo], k=p.k, pad_id=int(pad), device=dev,
                                batch_size=p.batch_size)
            for i, r in zip(todo, rows, strict=True):
                scores[i] = signals_of(r["ids"], r["logprobs"], r["tail_logmass"],
                                       torch.as_tensor(seqs[i]), start=max(1, n_prompt[i]))[p.signal]
        return pl.DataFrame({UID: df[UID], "score": pl.Series(scores, dtype=pl.Float64).fill_nan(None)})
