"""Compute cost of a model: FLOPs estimates and measured latency per query.

FLOPs follow Kaplan et al. 2020 (Table 1): a forward pass costs ``2 N`` per token for the non-embedding
parameters ``N`` plus ``2 n_layer n_ctx d_attn`` for attention; training (forward + backward) costs three
times the forward, so the familiar ``C = 6 N D`` for ``D`` training tokens. Brown et al. 2020 (Table D.1)
list 3.14e23 training FLOPs for GPT-3 175B on 300B tokens, which ``6 N D`` reproduces.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def forward_flops_per_token(n_params: int, *, n_layer: int = 0, n_ctx: int = 0, d_attn: int = 0) -> float:
    """``2 N + 2 n_layer n_ctx d_attn`` (the attention term is optional: 0 when the shape is not given)."""
    return 2.0 * n_params + 2.0 * n_layer * n_ctx * d_attn


def training_flops(n_params: int, tokens: int, *, n_layer: int = 0, n_ctx: int = 0, d_attn: int = 0) -> float:
    """Forward + backward FLOPs for ``tokens`` training tokens: 3 x the forward cost (``6 N D`` plus
    attention)."""
    return 3.0 * forward_flops_per_token(n_params, n_layer=n_layer, n_ctx=n_ctx, d_attn=d_attn) * tokens


def kd_training_flops(student_params: int, teacher_params: int, tokens: int, *, cached_teacher: bool = False) -> float:
    """KD cost: the student's forward + backward, plus a teacher forward per token unless the teacher's
    signal was cached beforehand (then the cache build, ``2 N_teacher D`` once, is the teacher's share)."""
    return training_flops(student_params, tokens) + (0.0 if cached_teacher else 2.0 * teacher_params * tokens)


def model_flops_from_config(config: Any, tokens: int, *, n_ctx: int, training: bool = False) -> float:
    """FLOPs from a transformers config, with :func:`non_embedding_params` as ``N``."""
    d = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    fwd = forward_flops_per_token(non_embedding_params(config), n_layer=layers, n_ctx=n_ctx, d_attn=d) * tokens
    return 3.0 * fwd if training else fwd


def non_embedding_params(config: Any) -> int:
    """Weight-matrix parameters of a decoder from its config: attention (q and o are d x d; k and v shrink
    with grouped-query attention to d x kv_heads * head_dim) and the MLP (three matrices when gated, as in
    Llama's SiLU MLP, else two). Norms and biases are left out (Kaplan et al. 2020 Eq. 2.1 counts the same:
    12 n_layer d^2 for the ungrouped, 4x-wide, two-matrix case)."""
    d = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(getattr(config, "num_attention_heads", 1))
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    ffn = int(getattr(config, "intermediate_size", None) or 4 * d)
    n_mlp = 3 if getattr(config, "model_type", "") in _GATED or getattr(config, "hidden_act", "") == "silu" else 2
    attn = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    return layers * (attn + n_mlp * d * ffn)


_GATED = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"})


def latency_per_query(fn: Callable[[Any], Any], queries: Sequence[Any], *, warmup: int = 1) -> dict[str, float]:
    """Wall-clock seconds per call of ``fn(query)``: mean, p50, p90, after ``warmup`` untimed calls."""
    for q in list(queries)[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times)
    return {"mean_s": float(arr.mean()), "p50_s": float(np.percentile(arr, 50)),
            "p90_s": float(np.percentile(arr, 90)), "queries": float(len(arr))}
