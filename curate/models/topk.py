"""Sparse teacher signal: top-k teacher log-probs (at T=1) with their token ids and the tail mass.

Import is torch-free (so ``curate.synth`` operator discovery stays light); methods import torch lazily.

``TopK(ids, logprobs, tail_logmass)``: ``ids`` long ``[..., k]``, ``logprobs`` float ``[..., k]`` (log p at
T=1 over the full vocabulary, sorted descending), ``tail_logmass`` float ``[...]`` = log(1 - sum of the top-k
probabilities); ``-inf`` when the top-k hold all the mass (k = V).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class TopK:
    """Top-k teacher log-probs; leading dims are free (``[N, k]`` rows or ``[B, T, k]`` sequences)."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail_logmass: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Leading shape (without k)."""
        return tuple(self.ids.shape[:-1])

    def __getitem__(self, idx: Any) -> TopK:
        return TopK(self.ids[idx], self.logprobs[idx], self.tail_logmass[idx])

    def to(self, device: Any = None, dtype: Any = None) -> TopK:
        """Move to ``device``; ``dtype`` applies to the float tensors only (ids stay long)."""
        return TopK(
            self.ids.to(device=device).long(),
            self.logprobs.to(device=device, dtype=dtype),
            self.tail_logmass.to(device=device, dtype=dtype),
        )

    def reshape_rows(self) -> TopK:
        """Flatten the leading dims to ``[N, k]`` / ``[N]``."""
        k = self.k
        return TopK(self.ids.reshape(-1, k), self.logprobs.reshape(-1, k), self.tail_logmass.reshape(-1))

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> TopK:
        """Top-k of ``log_softmax(logits)`` (T=1, in float32 or better) and the exact tail mass.

        The tail log-mass is a logsumexp over the non-top-k log-probs (not ``log(1 - sum)``, which
        cancels catastrophically when the top-k hold almost all the mass); ``-inf`` when k = V.
        """
        import torch

        with torch.no_grad():
            lp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, -1)
            k = min(int(k), lp.shape[-1])
            vals, ids = lp.topk(k, dim=-1, sorted=True)
            tail = torch.logsumexp(lp.scatter(-1, ids, float("-inf")), dim=-1)
        return cls(ids, vals, tail)

    @staticmethod
    def cat(parts: list[TopK], dim: int = 0) -> TopK:
        """Concatenate along a leading dim."""
        import torch

        return TopK(
            torch.cat([p.ids for p in parts], dim),
            torch.cat([p.logprobs for p in parts], dim),
            torch.cat([p.tail_logmass for p in parts], dim),
        )
