"""A teacher behind an OpenAI-compatible HTTP server (vLLM, llama.cpp's server, TGI, ``transformers serve``,
OpenAI itself), on the official ``openai`` client.

* Chat requests (``messages``, or ``prompt`` with ``spec.chat``) go to ``/v1/chat/completions``, plain prompts to
  ``/v1/completions``. One HTTP request per sample (``n=1`` with the sample's seed, see
  :func:`curate.models.teachers.sample_seed`), so every sample can be cached and re-asked alone.
* At most ``max_concurrency`` requests in flight (a thread pool of that size).
* Retries (``max_retries``) on 429, 5xx, timeouts and connection errors, with exponential backoff and full
  jitter (try ``t`` sleeps ``uniform(0, retry_backoff_s * 2**t)``, capped at 60 s; a ``Retry-After`` header is
  honoured when longer). The client's own retries are off so the policy is this one. Any other HTTP status
  is a :class:`CurateError` naming the status and the server's message; no retry.
* When a sample fails for good, no new request is started, requests in flight finish (and reach
  ``on_result``, i.e. the cache), then the first error is raised.
* The API key is read from the environment variable ``spec.api_key_env`` names, when the teacher is built;
  it is never logged, never part of :meth:`OpenAITeacher.fingerprint` and so never of a cache key.
* Generated-token log-probs when asked (``logprobs``/``top_logprobs``) and the server returns them.
* :meth:`OpenAITeacher.topk_logprobs` captures a served teacher's top-k for ``curate distill`` through vLLM's
  ``prompt_logprobs`` extension on ``/v1/completions`` (token ids in, ``{token id: logprob}`` per position
  out), falling back to ``echo`` + ``logprobs`` with ``return_tokens_as_token_ids``; servers that return
  neither get a clear error. Servers do not return the tail mass, so ``tail_logmass = log1p(-sum exp(top-k))``.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from curate.core.errors import CurateError, pip_hint
from curate.models.generation import (
    ChatMessage,
    Generation,
    GenerationRequest,
    OnResult,
    SampleTask,
    TeacherBase,
    TeacherSpec,
)

if TYPE_CHECKING:
    from curate.models.topk import TopK

_MAX_BACKOFF_S = 60.0
_PLACEHOLDER_KEY = "EMPTY"  # what vLLM's docs send to a server started without --api-key


class TeacherServerError(CurateError):
    """A teacher server answered with an error that retrying does not fix, or kept failing past the retries.

    ``status`` is the HTTP status (None for a connection error or a timeout), ``retryable`` whether the last
    failure was of the retried kind.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.retryable = status, retryable


class OpenAITeacher(TeacherBase):
    """A served model as a text teacher (``generate_batch``) and a KD top-k source (``topk_logprobs``)."""

    def __init__(self, spec: TeacherSpec) -> None:
        try:
            import openai
        except ImportError as e:  # pragma: no cover - the extra is part of the synth extra
            raise CurateError(f"the OpenAI-compatible teacher needs the `openai` package: {pip_hint('synth')}") from e
        if spec.backend != "openai" or not spec.base_url:
            raise CurateError("OpenAITeacher needs a spec with backend 'openai' and a base_url")
        self.spec = spec
        self.name = f"{spec.model}@{spec.base_url}"
        key = _PLACEHOLDER_KEY
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise CurateError(f"teacher {spec.model}: the environment variable {spec.api_key_env} (named by "
                                  "api_key_env) is not set or empty")
        self._openai = openai
        self.client = openai.OpenAI(api_key=key, base_url=spec.base_url, timeout=spec.timeout_s, max_retries=0)
        del key
        self._tokenizer: Any = None
        self.requests_sent = 0  # HTTP requests, retries included (for tests and reports)
        self.retries = 0
        self._count_lock = threading.Lock()

    # -- identity -----------------------------------------------------------------------------------------
    def cache_identity(self) -> dict[str, Any]:
        """Server URL, served model name, declared revision and endpoint choice; never the key. Computed without a
        request, so a fully cached rerun sends nothing. (The server cannot be asked which weights it serves
        without a call, and /v1/models rarely says; set ``revision`` when it may change under one name.)"""
        s = self.spec
        assert s.base_url is not None
        return {"backend": "openai", "base_url": s.base_url.rstrip("/"), "model": s.model, "revision": s.revision,
                "chat": s.chat}

    def fingerprint(self) -> dict[str, Any]:
        """:meth:`cache_identity` plus what ``curate distill``'s top-k cache records (``teacher``, ``vocab_size``)."""
        vs = self.spec.vocab_size or (len(self.tokenizer) if self.tokenizer is not None else None)
        return {**self.cache_identity(), "teacher": self.name, "vocab_size": vs}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.spec.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.spec.tokenizer)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        if self.spec.vocab_size:
            return int(self.spec.vocab_size)
        if self.tokenizer is not None:
            return len(self.tokenizer)
        raise CurateError(f"teacher {self.name}: set vocab_size (or tokenizer) in the teacher spec for top-k capture")

    # -- HTTP with retries --------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        """``fn(**kw)`` with the retry policy of the module docstring."""
        oa = self._openai
        last: Exception | None = None
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                delay = random.uniform(0, self.spec.retry_backoff_s * 2 ** (attempt - 1))
                ra = _retry_after(last)
                time.sleep(min(_MAX_BACKOFF_S, max(delay, ra or 0.0)))
                with self._count_lock:
                    self.retries += 1
            with self._count_lock:
                self.requests_sent += 1
            try:
                return fn(**kw)
            except (oa.RateLimitError, oa.InternalServerError, oa.APITimeoutError, oa.APIConnectionError) as e:
                last = e
            except oa.APIStatusError as e:
                if e.status_code >= 500 or e.status_code in (408, 409, 429):
                    last = e
                    continue
                raise TeacherServerError(
                    f"teacher server {self.spec.base_url} answered HTTP {e.status_code} to {what} "
                    f"(model {self.spec.model}): {_server_message(e)}", status=e.status_code) from None
        assert last is not None
        status = getattr(last, "status_code", None)
        kind = f"HTTP {status}: {_server_message(last)}" if status else f"{type(last).__name__}: {last}"
        raise TeacherServerError(
            f"teacher server {self.spec.base_url} failed {what} {self.spec.max_retries + 1} times "
            f"(model {self.spec.model}); last error {kind}", status=status, retryable=True) from None

    # -- generation ---------------------------------------------------------------------------------------
    def _one(self, task: SampleTask) -> Generation:
        r = task.request
        kw: dict[str, Any] = {"model": self.spec.model, "max_tokens": r.max_new_tokens, "temperature": r.temperature,
                              "top_p": r.top_p, "n": 1}
        if task.seed is not None:
            kw["seed"] = task.seed
        if r.stop:
            kw["stop"] = list(r.stop)
        chat = r.messages is not None or self.spec.chat
        if chat:
            msgs = r.messages or (ChatMessage(role="user", content=r.prompt or ""),)
            kw["messages"] = [m.model_dump() for m in msgs]
            if r.logprobs or r.top_logprobs:
                kw["logprobs"] = True
                if r.top_logprobs:
                    kw["top_logprobs"] = r.top_logprobs
            resp = self._call("a chat completion", self.client.chat.completions.create, **kw)
        else:
            kw["prompt"] = r.prompt
            if r.logprobs or r.top_logprobs:
                kw["logprobs"] = max(1, r.top_logprobs) if r.top_logprobs else 0
            resp = self._call("a completion", self.client.completions.create, **kw)
        if not resp.choices:
            raise TeacherServerError(f"teacher server {self.spec.base_url} returned no choices (model {self.spec.model})")
        ch = resp.choices[0]
        gen = Generation(text=(ch.message.content or "") if chat else (ch.text or ""), finish_reason=ch.finish_reason,
                         request_index=task.request_index, sample_index=task.sample_index)
        if (r.logprobs or r.top_logprobs) and getattr(ch, "logprobs", None) is not None:
            _fill_logprobs(gen, ch.logprobs, chat=chat, want_top=r.top_logprobs)
        return gen

    def generate_samples(self, tasks: Sequence[SampleTask], *, on_result: OnResult | None = None) -> list[Generation]:
        out: list[Generation | None] = [None] * len(tasks)

        def run(i: int) -> None:
            g = self._one(tasks[i])
            out[i] = g
            if on_result is not None:
                on_result(tasks[i], g)

        self._map(run, range(len(tasks)))
        return [g for g in out if g is not None]

    def _map(self, fn: Any, items: Sequence[int] | range) -> None:
        """``fn(i)`` for every item with at most ``max_concurrency`` in flight; stop starting new ones after the
        first failure, let the running ones finish, then raise it."""
        items = list(items)
        if not items:
            return
        if self.spec.max_concurrency == 1 or len(items) == 1:
            for i in items:
                fn(i)
            return
        stop = threading.Event()

        def guarded(i: int) -> None:
            if not stop.is_set():
                try:
                    fn(i)
                except BaseException:
                    stop.set()
                    raise

        with ThreadPoolExecutor(max_workers=min(self.spec.max_concurrency, len(items)),
                                thread_name_prefix="curate-teacher") as pool:
            futs: list[Future[None]] = [pool.submit(guarded, i) for i in items]
            done, _ = wait(futs, return_when=FIRST_EXCEPTION)
            if stop.is_set():
                for f in futs:
                    f.cancel()
            wait(futs)
        for f in futs:
            if not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    # -- KD: top-k capture --------------------------------------------------------------------------------
    def topk_logprobs(self, input_ids: Any, attention_mask: Any = None, k: int = 16) -> TopK:
        """Top-k log-probs ``[B, T, k]`` of the served model at each position (the next-token distribution after
        tokens ``0..t``), for token-id sequences; padded positions (mask 0) hold id 0, log-prob -inf."""
        import torch

        from curate.models.topk import TopK

        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).reshape(ids.shape)
        b, t = ids.shape
        out_ids = torch.zeros((b, t, k), dtype=torch.long)
        out_lp = torch.full((b, t, k), float("-inf"))
        tail = torch.full((b, t), float("-inf"))
        rows = [ids[i][mask[i].bool()].tolist() for i in range(b)]
        pos = [mask[i].bool().nonzero()[:, 0].tolist() for i in range(b)]

        def run(i: int) -> None:
            dists = self._prompt_topk(rows[i], k)
            for j, d in enumerate(dists):
                top = sorted(d.items(), key=lambda kv: -kv[1])[:k]
                p = pos[i][j]
                for c, (tok, lp) in enumerate(top):
                    out_ids[i, p, c], out_lp[i, p, c] = tok, lp
                mass = sum(math.exp(lp) for _, lp in top)
                tail[i, p] = math.log1p(-mass) if mass < 1.0 else float("-inf")

        self._map(run, range(b))
        return TopK(out_ids, out_lp, tail)

    def _prompt_topk(self, tokens: list[int], k: int) -> list[dict[int, float]]:
        """One ``{token id: logprob}`` per position of ``tokens``: position j = distribution of the token after
        ``tokens[:j+1]``. vLLM's ``prompt_logprobs`` gives positions 1..L-1's distributions as entries 1..L-1 (the
        one over token j given tokens before it), so position j reads entry j+1; the last position reads the one
        generated token's ``top_logprobs``."""
        said: list[str] = []  # what a server that refuses the extensions answered (4xx), for the error

        def ask(what: str, **extra: Any) -> Any:
            try:
                resp = self._call(what, self.client.completions.create, model=self.spec.model, prompt=tokens,
                                  max_tokens=1, temperature=0.0, logprobs=k, **extra)
            except TeacherServerError as e:
                if e.status not in (400, 404, 422):
                    raise
                said.append(str(e))
                return None
            return resp.choices[0] if resp.choices else None

        ch = ask("a prompt-logprobs completion",
                 extra_body={"prompt_logprobs": k, "return_tokens_as_token_ids": True})
        plp, last = _extra(ch, "prompt_logprobs"), _last_top(ch)
        if plp is not None and last is not None:
            return [*(_id_dict(e) for e in list(plp)[1:len(tokens)]), last]
        ch = ask("an echo completion", echo=True, extra_body={"return_tokens_as_token_ids": True})
        lp = getattr(ch, "logprobs", None) if ch is not None else None
        tops = getattr(lp, "top_logprobs", None) if lp is not None else None
        if tops and len(tops) >= len(tokens) + 1 and all(t is None or _ids_keyed(t) for t in tops):
            return [_id_dict(e) for e in tops[1:len(tokens) + 1]]
        raise CurateError(
            f"teacher server {self.spec.base_url} (model {self.spec.model}) returns no prompt log-probs keyed by "
            "token id (vLLM's `prompt_logprobs`, or `echo` + `logprobs` with `return_tokens_as_token_ids`); serve the "
            "teacher with vLLM, or capture top-k with a local teacher"
            + (f". The server said: {' | '.join(said)}" if said else ""))

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"OpenAITeacher({self.spec.model!r}, base_url={self.spec.base_url!r}, " \
               f"max_concurrency={self.spec.max_concurrency})"


# ----------------------------------------------------------------------------------------------- parsing
def _server_message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("detail"):
            return str(body["detail"])
    resp = getattr(e, "response", None)
    if resp is not None:
        try:
            return resp.text[:500]
        except Exception:  # noqa: BLE001 - a body that cannot be read leaves the client's message
            pass
    return str(getattr(e, "message", e))[:500]


def _retry_after(e: Exception | None) -> float | None:
    resp = getattr(e, "response", None)
    if resp is None:
        return None
    try:
        v = resp.headers.get("retry-after")
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _extra(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    v = getattr(obj, name, None)
    if v is None:
        v = (getattr(obj, "model_extra", None) or {}).get(name)
    return v


def _tok_id(key: Any) -> int:
    s = str(key)
    return int(s.split(":", 1)[1]) if s.startswith("token_id:") else int(s)


def _ids_keyed(d: Any) -> bool:
    try:
        for key in d:
            _tok_id(key)
        return True
    except (TypeError, ValueError):
        return False


def _id_dict(entry: Any) -> dict[int, float]:
    """``{id: logprob}`` from vLLM's ``{id: {"logprob": x, ...}}`` or ``{"token_id:id": x}`` entries."""
    if entry is None:
        return {}
    out: dict[int, float] = {}
    for key, v in dict(entry).items():
        lp = v.get("logprob") if isinstance(v, dict) else getattr(v, "logprob", v)
        out[_tok_id(key)] = float(lp)
    return out


def _last_top(ch: Any) -> dict[int, float] | None:
    lp = getattr(ch, "logprobs", None) if ch is not None else None
    tops = getattr(lp, "top_logprobs", None) if lp is not None else None
    if not tops or tops[0] is None or not _ids_keyed(tops[0]):
        return None
    return _id_dict(tops[0])


def _fill_logprobs(gen: Generation, lp: Any, *, chat: bool, want_top: int) -> None:
    if chat:
        content = getattr(lp, "content", None) or []
        gen.tokens = [c.token for c in content]
        gen.token_logprobs = [float(c.logprob) for c in content]
        if want_top:
            gen.top_logprobs = [{t.token: float(t.logprob) for t in (c.top_logprobs or [])} for c in content]
    else:
        gen.tokens = list(getattr(lp, "tokens", None) or [])
        gen.token_logprobs = [float(x) for x in (getattr(lp, "token_logprobs", None) or [])]
        if want_top:
            gen.top_logprobs = [dict(t or {}) for t in (getattr(lp, "top_logprobs", None) or [])]


__all__ = ["OpenAITeacher", "TeacherServerError", "GenerationRequest"]
