"""A small real OpenAI-compatible server for the backend tests: FastAPI + uvicorn around a real transformers model.

Run: ``python tests/models/openai_server.py --model DIR --port P [--api-key-env NAME]``.

It serves ``/v1/completions`` (text or token-id prompts; ``logprobs``, ``echo``, and vLLM's ``prompt_logprobs`` and
``return_tokens_as_token_ids`` extensions), ``/v1/chat/completions`` (``logprobs``/``top_logprobs``), ``/v1/models`` and
``/health``. Generation runs :class:`curate.models.teachers.LocalTeacher` on the model, so answers are real model
outputs. Concurrent generation requests are batched as a serving engine does: a worker thread takes every request
queued within ``--batch-window-ms`` (up to ``--max-batch``) into one ``generate`` call; the local backend's per-row
seeds make each answer independent of its batch-mates.

For the tests it adds what production servers do to clients, on demand:

* ``POST /_faults`` ``{"queue": [...], "delay_s": x}``: each API request first takes the next item of the queue:
  ``"429"`` (with ``Retry-After: 0``), ``"500"``, ``"503"``, ``"400:<message>"``, ``"slow:<seconds>"`` (sleep, then
  answer), or ``"ok"``; ``delay_s`` is slept by every API request, outside the model lock (network/queue latency,
  so concurrent requests overlap);
* ``GET /_stats``: API requests seen (``requests``), answered with 200 (``ok``), the most in flight at once
  (``max_in_flight``), and whether the last request carried the expected key (``auth_ok``);
  ``POST /_reset`` clears the counters and faults.

With ``--api-key-env NAME`` the server expects ``Authorization: Bearer $NAME`` and answers 401 otherwise.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class Batcher:
    """Collects generation tasks from request threads into batches for one model (a dynamic batcher)."""

    def __init__(self, teacher: Any, lock: threading.Lock, *, max_batch: int, window_s: float) -> None:
        self.teacher, self.lock, self.max_batch, self.window_s = teacher, lock, max_batch, window_s
        self.q: queue.Queue[tuple[Any, Future[Any]]] = queue.Queue()
        self.batches: list[int] = []  # sizes, for the stats
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, task: Any) -> Any:
        fut: Future[Any] = Future()
        self.q.put((task, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            items = [self.q.get()]
            deadline = time.monotonic() + self.window_s
            while len(items) < self.max_batch:
                try:
                    items.append(self.q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(items))
            try:
                with self.lock:
                    gens = self.teacher.generate_samples([t for t, _ in items])
                for (_, f), g in zip(items, gens):
                    f.set_result(g)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for _, f in items:
                    f.set_exception(e)


def build_app(model_dir: str, api_key: str | None, *, max_batch: int = 16, window_s: float = 0.01) -> FastAPI:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models.teachers import GenerationRequest, LocalTeacher, SampleTask
    from curate.synth.teacher import LocalHFTeacher

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    teacher = LocalTeacher(LocalHFTeacher(model, device="cpu", tokenizer=tok, name=model_dir), batch_size=max_batch)
    model_lock = threading.Lock()
    batcher = Batcher(teacher, model_lock, max_batch=max_batch, window_s=window_s)
    state: dict[str, Any] = {"queue": [], "delay_s": 0.0, "requests": 0, "ok": 0, "in_flight": 0,
                             "max_in_flight": 0, "auth_ok": None}
    slock = threading.Lock()
    app = FastAPI()

    def err(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "test_fault", "code": status}}, status_code=status,
                            headers=headers)

    def enter(request: Request) -> JSONResponse | None:
        """Count, check the key, apply the next fault; a response means 'answer this instead'."""
        with slock:
            state["requests"] += 1
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            fault = state["queue"].pop(0) if state["queue"] else "ok"
            delay = state["delay_s"]
        if api_key is not None:
            ok = request.headers.get("authorization") == f"Bearer {api_key}"
            state["auth_ok"] = ok
            if not ok:
                return err(401, "invalid API key")
        if delay:
            time.sleep(delay)
        if fault in ("429",):
            return err(429, "rate limited (test fault)", {"retry-after": "0"})
        if fault in ("500", "503"):
            return err(int(fault), f"server error {fault} (test fault)")
        if fault.startswith("400:"):
            return err(400, fault[4:])
        if fault.startswith("slow:"):
            time.sleep(float(fault[5:]))
        return None

    def leave(ok: bool) -> None:
        with slock:
            state["in_flight"] -= 1
            state["ok"] += int(ok)

    def top_dict(lp: torch.Tensor, k: int, as_ids: bool) -> dict[str, float]:
        v, i = lp.topk(k)
        return {(f"token_id:{int(t)}" if as_ids else tok.decode([int(t)])): float(x) for x, t in zip(v, i)}

    def generate(body: dict[str, Any], prompt: str | None, messages: list[dict[str, str]] | None) -> Any:
        k = body.get("top_logprobs") or (body.get("logprobs") if isinstance(body.get("logprobs"), int) else 0) or 0
        want = bool(body.get("logprobs"))
        req = GenerationRequest(prompt=prompt, messages=messages, max_new_tokens=int(body.get("max_tokens") or 16),
                                temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                                seed=body.get("seed"), stop=body.get("stop") or (), logprobs=want,
                                top_logprobs=int(k) if want else 0)
        return batcher.submit(SampleTask(req)), int(k)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_dir, "object": "model", "owned_by": "test"}]}

    @app.get("/_stats")
    def stats() -> dict[str, Any]:
        with slock:
            return {**{k: v for k, v in state.items() if k != "queue"}, "batches": list(batcher.batches)}

    @app.post("/_faults")
    async def faults(request: Request) -> dict[str, Any]:
        body = await request.json()
        with slock:
            state["queue"] = list(body.get("queue", []))
            state["delay_s"] = float(body.get("delay_s", 0.0))
        return {"ok": True}

    @app.post("/_reset")
    def reset() -> dict[str, Any]:
        with slock:
            state.update(queue=[], delay_s=0.0, requests=0, ok=0, max_in_flight=state["in_flight"], auth_ok=None)
            batcher.batches.clear()
        return {"ok": True}

    @app.post("/v1/completions")
    def completions(request: Request, body: dict[str, Any]) -> Any:
        bad = enter(request)
        if bad is not None:
            leave(False)
            return bad
        try:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                ids = [int(x) for x in prompt]
                text = tok.decode(ids)
            elif isinstance(prompt, str):
                text = prompt
                ids = tok(prompt)["input_ids"]
            else:
                return err(400, "prompt must be a string or a list of token ids")
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            choice: dict[str, Any] = {"index": 0}
            if isinstance(prompt, list):  # token ids: vLLM's scoring use (prompt_logprobs / echo), one greedy token
                with model_lock:
                    lp = torch.log_softmax(teacher.logits(torch.tensor([ids]))[0].float(), -1)
                if body.get("prompt_logprobs") is not None:
                    k = int(body["prompt_logprobs"])
                    plp: list[Any] = [None]
                    for j in range(1, len(ids)):  # vLLM: entry j = distribution of token j given tokens < j
                        v, i = lp[j - 1].topk(k)
                        d = {str(int(t)): {"logprob": float(x), "rank": r + 1, "decoded_token": tok.decode([int(t)])}
                             for r, (x, t) in enumerate(zip(v, i))}
                        d.setdefault(str(ids[j]), {"logprob": float(lp[j - 1, ids[j]]), "rank": None,
                                                   "decoded_token": tok.decode([ids[j]])})
                        plp.append(d)
                    choice["prompt_logprobs"] = plp
                nxt = int(lp[-1].argmax())
                choice.update(text=tok.decode([nxt]), finish_reason="length")
                if body.get("logprobs") is not None:
                    k = max(int(body["logprobs"]), 1)
                    tops: list[Any] = [top_dict(lp[-1], k, as_ids)]
                    toks = [f"token_id:{nxt}" if as_ids else tok.decode([nxt])]
                    tlp: list[Any] = [float(lp[-1, nxt])]
                    if body.get("echo"):
                        tops = [None] + [top_dict(lp[j - 1], k, as_ids) for j in range(1, len(ids))] + tops
                        toks = [f"token_id:{t}" if as_ids else tok.decode([t]) for t in ids] + toks
                        tlp = [None] + [float(lp[j - 1, ids[j]]) for j in range(1, len(ids))] + tlp
                    choice["logprobs"] = {"tokens": toks, "token_logprobs": tlp, "top_logprobs": tops,
                                          "text_offset": [0] * len(toks)}
            else:  # text prompt: a real generation (echo is not supported here, as in many servers)
                gen, _k = generate(body, text, None)
                choice.update(text=gen.text, finish_reason=gen.finish_reason)
                if body.get("logprobs") is not None and gen.token_logprobs is not None:
                    choice["logprobs"] = {"tokens": gen.tokens, "token_logprobs": gen.token_logprobs,
                                          "top_logprobs": gen.top_logprobs or [{} for _ in gen.tokens or []],
                                          "text_offset": [0] * len(gen.tokens or [])}
            leave(True)
            return {"id": "cmpl-test", "object": "text_completion", "created": int(time.time()),
                    "model": body.get("model"), "choices": [choice],
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}}
        except Exception as e:  # noqa: BLE001 - a test server reports its own bugs as 500s with the message
            leave(False)
            return err(500, f"{type(e).__name__}: {e}")

    @app.post("/v1/chat/completions")
    def chat(request: Request, body: dict[str, Any]) -> Any:
        bad = enter(request)
        if bad is not None:
            leave(False)
            return bad
        try:
            body = dict(body)
            if body.get("logprobs") and not body.get("top_logprobs"):
                body["top_logprobs"] = 0
            gen, k = generate(body, None, body["messages"])
            choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason,
                                      "message": {"role": "assistant", "content": gen.text}}
            if body.get("logprobs") and gen.token_logprobs is not None:
                tops = gen.top_logprobs or [{} for _ in gen.tokens or []]
                choice["logprobs"] = {"content": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode()),
                     "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in top.items()]}
                    for t, lp, top in zip(gen.tokens or [], gen.token_logprobs, tops)]}
            leave(True)
            return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"), "choices": [choice],
                    "usage": {"prompt_tokens": 0, "completion_tokens": len(gen.tokens or []), "total_tokens": 0}}
        except Exception as e:  # noqa: BLE001
            leave(False)
            return err(500, f"{type(e).__name__}: {e}")

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-key-env", default=None)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-window-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    key = os.environ.get(a.api_key_env) if a.api_key_env else None
    app = build_app(a.model, key, max_batch=a.max_batch, window_s=a.batch_window_ms / 1000)
    # many worker threads: the fault delay must overlap across requests, as a real server's queueing does
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", limit_concurrency=200,
                timeout_keep_alive=5)


if __name__ == "__main__":
    main()
