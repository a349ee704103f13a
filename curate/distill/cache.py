"""Top-k teacher cache on disk: run the teacher once, train from its top-k log-probs many times.

Layout of ``out_dir``:

* ``shard-00000.safetensors`` ... one shard per input batch, sequences concatenated along the token axis:
  ``input_ids`` int64 ``[L]``, ``ids`` int32 ``[L, k]``, ``logprobs`` ``[L, k]`` (float32 by default, or
  float16/bfloat16), ``tail_logmass`` float32 ``[L]``, ``offsets`` int64 ``[n_seq + 1]``. Row t of a sequence is
  the teacher's distribution for the token *after* position t (unshifted, as the model outputs it); the
  trainer shifts with :func:`curate.distill.losses.select_valid`. Log-probs are at T=1 (the distillation
  temperature is applied at train time); ``tail_logmass`` = log(1 - sum of the top-k probabilities), computed
  exactly by logsumexp over the non-top-k tokens (``-inf`` when k = V).
  Each shard's safetensors metadata holds a hash of its input tokens.
* ``meta.json``: ``{"format": "curate-topk-cache/1", "settings": {...}, "complete": bool, "shards": [...],
  "num_sequences", "num_tokens", "bytes_per_token", "build_seconds"}``. ``settings`` are the capture
  settings: ``teacher`` (name/path), ``teacher_config_hash``, ``teacher_weights_hash``,
  ``tokenizer_vocab_hash``, ``vocab_size``, ``k``, ``temperature`` (always 1.0), ``max_len``,
  ``logprob_dtype``, ``dataset_fingerprint`` (given, or :func:`dataset_fingerprint` of the input sequences,
  filled in when the build completes).

:func:`build_teacher_cache` is resumable: a shard whose file exists and whose token hash matches the batch is
skipped (no teacher forward); settings that differ from an existing ``meta.json`` are refused.
:class:`TeacherCache` reads shards lazily (safetensors, memory-mapped) and
:meth:`TeacherCache.check_compatible` refuses a cache whose settings differ from what training expects.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

from curate.models.device import DTYPE_NAMES, torch_dtype
from curate.models.topk import TopK

FORMAT = "curate-topk-cache/1"
# settings that describe *what* was captured (compared on resume); dataset_fingerprint may be filled at the end
_CAPTURE_KEYS = ("teacher", "teacher_config_hash", "teacher_weights_hash", "tokenizer_vocab_hash", "vocab_size",
                 "k", "temperature", "max_len", "logprob_dtype")


class CacheMismatchError(ValueError):
    """The cache's capture settings differ from the expected ones (or the cache is incomplete)."""


@dataclass
class CachedSequence:
    """One cached sequence: its tokens ``[L]`` and the teacher's top-k signal ``TopK([L, k])``."""

    input_ids: torch.Tensor
    topk: TopK

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# ----------------------------------------------------------------------------------------------- inputs
def _sequences(batch: Any, max_len: int | None) -> list[torch.Tensor]:
    """A batch as a list of 1-D long tensors: ``[B,T]`` tensor, list of lists, or dict with input_ids (+mask)."""
    mask = None
    if isinstance(batch, dict):
        mask = batch.get("attention_mask")
        batch = batch["input_ids"]
    if isinstance(batch, torch.Tensor):
        ids = batch if batch.dim() == 2 else batch.unsqueeze(0)
        seqs = [ids[i] for i in range(ids.shape[0])]
        if mask is not None:
            m = torch.as_tensor(mask).reshape(ids.shape).bool()
            seqs = [s[m[i]] for i, s in enumerate(seqs)]
    else:
        rows = list(batch)
        if rows and isinstance(rows[0], int):
            rows = [rows]
        seqs = [torch.as_tensor(r, dtype=torch.long) for r in rows]
        if mask is not None:
            seqs = [s[torch.as_tensor(m).bool()] for s, m in zip(seqs, mask)]
    seqs = [s.detach().to("cpu", torch.long).reshape(-1) for s in seqs]
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]
    if any(s.numel() == 0 for s in seqs):
        raise ValueError("empty sequence in the cache input (after masking / truncation)")
    return seqs


def _update(h: Any, seq: torch.Tensor) -> None:
    h.update(len(seq).to_bytes(8, "little"))
    h.update(seq.numpy().astype("<i8", copy=False).tobytes())


def _tokens_hash(seqs: list[torch.Tensor]) -> str:
    h = xxhash.xxh3_128()
    for s in seqs:
        _update(h, s)
    return h.hexdigest()


def dataset_fingerprint(sequences: Iterable[Any], max_len: int | None = None) -> str:
    """The fingerprint a cache records when none is given: xxh3-128 over every sequence (length + token ids, in
    order, after truncation to ``max_len``). Independent of how the sequences were batched, so a trainer can
    recompute it from its own tokenized data without the teacher."""
    h = xxhash.xxh3_128()
    for seq in sequences:
        t = torch.as_tensor(seq, dtype=torch.long).detach().to("cpu").reshape(-1)
        _update(h, t[:max_len] if max_len is not None else t)
    return h.hexdigest()


def _pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------- build
def capture_settings(teacher: Any, k: int, *, max_len: int | None = None, logprob_dtype: str = "float32",
                     dataset_fingerprint: str | None = None) -> dict[str, Any]:
    """The settings a cache built from ``teacher`` records (and that training should expect)."""
    fp = teacher.fingerprint() if hasattr(teacher, "fingerprint") else {"teacher": teacher.name,
                                                                       "vocab_size": teacher.vocab_size}
    s = {key: fp.get(key) for key in ("teacher", "teacher_config_hash", "teacher_weights_hash",
                                      "tokenizer_vocab_hash", "vocab_size")}
    s.update(k=int(k), temperature=1.0, max_len=max_len, logprob_dtype=logprob_dtype)
    if dataset_fingerprint is not None:
        s["dataset_fingerprint"] = dataset_fingerprint
    return s


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _shard_hash(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("tokens_hash")
    except Exception:  # a truncated/corrupt shard is rebuilt
        return None


def build_teacher_cache(
    teacher: Any,
    batches_of_token_ids: Iterable[Any],
    out_dir: str | os.PathLike[str],
    k: int = 16,
    *,
    max_len: int | None = None,
    logprob_dtype: str = "float32",
    dataset_fingerprint: str | None = None,
    pad_id: int = 0,
    progress: bool = False,
) -> TeacherCache:
    """Run ``teacher.topk_logprobs`` over every batch and write one safetensors shard per batch.

    ``batches_of_token_ids`` yields ``[B, T]`` long tensors, lists of token-id lists (ragged), or dicts with
    ``input_ids`` and ``attention_mask`` (masked-out tokens are dropped). Sequences are cut to ``max_len``.
    Resumable: an existing shard with the same token hash is kept and its batch is not re-scored; an
    existing ``meta.json`` with different capture settings raises :class:`CacheMismatchError`.
    Returns the opened :class:`TeacherCache`.
    """
    if logprob_dtype not in DTYPE_NAMES:
        raise ValueError(f"logprob_dtype must be one of {sorted(DTYPE_NAMES)}, got {logprob_dtype!r}")
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = capture_settings(teacher, k, max_len=max_len, logprob_dtype=logprob_dtype,
                                dataset_fingerprint=dataset_fingerprint)
    if int(k) > int(settings["vocab_size"]):
        raise ValueError(f"k={k} exceeds the teacher vocabulary ({settings['vocab_size']})")
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text()).get("settings", {})
        diff = [key for key in (*_CAPTURE_KEYS, *(("dataset_fingerprint",) if dataset_fingerprint else ()))
                if key in settings and old.get(key) != settings[key]]
        if diff:
            raise CacheMismatchError(
                f"{out} holds a cache captured with different settings: "
                + "; ".join(f"{key}: cache={old.get(key)!r} now={settings[key]!r}" for key in diff)
                + " (use another out_dir or delete it)"
            )
    meta: dict[str, Any] = {"format": FORMAT, "settings": settings, "complete": False, "shards": []}
    _write_json(meta_path, meta)

    t0 = time.perf_counter()
    shards: list[dict[str, Any]] = []
    digest = xxhash.xxh3_128()
    first = n_tok = n_bytes = built = 0
    for i, batch in enumerate(batches_of_token_ids):
        seqs = _sequences(batch, max_len)
        th = _tokens_hash(seqs)
        for seq in seqs:
            _update(digest, seq)
        name = f"shard-{i:05d}.safetensors"
        path = out / name
        lengths = [len(s) for s in seqs]
        if not (path.exists() and _shard_hash(path) == th):
            ids, mask = _pad(seqs, pad_id)
            tk = teacher.topk_logprobs(ids, mask, int(k))
            keep = mask.bool().to(tk.ids.device)
            tensors = {
                "input_ids": torch.cat(seqs),
                "ids": tk.ids[keep].to("cpu", torch.int32).contiguous(),
                "logprobs": tk.logprobs[keep].to("cpu", torch_dtype(logprob_dtype)).contiguous(),
                "tail_logmass": tk.tail_logmass[keep].to("cpu", torch.float32).contiguous(),
                "offsets": torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.long),
            }
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata={"tokens_hash": th, "format": FORMAT})
            os.replace(tmp, path)
            built += 1
        shards.append({"file": name, "first": first, "count": len(seqs), "tokens": sum(lengths)})
        first += len(seqs)
        n_tok += sum(lengths)
        n_bytes += path.stat().st_size
        if progress:
            print(f"teacher cache: shard {i} ({first} sequences, {n_tok} tokens)", flush=True)
    if dataset_fingerprint is None:
        settings["dataset_fingerprint"] = digest.hexdigest()
    meta.update(
        settings=settings, complete=True, shards=shards, num_sequences=first, num_tokens=n_tok,
        bytes_per_token=(n_bytes / n_tok) if n_tok else 0.0, build_seconds=time.perf_counter() - t0,
        shards_built=built,
    )
    _write_json(meta_path, meta)
    return TeacherCache(out)


# ----------------------------------------------------------------------------------------------- read
class TeacherCache:
    """Read a cache written by :func:`build_teacher_cache`: ``len(cache)``, ``cache[i]`` -> :class:`CachedSequence`,
    ``cache.meta`` (the meta.json dict), ``cache.settings``, :meth:`collate` for padded batches."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no teacher cache at {self.dir} (meta.json missing)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise CacheMismatchError(f"{self.dir}: unknown cache format {self.meta.get('format')!r}")
        self._starts = [s["first"] for s in self.meta.get("shards", [])]
        self._open: tuple[int, dict[str, torch.Tensor]] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        return self.meta["settings"]

    @property
    def k(self) -> int:
        return int(self.settings["k"])

    def __len__(self) -> int:
        return int(self.meta.get("num_sequences", 0))

    def _shard(self, j: int) -> dict[str, torch.Tensor]:
        if self._open is None or self._open[0] != j:
            from safetensors.torch import load_file

            self._open = (j, load_file(str(self.dir / self.meta["shards"][j]["file"])))
        return self._open[1]

    def __getitem__(self, i: int) -> CachedSequence:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for a cache of {n}")
        j = bisect.bisect_right(self._starts, i) - 1
        t = self._shard(j)
        r = i - self._starts[j]
        a, b = int(t["offsets"][r]), int(t["offsets"][r + 1])
        return CachedSequence(
            t["input_ids"][a:b],
            TopK(t["ids"][a:b].long(), t["logprobs"][a:b].float(), t["tail_logmass"][a:b]),
        )

    def collate(self, indices: Iterable[int], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, TopK]:
        """Right-padded ``(input_ids [B,T], attention_mask [B,T], TopK [B,T,k])``; padded rows hold id 0,
        log-prob 0 and tail -inf, and must be masked out (labels -100) by the caller."""
        items = [self[i] for i in indices]
        if not items:
            raise ValueError("collate needs at least one index")
        n, k = max(len(x) for x in items), self.k
        b = len(items)
        ids = torch.full((b, n), pad_id, dtype=torch.long)
        mask = torch.zeros((b, n), dtype=torch.long)
        tid = torch.zeros((b, n, k), dtype=torch.long)
        tlp = torch.zeros((b, n, k), dtype=torch.float32)
        tail = torch.full((b, n), float("-inf"), dtype=torch.float32)
        for r, x in enumerate(items):
            m = len(x)
            ids[r, :m], mask[r, :m] = x.input_ids, 1
            tid[r, :m], tlp[r, :m], tail[r, :m] = x.topk.ids, x.topk.logprobs, x.topk.tail_logmass
        return ids, mask, TopK(tid, tlp, tail)

    def check_compatible(self, expected_settings: dict[str, Any]) -> None:
        """Raise :class:`CacheMismatchError` naming every expected setting the cache does not match
        (a key absent from the cache counts as a mismatch; ``None`` expected values are not checked),
        or if the build did not complete."""
        if not self.meta.get("complete"):
            raise CacheMismatchError(f"teacher cache {self.dir} is incomplete (build interrupted); rebuild/resume it")
        have = self.settings
        bad = [key for key, want in expected_settings.items()
               if want is not None and (key not in have or have[key] != want)]
        if bad:
            raise CacheMismatchError(
                f"teacher cache {self.dir} does not match the training settings: "
                + "; ".join(f"{key}: cache={have.get(key, '<missing>')!r} expected={expected_settings[key]!r}"
                            for key in bad)
            )

    def __repr__(self) -> str:
        s = self.settings
        return f"TeacherCache({str(self.dir)!r}, n={len(self)}, k={s.get('k')}, teacher={s.get('teacher')!r})"
