"""A small public reader of the teacher top-k cache (format ``curate-topk-cache/1``, written by
:func:`curate.distill.cache.build_teacher_cache`) and the per-example teacher signals computed from it.

It lives here so that selectors and the distillation trainer both read the cache without importing each
other (areas import only curate.core, curate.io and curate.models). Layout, per shard
``shard-NNNNN.safetensors``: ``input_ids [L]``, ``ids [L, k]``, ``logprobs [L, k]``, ``tail_logmass [L]``
(log of the probability outside the top-k), ``offsets [n_seq + 1]``; row t is the teacher's distribution of
the token after position t.

Per-example signals (means over the predicted positions, i.e. rows ``start-1 .. L-2`` where ``start`` is
the first scored token, the response start for prompt/response data):

* ``teacher_entropy``: entropy of the teacher distribution coarse-grained to the top-k ids plus one tail
  bucket (exact when k = V; otherwise a lower bound of the full entropy by at most P_tail * log(V - k)).
* ``teacher_confidence``: the teacher's top-1 probability.
* ``teacher_nll``: -log p_teacher(actual next token); when the token is outside the top-k, the tail bucket's
  log-mass stands in (a lower bound of the true NLL; exact when k = V).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

FORMAT = "curate-topk-cache/1"
SIGNALS = ("teacher_entropy", "teacher_confidence", "teacher_nll")


def read_meta(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The cache's meta.json; raises when absent, of another format, or incomplete."""
    p = Path(cache_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"no teacher cache at {cache_dir} (meta.json missing)")
    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cache_dir}: unknown cache format {meta.get('format')!r}")
    if not meta.get("complete"):
        raise ValueError(f"teacher cache {cache_dir} is incomplete (build interrupted)")
    return meta


def iter_sequences(cache_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each cached sequence in order: ``{input_ids [L], ids [L,k], logprobs [L,k], tail_logmass [L]}``
    (torch tensors; log-probs as float32), one shard loaded at a time."""
    from safetensors.torch import load_file

    meta = read_meta(cache_dir)
    for sh in meta["shards"]:
        t = load_file(str(Path(cache_dir) / sh["file"]))
        off = t["offsets"].tolist()
        for r in range(len(off) - 1):
            a, b = off[r], off[r + 1]
            yield {"input_ids": t["input_ids"][a:b], "ids": t["ids"][a:b].long(),
                   "logprobs": t["logprobs"][a:b].float(), "tail_logmass": t["tail_logmass"][a:b].float()}


def signals_of(ids: Any, logprobs: Any, tail_logmass: Any, input_ids: Any, start: int = 1) -> dict[str, float]:
    """The three signals (see module docstring) of one sequence from its top-k rows; ``start`` = index of
    the first scored token (>= 1). NaN when no token is scored."""
    import torch

    n = int(input_ids.shape[0])
    s = max(1, int(start))
    if s >= n:
        return {k: math.nan for k in SIGNALS}
    rows = slice(s - 1, n - 1)
    lp, tid, tail = logprobs[rows], ids[rows], tail_logmass[rows]
    nxt = input_ids[s:n].long()
    p = lp.exp()
    ent = -(p * lp).sum(-1)
    pt = tail.exp()
    ent = ent - torch.where(pt > 0, pt * tail, torch.zeros_like(pt))
    conf = lp.max(-1).values.exp()
    hit = tid == nxt[:, None]
    tok_lp = torch.where(hit.any(-1), (lp * hit).sum(-1), tail)
    return {"teacher_entropy": float(ent.mean()), "teacher_confidence": float(conf.mean()),
            "teacher_nll": float(-tok_lp.mean())}


def cache_signals(cache_dir: str | os.PathLike[str], starts: Sequence[int] | None = None) -> dict[str, list[float]]:
    """Per cached sequence (cache order), each signal: ``{"teacher_entropy": [...], ...}``; ``starts[i]`` is
    the first scored token of sequence i (e.g. the response start), default 1 (every next-token row)."""
    out: dict[str, list[float]] = {k: [] for k in SIGNALS}
    for i, seq in enumerate(iter_sequences(cache_dir)):
        st = starts[i] if starts is not None else 1
        sig = signals_of(seq["ids"], seq["logprobs"], seq["tail_logmass"], seq["input_ids"], start=st or 1)
        for k in SIGNALS:
            out[k].append(sig[k])
    return out


def curriculum(values: Sequence[float], descending: bool = False) -> list[int]:
    """Indices sorted by ``values`` (NaN last; ties by index): a fixed training order."""
    def key(i: int) -> tuple[bool, float, int]:
        v = values[i]
        bad = v is None or math.isnan(v)
        return (bad, 0.0 if bad else (-v if descending else v), i)
    return sorted(range(len(values)), key=key)
