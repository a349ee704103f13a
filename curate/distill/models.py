"""Load the teacher and build the student (transformers causal LMs), and check the vocabulary contract.

* ``path`` (+ ``gguf_file``): ``AutoModelForCausalLM.from_pretrained`` (GGUF is dequantized by
  transformers; needs ``gguf`` + ``accelerate``).
* ``from_config``: a randomly initialised model; ``base: teacher`` copies the teacher's config and
  overrides the given fields (``head_dim`` is re-derived when the width or head count changes).
* Logit KD needs the same token<->id mapping: different tokenizers are an error naming both
  vocabularies; same tokenizer with padded embedding matrices of different sizes (Qwen2.5 151936 vs
  152064) is handled by slicing logits to the shared vocabulary (never zero-padding).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from curate.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from curate.distill.config import ModelSpec

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _torch_dtype(name: str) -> Any:
    import torch

    return None if name == "auto" else getattr(torch, _DTYPES[name])


def load_model(spec: ModelSpec, base_config: Any = None, tokenizer: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a spec; ``base_config`` is the teacher's config (for ``base: teacher``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = spec.resolved_path()
    if path is not None:
        kw: dict[str, Any] = {}
        if spec.gguf_file:
            kw["gguf_file"] = spec.gguf_file
        dt = _torch_dtype(spec.dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt or "float32", **kw)
            tok = AutoTokenizer.from_pretrained(spec.tokenizer or path, **({} if spec.tokenizer else kw))
        except OSError as e:
            raise ConfigError(f"cannot load model from '{path}'"
                              f"{' (gguf_file ' + spec.gguf_file + ')' if spec.gguf_file else ''}: {e}") from None
        return model, tok
    fields = dict(spec.from_config or {})
    base = fields.pop("base", None)
    if base == "teacher":
        if base_config is None:
            raise ConfigError("from_config base: teacher needs a teacher model")
        d = base_config.to_dict()
        if ("hidden_size" in fields or "num_attention_heads" in fields) and "head_dim" not in fields:
            d.pop("head_dim", None)
        for k in ("_name_or_path", "architectures", "quantization_config", "torch_dtype", "dtype"):
            d.pop(k, None)
        d.update(fields)
        cfg = type(base_config).from_dict(d)
    elif base is not None:
        raise ConfigError(f"from_config base: '{base}' is not supported (only 'teacher')")
    else:
        if "model_type" not in fields:
            raise ConfigError("from_config needs `model_type` (e.g. llama, gpt2) or `base: teacher`")
        cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(cfg)
    dt = _torch_dtype(spec.dtype)
    if dt is not None:
        model = model.to(dt)
    if spec.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    return model, tokenizer


def vocab_rows(model: Any) -> int:
    """Rows of the output embedding (the logits' last dimension)."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def shared_vocab(teacher_tok: Any, student_tok: Any, teacher_rows: int, student_rows: int,
                 override: int | None = None) -> int:
    """The number of logit ids both models share; raises when the tokenizers differ.

    Same tokenizer (identical token->id maps) with different logit widths -> slice to the smaller
    width, provided every real token id fits; ``override`` forces a width (<= both).
    """
    if teacher_tok is not None and student_tok is not None and teacher_tok is not student_tok:
        tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
        if tv != sv:
            only_t = len(set(tv.items()) - set(sv.items()))
            raise ConfigError(
                f"teacher and student tokenizers differ: teacher vocabulary {len(tv)} tokens "
                f"(logits {teacher_rows}), student vocabulary {len(sv)} tokens (logits {student_rows}); "
                f"{only_t} token->id pairs of the teacher are not in the student. Logit distillation needs "
                "the same tokenizer (cross-tokenizer KD, e.g. ULD/GOLD, is not supported)")
    n_tok = len(teacher_tok) if teacher_tok is not None else min(teacher_rows, student_rows)
    v = override if override is not None else min(teacher_rows, student_rows)
    if v > min(teacher_rows, student_rows):
        raise ConfigError(f"shared_vocab {v} exceeds a model's logits (teacher {teacher_rows}, student {student_rows})")
    if n_tok > v:
        raise ConfigError(
            f"vocabulary mismatch: the tokenizer has {n_tok} tokens but the logits are sliced to {v} "
            f"(teacher logits {teacher_rows}, student logits {student_rows}); the student's embedding must "
            "cover the tokenizer")
    if teacher_rows != student_rows:
        log.info("teacher logits %d vs student logits %d: slicing both to the shared %d ids",
                 teacher_rows, student_rows, v)
    return v


def lm_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder returning last hidden states, output head) when logits == head(hidden) exactly,
    else None (models with logit soft-capping or scaling go through the full forward)."""
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        v = getattr(cfg, attr, None)
        if v not in (None, 1, 1.0):
            return None
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None or getattr(head, "bias", None) is not None:
        return None
    return base, head


def hidden_states(base: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
