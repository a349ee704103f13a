"""Students initialised from their teacher: layer importance, then depth and width pruning of a causal LM.

Depth (which decoder layers to keep), by a *measured* importance score on calibration tokens:

* ``block_influence`` -- ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
  Redundant Than You Expect"): BI_i = 1 - mean over tokens of cos(h_in, h_out) of layer i; a layer that
  barely turns its input is redundant. One calibration forward.
* ``nll_drop`` -- Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
  Distillation"), depth axis: drop layer i alone and measure the calibration NLL increase. One forward per
  layer.

The ``keep`` layers with the highest importance are kept, in their original order. Keeping every k-th
layer instead breaks the model (the calibration in ``shared/reference/distillation.md``: 12 of 30 SmolLM2
layers kept evenly start at NLL 14.1, first-and-last at 8.8), hence a measured score.

Width: the MLP intermediate channels with the largest mean activation magnitude ``|act(gate(x)) * up(x)|``
(the input of ``down_proj``) over calibration tokens are kept (Minitron's activation-based neuron
importance), per layer.

Works on decoder-only models whose layers sit in ``model.model.layers`` (Llama, Mistral, Qwen2, SmolLM2,
...) with a gated MLP (``gate_proj``/``up_proj``/``down_proj``) for width pruning. Calibration batches are
``(input_ids [B,T], attention_mask [B,T], labels [B,T] with -100 for ignored positions)`` tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
IGNORE = -100


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The ModuleList of decoder layers (``model.model.layers``); a clear error for other layouts."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: depth pruning needs decoder layers at model.model.layers "
                         "(Llama-style causal LMs)")
    return layers


def _first_tensor(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def block_influence(model: Any, batches: Iterable[Batch]) -> list[float]:
    """ShortGPT Block Influence per decoder layer: 1 - mean cos(h_in, h_out) over attended tokens."""
    layers = decoder_layers(model)
    n = len(layers)
    sums = [0.0] * n
    count = 0
    cur: dict[str, torch.Tensor] = {}
    handles = []

    def pre(i: int) -> Any:
        def hook(_m: Any, args: tuple, kwargs: dict) -> None:
            cur[f"in{i}"] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i: int) -> Any:
        def hook(_m: Any, _args: Any, out: Any) -> None:
            h_in, h_out = cur.pop(f"in{i}"), _first_tensor(out)
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # [B, T]
            cur[f"cos{i}"] = cos
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i)))
    was = model.training
    model.eval()
    try:
        for ids, att, _lab in batches:
            model(input_ids=ids, attention_mask=att, use_cache=False)
            m = att.bool()
            count += int(m.sum())
            for i in range(n):
                sums[i] += float(cur.pop(f"cos{i}")[m].sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return [1.0 - s / max(1, count) for s in sums]


@torch.no_grad()
def calibration_nll(model: Any, batches: Iterable[Batch]) -> float:
    """Mean next-token NLL (nats) over the labelled positions of the calibration batches."""
    tot, cnt = 0.0, 0
    for ids, att, lab in batches:
        lo = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
        y = lab[:, 1:]
        m = y != IGNORE
        tot += float(torch.nn.functional.cross_entropy(lo[m], y[m], reduction="sum"))
        cnt += int(m.sum())
    return tot / max(1, cnt)


def _with_layers(model: Any, keep: Sequence[int]) -> tuple[torch.nn.ModuleList, int]:
    """Swap in a ModuleList of the ``keep`` layers (shared modules, no copy); returns what to restore."""
    old = decoder_layers(model)
    n_old = model.config.num_hidden_layers
    model.model.layers = torch.nn.ModuleList([old[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return old, n_old


def _restore(model: Any, saved: tuple[torch.nn.ModuleList, int]) -> None:
    model.model.layers, model.config.num_hidden_layers = saved


@torch.no_grad()
def nll_drop(model: Any, batches: Sequence[Batch]) -> list[float]:
    """Minitron depth importance per layer: calibration NLL with that layer removed minus the full NLL."""
    was = model.training
    model.eval()
    base = calibration_nll(model, batches)
    n = len(decoder_layers(model))
    out = []
    try:
        for i in range(n):
            saved = _with_layers(model, [j for j in range(n) if j != i])
            try:
                out.append(calibration_nll(model, batches) - base)
            finally:
                _restore(model, saved)
    finally:
        model.train(was)
    return out


def layer_importance(model: Any, batches: Sequence[Batch], method: str) -> list[float]:
    """Importance per decoder layer by ``method`` (``block_influence`` | ``nll_drop``); higher = keep."""
    if method == "block_influence":
        return block_influence(model, batches)
    if method == "nll_drop":
        return nll_drop(model, batches)
    raise ValueError(f"unknown layer importance '{method}' (block_influence | nll_drop)")


def choose_layers(importance: Sequence[float], keep: int) -> list[int]:
    """Indices of the ``keep`` most important layers, in model order (ties: the earlier layer)."""
    n = len(importance)
    if not 1 <= keep <= n:
        raise ValueError(f"keep_layers must be between 1 and {n}, got {keep}")
    scores = [(-float("inf") if math.isnan(v) else v) for v in importance]
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])


def depth_prune(model: Any, keep: Sequence[int]) -> Any:
    """A deep copy of ``model`` with only the decoder layers ``keep`` (model order), config updated."""
    keep = sorted(int(i) for i in keep)
    n = len(decoder_layers(model))
    if not keep or keep[0] < 0 or keep[-1] >= n or len(set(keep)) != len(keep):
        raise ValueError(f"layer indices must be distinct and in [0, {n}), got {keep}")
    saved = _with_layers(model, keep)
    try:
        new = copy.deepcopy(model)
    finally:
        _restore(model, saved)
    for j, layer in enumerate(new.model.layers):  # KV-cache slots are indexed by position in the stack
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = j
    lt = getattr(new.config, "layer_types", None)
    if isinstance(lt, list) and len(lt) == n:
        new.config.layer_types = [lt[i] for i in keep]
    return _plain(new)


def _plain(model: Any) -> Any:
    """A copy of a model that was loaded from a quantized file (GGUF) carries the quantizer, and
    ``save_pretrained`` then refuses it ("quantized with gguf and is not serializable"); the student is a
    plain model: rebuild it from its config without ``quantization_config`` and load the weights."""
    if getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config"):
        return model
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(model.state_dict())
    return plain.to(next(model.parameters()).dtype).train(model.training)


@torch.no_grad()
def mlp_channel_importance(model: Any, batches: Iterable[Batch]) -> list[torch.Tensor]:
    """Per layer, the mean |input of down_proj| per intermediate channel over attended tokens ``[I]``."""
    layers = decoder_layers(model)
    sums: list[torch.Tensor | None] = [None] * len(layers)
    mask_box: dict[str, torch.Tensor] = {}
    handles = []

    def hook(i: int) -> Any:
        def f(_m: Any, args: tuple) -> None:
            a = args[0].float().abs()[mask_box["m"]]  # [n, I]
            s = a.sum(0)
            sums[i] = s if sums[i] is None else sums[i] + s
        return f

    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook(i)))
    count = 0
    was = model.training
    model.eval()
    try:
        for ids, att, _lab in batches:
            mask_box["m"] = att.bool()
            model(input_ids=ids, attention_mask=att, use_cache=False)
            count += int(att.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return [s / max(1, count) for s in sums if s is not None]


@torch.no_grad()
def width_prune_mlp(model: Any, channels: Sequence[torch.Tensor], size: int) -> Any:
    """In place: keep the ``size`` highest-importance intermediate channels of every layer's gated MLP
    (``channels[i]`` from :func:`mlp_channel_importance`), in their original order; config updated."""
    layers = decoder_layers(model)
    if len(channels) != len(layers):
        raise ValueError(f"{len(channels)} channel scores for {len(layers)} layers")
    for layer, imp in zip(layers, channels, strict=True):
        mlp = layer.mlp
        full = mlp.down_proj.weight.shape[1]
        if not 1 <= size <= full:
            raise ValueError(f"intermediate_size must be between 1 and {full}, got {size}")
        idx = torch.sort(torch.topk(imp, size).indices).values
        for name in ("gate_proj", "up_proj"):
            lin = getattr(mlp, name)
            new = torch.nn.Linear(lin.in_features, size, bias=lin.bias is not None,
                                  device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight.copy_(lin.weight[idx])
            if lin.bias is not None:
                new.bias.copy_(lin.bias[idx])
            setattr(mlp, name, new)
        d = mlp.down_proj
        nd = torch.nn.Linear(size, d.out_features, bias=d.bias is not None, device=d.weight.device,
                             dtype=d.weight.dtype)
        nd.weight.copy_(d.weight[:, idx])
        if d.bias is not None:
            nd.bias.copy_(d.bias)
        mlp.down_proj = nd
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size
    model.config.intermediate_size = size
    return model


def prune_from_teacher(teacher: Any, batches: Sequence[Batch], *, keep_layers: int | None,
                       importance: str = "block_influence", intermediate_size: int | None = None,
                       layers: Sequence[int] | None = None,
                       dtype: torch.dtype | None = torch.float32) -> tuple[Any, dict[str, Any]]:
    """A student copied from ``teacher``: depth-pruned to ``keep_layers`` by measured ``importance`` and
    optionally width-pruned to ``intermediate_size`` MLP channels. Returns (student, info) where info holds
    the scores, the kept layers and the calibration NLL before/after (for the report)."""
    n = len(decoder_layers(teacher))
    info: dict[str, Any] = {"teacher_layers": n, "importance": importance}
    if layers is not None:  # given explicitly: no scoring
        kept = sorted(int(i) for i in layers)
        info["importance"] = "given"
    elif keep_layers is not None and keep_layers < n:
        scores = layer_importance(teacher, batches, importance)
        kept = choose_layers(scores, keep_layers)
        info["layer_scores"] = [round(float(s), 6) for s in scores]
    else:
        kept = list(range(n))
    info["kept_layers"] = kept
    student = depth_prune(teacher, kept)
    if dtype is not None:
        student = student.to(dtype)
    if intermediate_size is not None and intermediate_size < student.config.intermediate_size:
        width_prune_mlp(student, mlp_channel_importance(student, batches), intermediate_size)
        info["intermediate_size"] = intermediate_size
    info["calibration_nll_teacher"] = calibration_nll(teacher, batches)
    info["calibration_nll_student_init"] = calibration_nll(student, batches)
    for p in student.parameters():
        p.requires_grad_(True)
    return student, info
