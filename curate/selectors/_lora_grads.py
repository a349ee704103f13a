"""LoRA warm-up training and per-example LoRA gradients for LESS (princeton-nlp/LESS).

* :func:`add_lora` wraps a causal LM with peft LoRA (only LoRA weights train).
* :func:`warmup_train` is the reference's warm-up (``less/scripts/train/warmup_lora_train.sh`` with
  ``base_training_args.sh``): AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0), linear schedule with
  ``warmup_ratio`` warm-up, one optimizer step per ``grad_accum`` examples (reference: batch 1 x
  accumulation 32), loss = mean token cross-entropy per example averaged over the step's examples.
  After every epoch it saves the LoRA weights and the optimizer moments (``exp_avg``, ``exp_avg_sq``)
  as safetensors, with the epoch's mean learning rate (the checkpoint weight of LESS's README).
* :class:`PerExampleGrads` gives the exact gradient of each example's own loss for every LoRA weight
  from ONE batched backward: every trainable weight belongs to a bias-free ``nn.Linear`` (peft's
  ``lora_A``/``lora_B``), whose per-example gradient is ``sum_t grad_out[b,t] (x) input[b,t]``; hooks
  record inputs and output gradients. Examples do not interact (right padding, causal attention,
  eval mode), so this equals a backward on each example alone (the reference's batch-size-1 loop).
* :func:`adam_transform` is ``obtain_gradients_with_adam`` of ``less/data_selection/collect_grad_reps.py``:
  ``m' = 0.9 m + 0.1 g``, ``v' = 0.999 v + 0.001 g^2``, ``m' / sqrt(v' + 1e-8)`` (no bias correction).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from curate.models.causal_lm import IGNORE

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


@dataclass
class Example:
    """Token ids and labels (``-100`` where the loss is not taken, e.g. a masked prompt)."""

    input_ids: list[int]
    labels: list[int]


def tokenize(tokenizer, texts: Sequence[str], *, max_len: int, prompts: Sequence[str | None] | None = None
             ) -> list[Example]:
    """Tokenise ``texts`` (truncated to ``max_len`` tokens). Where ``prompts[i]`` is given, ``texts[i]``
    starts with it and its tokens are masked from the loss (the reference's prompt masking)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_len, add_special_tokens=True)["input_ids"]
    out = []
    for i, ids in enumerate(enc):
        labels = list(ids)
        if prompts is not None and prompts[i]:
            n_prompt = len(tokenizer(prompts[i], truncation=True, max_length=max_len,
                                     add_special_tokens=True)["input_ids"])
            labels[:n_prompt] = [IGNORE] * min(n_prompt, len(labels))
        out.append(Example(list(ids), labels))
    return out


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch (pads carry no loss and, with causal attention, change no real token)."""
    n = max(1, max(len(e.input_ids) for e in examples))
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, :k] = torch.tensor(e.labels, dtype=torch.long)
        mask[i, :k] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def per_example_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's labelled tokens, shape ``(batch,)``
    (0 for an example with no labelled token)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    tok = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                      ignore_index=IGNORE, reduction="none").view(labels.shape)
    count = (labels != IGNORE).sum(1)
    return tok.sum(1) / count.clamp(min=1)


def add_lora(model: nn.Module, *, r: int, alpha: float, dropout: float, targets: Sequence[str], seed: int):
    """peft LoRA on ``targets``; asserts only LoRA weights require gradients (as the reference does)."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=list(targets), inference_mode=False)
    model = get_peft_model(model, cfg)
    bad = [n for n, p in model.named_parameters() if p.requires_grad and "lora" not in n]
    if bad:
        raise RuntimeError(f"non-LoRA parameters require gradients: {bad[:3]}")
    return model


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters in ``named_parameters`` order: the order of every flattened feature."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def lr_schedule(total_steps: int, warmup_ratio: float) -> np.ndarray:
    """Learning-rate multiplier of each optimizer step: transformers' linear schedule with
    ``ceil(warmup_ratio * total)`` warm-up steps (``get_linear_schedule_with_warmup``)."""
    warm = math.ceil(warmup_ratio * total_steps)
    s = np.arange(total_steps, dtype=np.float64)
    up = s / max(1, warm)
    down = np.maximum(0.0, (total_steps - s) / max(1, total_steps - warm))
    return np.where(s < warm, up, down)


def epoch_mean_lrs(n_examples: int, *, grad_accum: int, epochs: int, lr: float,
                   warmup_ratio: float) -> list[float]:
    """Mean learning rate of each epoch's optimizer steps: LESS's checkpoint weights (README)."""
    per_epoch = math.ceil(n_examples / grad_accum)
    mult = lr_schedule(per_epoch * epochs, warmup_ratio) * lr
    return [float(mult[e * per_epoch:(e + 1) * per_epoch].mean()) for e in range(epochs)]


def _micro_batches(examples: Sequence[Example], order: Sequence[int], size: int) -> Iterator[list[Example]]:
    for i in range(0, len(order), size):
        yield [examples[j] for j in order[i:i + size]]


def warmup_train(model: nn.Module, examples: Sequence[Example], out_dir: Path, *, epochs: int, lr: float,
                 warmup_ratio: float, grad_accum: int, batch_size: int, pad_id: int, seed: int,
                 device: torch.device) -> list[dict]:
    """Train the LoRA weights; save ``epoch-{e}/`` (``lora.safetensors``, ``moments.safetensors``,
    ``meta.json``) after each epoch. Returns the metas. Reuses a finished run found in ``out_dir``."""
    from safetensors.torch import save_file

    metas = [_read_meta(out_dir / f"epoch-{e}") for e in range(1, epochs + 1)]
    if all(m is not None for m in metas):
        return metas  # type: ignore[return-value]
    params = trainable(model)
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, betas=(BETA1, BETA2), eps=ADAM_EPS, weight_decay=0.0)
    per_epoch = math.ceil(len(examples) / grad_accum)
    mult = lr_schedule(per_epoch * epochs, warmup_ratio)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    metas = []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(examples), generator=gen).tolist()
        lrs = []
        for s in range(per_epoch):
            chunk = perm[s * grad_accum:(s + 1) * grad_accum]
            for group in opt.param_groups:
                group["lr"] = lr * float(mult[step])
            lrs.append(lr * float(mult[step]))
            opt.zero_grad(set_to_none=True)
            for mb in _micro_batches(examples, chunk, batch_size):
                loss = per_example_loss(model, collate(mb, pad_id, device)).sum() / len(chunk)
                loss.backward()
            opt.step()
            step += 1
        ck = out_dir / f"epoch-{epoch}"
        ck.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().float().cpu().contiguous() for n, p in params}, str(ck / "lora.safetensors"))
        moments = {}
        for n, p in params:
            st = opt.state[p]
            moments[f"{n}.exp_avg"] = st["exp_avg"].float().cpu().contiguous()
            moments[f"{n}.exp_avg_sq"] = st["exp_avg_sq"].float().cpu().contiguous()
        save_file(moments, str(ck / "moments.safetensors"))
        meta = {"epoch": epoch, "step": step, "mean_lr": float(np.mean(lrs))}
        (ck / "meta.json").write_text(json.dumps(meta))
        metas.append(meta)
    model.eval()
    return metas


def _read_meta(ck: Path) -> dict | None:
    f = ck / "meta.json"
    return json.loads(f.read_text()) if f.exists() else None


def load_checkpoint(model: nn.Module, ck: Path, device: torch.device
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Load a checkpoint's LoRA weights into ``model``; return its Adam moments per trainable weight."""
    from safetensors.torch import load_file

    weights = load_file(str(ck / "lora.safetensors"))
    moments = load_file(str(ck / "moments.safetensors"))
    m, v = [], []
    with torch.no_grad():
        for n, p in trainable(model):
            p.copy_(weights[n].to(p.dtype))
            m.append(moments[f"{n}.exp_avg"].to(device).reshape(-1))
            v.append(moments[f"{n}.exp_avg_sq"].to(device).reshape(-1))
    return m, v


class PerExampleGrads:
    """Hooks on the ``nn.Linear`` modules owning the trainable weights; ``compute(batch)`` returns each
    example's gradient of its own loss, one ``(batch, numel)`` float32 tensor per trainable weight."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = trainable(model)
        modules = dict(model.named_modules())
        self._owners: list[nn.Linear] = []
        for name, _p in self.params:
            mod_name, attr = name.rsplit(".", 1)
            mod = modules[mod_name]
            if not isinstance(mod, nn.Linear) or attr != "weight" or (mod.bias is not None and mod.bias.requires_grad):
                raise TypeError(f"per-example gradients need bias-free nn.Linear LoRA weights; got {name} "
                                f"({type(mod).__name__})")
            self._owners.append(mod)
        self._inputs: dict[int, torch.Tensor] = {}
        self._gouts: dict[int, torch.Tensor] = {}
        self._handles = []

    def _hook(self, key: int):
        def fwd(_mod, inputs, output):
            self._inputs[key] = inputs[0].detach()

            def bwd(g):
                self._gouts[key] = g.detach()
            output.register_hook(bwd)
        return fwd

    def compute(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-example gradients and the per-example losses (eval mode: no dropout)."""
        self.model.eval()
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self._owners)]
        try:
            losses = per_example_loss(self.model, batch)
            losses.sum().backward()
        finally:
            for h in self._handles:
                h.remove()
        grads = []
        for i, _m in enumerate(self._owners):
            x, g = self._inputs.pop(i).float(), self._gouts.pop(i).float()
            bsz = x.shape[0]
            gw = torch.einsum("bto,bti->boi", g.reshape(bsz, -1, g.shape[-1]), x.reshape(bsz, -1, x.shape[-1]))
            grads.append(gw.reshape(bsz, -1))
        for _n, p in self.params:
            p.grad = None
        return grads, losses.detach()


def adam_transform(grads: Sequence[torch.Tensor], m: Sequence[torch.Tensor], v: Sequence[torch.Tensor]
                   ) -> list[torch.Tensor]:
    """The reference's Adam feature ``m' / sqrt(v' + eps)`` per weight (broadcast over the batch)."""
    out = []
    for g, mi, vi in zip(grads, m, v):
        m2 = BETA1 * mi + (1 - BETA1) * g
        v2 = BETA2 * vi + (1 - BETA2) * g * g
        out.append(m2 / torch.sqrt(v2 + ADAM_EPS))
    return out
