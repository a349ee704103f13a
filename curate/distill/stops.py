"""Where a generated answer ends: a list of stop token ids, and the mask of what is kept.

Chat models stop on more than one id (Llama 3: ``<|end_of_text|>`` and ``<|eot_id|>``; the second is only in
``generation_config.eos_token_id``), so a rollout that only knows the tokenizer's ``eos_token_id`` runs on
past the end of the turn and trains on what follows. :func:`stop_token_ids` gathers the ids;
:func:`completion_mask` keeps each generated row up to and including its first stop id of any kind and
masks everything after it, as TRL's trainers do for their completions (``is_eos`` -> first index ->
``arange <= eos_idx``; ``tests/experimental/test_gkd_trainer.py`` checks their prompt/completion masks). A row
without a stop id is kept whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def _ids(v: Any) -> list[int]:
    if v is None:
        return []
    if isinstance(v, int):
        return [v]
    if torch.is_tensor(v):
        return [int(x) for x in v.flatten().tolist()]
    return [int(x) for x in v if x is not None]


def stop_token_ids(configured: Sequence[int] | None, *, eos_id: int | None, model: Any = None) -> list[int]:
    """``configured`` when given, else the tokenizer's ``eos_id`` plus ``model.generation_config.eos_token_id``
    (an int or a list), in that order without repeats."""
    if configured is not None:
        return list(dict.fromkeys(int(x) for x in configured))
    gen_cfg = getattr(model, "generation_config", None)
    return list(dict.fromkeys(_ids(eos_id) + _ids(getattr(gen_cfg, "eos_token_id", None))))


def completion_mask(gen: torch.Tensor, stop_ids: Iterable[int]) -> torch.Tensor:
    """Bool mask ``[B, L]`` of the generated tokens ``gen`` (prompt excluded) that are kept: each row up to and
    including its first stop id, a row without one whole. (``generate`` pads only rows that already stopped,
    so a pad id in a row without a stop id is a token the model chose, and is kept.)"""
    stops = torch.as_tensor(sorted(set(stop_ids)), dtype=gen.dtype, device=gen.device)
    length = gen.shape[1]
    pos = torch.arange(length, device=gen.device).expand_as(gen)
    is_stop = torch.isin(gen, stops) if stops.numel() else torch.zeros_like(gen, dtype=torch.bool)
    first_stop = torch.where(is_stop, pos, torch.full_like(pos, length)).min(dim=1).values  # L: no stop id
    return pos <= first_stop[:, None]


def cut(gen: torch.Tensor, stop_ids: Iterable[int]) -> list[list[int]]:
    """The kept tokens of each row of ``gen`` (:func:`completion_mask`) as lists."""
    n = completion_mask(gen, stop_ids).sum(dim=1).tolist()
    return [row[:k] for row, k in zip(gen.tolist(), n, strict=True)]
