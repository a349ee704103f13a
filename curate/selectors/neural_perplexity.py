"""Perplexity of each document under a transformers causal language model."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.operator import PATH_MODEL, Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register


def encode(tokenizer: Any, texts: list[str], max_length: int, add_bos: bool) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (BOS included), BOS prepended when asked for and
    the tokenizer does not add one itself."""
    bos = tokenizer.bos_token_id if add_bos else None
    limit = max_length - (1 if bos is not None else 0)
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max(1, limit))["input_ids"]
    if bos is None:
        return ids
    return [x if (x and x[0] == bos) else [bos, *x] for x in ids]


def _batches(lengths: np.ndarray, max_batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Groups of document indices, longest first, each padded batch within the token budget."""
    order = np.argsort(-lengths, kind="stable")
    out, start = [], 0
    while start < order.size:
        width = max(int(lengths[order[start]]), 1)
        take = max(1, min(batch_size, max_batch_tokens // width))
        out.append(order[start:start + take])
        start += take
    return out


def perplexities(model: Any, tokenizer: Any, texts: list[str], *, device: str = "cpu", max_length: int = 1024,
                 max_batch_tokens: int = 4096, batch_size: int = 32, add_bos: bool = True) -> np.ndarray:
    """exp(mean negative log-likelihood of each token given the ones before it), per text.

    Batches are padded on the right with an attention mask (causal attention never sees the padding),
    log-probabilities are taken in float32. Texts with no predicted token give NaN.
    """
    import torch

    ids = encode(tokenizer, texts, max_length, add_bos)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    out = np.full(len(ids), np.nan)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    for group in _batches(lengths, max_batch_tokens, batch_size):
        width = int(lengths[group].max())
        if width < 2:
            continue
        inp = torch.full((group.size, width), pad, dtype=torch.long)
        mask = torch.zeros((group.size, width), dtype=torch.long)
        for row, i in enumerate(group):
            inp[row, : lengths[i]] = torch.tensor(ids[i], dtype=torch.long)
            mask[row, : lengths[i]] = 1
        inp, mask = inp.to(device), mask.to(device)
        with torch.inference_mode():
            logits = model(input_ids=inp, attention_mask=mask).logits[:, :-1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok_lp = logp.gather(-1, inp[:, 1:].unsqueeze(-1)).squeeze(-1)
            m = mask[:, 1:].to(tok_lp.dtype)
            n = m.sum(dim=1)
            nll = -(tok_lp * m).sum(dim=1) / n.clamp(min=1)
            ppl = torch.where(n > 0, torch.exp(nll), torch.full_like(nll, float("nan")))
        out[group] = ppl.double().cpu().numpy()
    return out


@register("neural_perplexity")
class NeuralPerplexity(Filter):
    """Scores each document's perplexity under a transformers causal LM and (optionally) drops documents
    above ``max_ppl``.

    Perplexity = exp(mean token negative log-likelihood), the quantity ``model(ids, labels=ids).loss``
    exponentiates; a BOS token is prepended (``add_bos``) so the first word is scored too. Documents are
    truncated to ``max_length`` tokens. Batched longest-first under a token budget with right padding and an
    attention mask; on a GPU (when present, ``device: auto``) the model runs in bfloat16 (float16 where
    bf16 is unsupported), on CPU in float32. ``model`` is a folder / hub id or a ``.gguf`` file (or folder
    + ``gguf_file``); GGUF models are dequantized once and cached as safetensors (see ``_hf_model``).
    Data-Juicer's ``perplexity_filter`` does the same with KenLM (``max_ppl`` 1500).
    """

    requires = ("torch", "transformers")
    extra = "distill"

    class Params(OpParams):
        model: str = Field(json_schema_extra=PATH_MODEL, description="model folder / hub id, or a .gguf file "
                           "(required)")
        gguf_file: str | None = Field(None, description="GGUF file name inside the `model` folder (default none)")
        max_ppl: float | None = Field(None, gt=0, description="drop documents with a higher perplexity (default off; Data-Juicer uses 1500 with KenLM)")
        max_length: int = Field(1024, gt=1, description="tokens scored per document (the rest is cut)")
        batch_size: int = Field(32, gt=0, description="documents per forward pass at most (curate default 32)")
        max_batch_tokens: int | None = Field(None, gt=0, description="padded tokens per forward pass "
                                             "(default 4096 on CPU, 32768 on GPU)")
        add_bos: bool = Field(True, description="prepend the tokenizer's BOS token so the first word is scored (default true)")
        device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs (default auto: "
                                                       "the run's device, CUDA when present)")
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
            "auto", description="weights dtype (default auto: bfloat16 on GPU, float16 without bf16, float32 on CPU)")
        cache_dir: str | None = Field(None, description="where converted GGUF models are kept "
                                      "(default $CURATE_CACHE_DIR/models or ~/.cache/curate/models)")
        threads: int | None = Field(None, gt=0, description="torch CPU threads per worker "
                                    "(default: cores / workers, so workers do not oversubscribe)")

    def adds(self) -> dict[str, Column]:
        return {"nppl": Column(pl.Float64, "exp(mean token negative log-likelihood) under the model",
                               "null when the document has no predicted token (one token or less); never drops")}

    def setup(self, ctx: RunContext) -> None:
        import os

        import torch

        from curate.selectors._hf_model import load_causal_lm

        p = self.params
        device = ctx.device if p.device == "auto" else p.device
        if device == "cpu" and (p.threads or ctx.workers > 1):
            torch.set_num_threads(p.threads or max(1, (os.cpu_count() or 1) // ctx.workers))
        self._model, self._tok, self._device = load_causal_lm(p.model, p.gguf_file, device, p.dtype, p.cache_dir)

    def _ensure_loaded(self) -> None:
        """Direct use (``op.score(df)`` without a pipeline): load on the op's own device choice."""
        if not hasattr(self, "_model"):
            from curate.selectors._hf_model import load_causal_lm

            p = self.params
            self._model, self._tok, self._device = load_causal_lm(p.model, p.gguf_file, p.device, p.dtype,
                                                                  p.cache_dir)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        self._ensure_loaded()
        p = self.params
        budget = p.max_batch_tokens or (32768 if self._device.startswith("cuda") else 4096)
        vals = perplexities(self._model, self._tok, batch["text"].to_list(), device=self._device,
                            max_length=p.max_length, max_batch_tokens=budget, batch_size=p.batch_size,
                            add_bos=p.add_bos)
        return batch.with_columns(pl.Series("nppl", vals, dtype=pl.Float64).fill_nan(None))

    def rules(self) -> list[Rule]:
        return [] if self.params.max_ppl is None else [Rule("max_nppl", "nppl", ">", self.params.max_ppl)]
