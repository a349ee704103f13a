"""OpenAI-compatible teacher against real servers on 127.0.0.1: the repo's test server (a real tiny Llama behind
FastAPI/uvicorn, with fault injection) and transformers' own ``transformers serve``.

Covers success (completions, chat, log-probs, parameters reaching the model), concurrency (overlap and the limit,
counted in flight on the server), 429/5xx retries, 4xx errors, timeouts, the API key (sent, never cached), a
server killed mid-run (clean error, answers kept, resume asks only the rest), zero calls on a cached rerun,
and top-k capture through ``prompt_logprobs``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openai")

from teacher_servers import API_KEY, Server, make_server  # noqa: E402

from curate.core.errors import CurateError  # noqa: E402
from curate.models.openai_teacher import OpenAITeacher, TeacherServerError  # noqa: E402
from curate.models.teachers import (  # noqa: E402
    CachedTeacher,
    GenerationRequest,
    LocalTeacher,
    TeacherSpec,
    load_teacher,
)

KEY_ENV = "CURATE_TEST_TEACHER_KEY"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)


@pytest.fixture()
def srv(server: Server) -> Server:
    server.reset()
    return server


def spec(s: Server, **kw) -> TeacherSpec:
    base = {"backend": "openai", "model": "tiny", "base_url": s.url, "api_key_env": KEY_ENV,
            "timeout_s": 30, "max_retries": 2, "retry_backoff_s": 0.05}
    return TeacherSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def local(tiny_dir: Path) -> LocalTeacher:
    return load_teacher({"model": str(tiny_dir), "device": "cpu"})  # type: ignore[return-value]


def reqs(n: int, **kw) -> list[GenerationRequest]:
    kw.setdefault("max_new_tokens", 4)
    return [GenerationRequest(prompt=f"Item {i}: the", seed=100 + i, temperature=0.9, **kw) for i in range(n)]


# ----------------------------------------------------------------------------------------------- success
def test_completions_and_chat_match_the_model(srv: Server, local: LocalTeacher) -> None:
    """The server runs the same model: same seed and parameters -> the same text as the local backend, so
    prompt, seed, temperature, max_tokens and stop all reached it."""
    t = OpenAITeacher(spec(srv))
    rs = [*reqs(3), GenerationRequest(prompt="Once upon", temperature=0, max_new_tokens=6),
          GenerationRequest(messages=[{"role": "user", "content": "Hi there"}], seed=4, max_new_tokens=5),
          GenerationRequest(prompt="Item 0: the", seed=100, temperature=0.9, max_new_tokens=4, n=2)]
    got, want = t.generate_batch(rs), local.generate_batch(rs)
    assert [g.text for g in got] == [g.text for g in want]
    assert [g.finish_reason for g in got] == [g.finish_reason for g in want]
    assert [(g.request_index, g.sample_index) for g in got][-2:] == [(5, 0), (5, 1)]
    assert srv.stats()["requests"] == 7 and srv.stats()["auth_ok"] is True


def test_generated_token_logprobs(srv: Server, local: LocalTeacher) -> None:
    t = OpenAITeacher(spec(srv))
    rs = [GenerationRequest(prompt="Once upon", temperature=0.8, seed=2, max_new_tokens=4, logprobs=True,
                            top_logprobs=2),
          GenerationRequest(messages=[{"role": "user", "content": "Hi"}], seed=2, max_new_tokens=4, logprobs=True,
                            top_logprobs=2)]
    for got, want in zip(t.generate_batch(rs), local.generate_batch(rs)):
        assert got.tokens == want.tokens and len(got.token_logprobs) == 4
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)
        assert [len(x) for x in got.top_logprobs] == [len(x) for x in want.top_logprobs]


def test_transformers_serve(transformers_serve: Server, local: LocalTeacher) -> None:
    """transformers' own server: completions and chat answer; greedy completion equals the local model's."""
    t = OpenAITeacher(TeacherSpec(backend="openai", model=str(local.hf.model.name_or_path),
                                  base_url=transformers_serve.url, max_retries=0, timeout_s=120))
    g = t.generate_batch([GenerationRequest(prompt="Once upon a time", temperature=0, max_new_tokens=5),
                          GenerationRequest(messages=[{"role": "user", "content": "Hi"}], temperature=0,
                                            max_new_tokens=5)])
    assert g[0].text == local.generate_batch([GenerationRequest(prompt="Once upon a time", temperature=0,
                                                                max_new_tokens=5)])[0].text
    assert g[0].finish_reason == "length" and isinstance(g[1].text, str) and g[1].finish_reason
    # it has no prompt log-probs: top-k capture says so instead of returning garbage
    with pytest.raises(CurateError, match="no prompt log-probs"):
        t.topk_logprobs(torch.tensor([[1, 2, 3]]), None, 4)


# ----------------------------------------------------------------------------------------------- concurrency
def test_concurrency_overlaps_and_respects_the_limit(srv: Server) -> None:
    delay = 1.0
    srv.faults(delay_s=delay)
    t0 = time.perf_counter()
    OpenAITeacher(spec(srv, max_concurrency=8)).generate_batch(reqs(8))
    wide = time.perf_counter() - t0
    st = srv.stats()
    assert st["max_in_flight"] >= 6 and st["ok"] == 8
    assert wide < 4 * delay, f"8 requests at concurrency 8 took {wide:.2f} s (serial would be >= {8 * delay} s)"
    assert max(st["batches"]) > 1  # the server batched requests that arrived together
    srv.reset()
    srv.faults(delay_s=0.3)
    t0 = time.perf_counter()
    OpenAITeacher(spec(srv, max_concurrency=3)).generate_batch(reqs(9))
    narrow = time.perf_counter() - t0
    assert srv.stats()["max_in_flight"] == 3  # never more than the limit, and the limit is used
    assert narrow >= 3 * 0.3


# ----------------------------------------------------------------------------------------------- errors
def test_429_and_5xx_are_retried(srv: Server) -> None:
    srv.faults(["429", "500", "503"])
    t = OpenAITeacher(spec(srv, max_retries=3, max_concurrency=1))
    g = t.generate_batch(reqs(1))
    assert g[0].text and t.retries == 3 and srv.stats()["requests"] == 4


def test_5xx_past_the_retries_is_a_clean_error(srv: Server) -> None:
    srv.faults(["500", "500", "500"])
    t = OpenAITeacher(spec(srv, max_retries=2))
    with pytest.raises(TeacherServerError, match=r"failed a completion 3 times.*HTTP 500.*server error 500") as e:
        t.generate_batch(reqs(1))
    assert e.value.status == 500 and e.value.retryable and srv.stats()["requests"] == 3


def test_4xx_is_not_retried_and_names_status_and_message(srv: Server) -> None:
    srv.faults(["400:prompt is too long for this model (test)"])
    t = OpenAITeacher(spec(srv))
    with pytest.raises(CurateError, match=r"HTTP 400 .*prompt is too long for this model \(test\)"):
        t.generate_batch(reqs(1))
    assert srv.stats()["requests"] == 1


def test_timeouts_are_retried_then_fail_cleanly(srv: Server) -> None:
    srv.faults(["slow:6"])
    t0 = time.perf_counter()
    g = OpenAITeacher(spec(srv, timeout_s=2.0, max_retries=1)).generate_batch(reqs(1))
    assert g[0].text and time.perf_counter() - t0 < 6.0
    srv.reset()
    srv.faults(["slow:4", "slow:4"])
    with pytest.raises(TeacherServerError, match="APITimeoutError"):
        OpenAITeacher(spec(srv, timeout_s=1.0, max_retries=1)).generate_batch(reqs(1))


def test_api_key_from_env_only(srv: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CurateError, match=f"{KEY_ENV}.*not set") as e:
        OpenAITeacher(spec(srv))
    assert API_KEY not in str(e.value)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    wrong = OpenAITeacher(spec(srv))
    with pytest.raises(CurateError, match="HTTP 401") as e:
        wrong.generate_batch(reqs(1))
    assert "sk-wrong" not in str(e.value)
    monkeypatch.setenv(KEY_ENV, API_KEY)
    right = OpenAITeacher(spec(srv))
    assert right.fingerprint() == wrong.fingerprint() and API_KEY not in repr(right.fingerprint())
    c = CachedTeacher(right, tmp_path / "k.sqlite")
    c.generate_batch(reqs(2))
    c.close()
    for f in tmp_path.iterdir():  # the database and its WAL files
        assert API_KEY.encode() not in f.read_bytes()


# ----------------------------------------------------------------------------------------------- cache + crash
def test_cached_rerun_sends_nothing(srv: Server, tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    first = CachedTeacher(OpenAITeacher(spec(srv, max_concurrency=4)), db).generate_batch(reqs(5))
    assert srv.stats()["requests"] == 5
    again = load_teacher(spec(srv), cache_path=db)
    out = again.generate_batch(reqs(5))
    assert srv.stats()["requests"] == 5 and [g.text for g in out] == [g.text for g in first]
    assert all(g.cached for g in out) and again.hits == 5 and again.misses == 0  # type: ignore[attr-defined]


def test_server_killed_mid_run_then_resume(tiny_dir: Path, tmp_path: Path) -> None:
    """SIGKILL the server after 3 answers: a clean CurateError, the answers so far are in the cache; restart
    it on the same address and a rerun asks only the missing ones."""
    s = make_server(tiny_dir, tmp_path / "server.log", api_key=API_KEY).start()
    try:
        s.faults(delay_s=0.4)
        db = tmp_path / "resume.sqlite"
        t = CachedTeacher(OpenAITeacher(spec(s, max_concurrency=2, max_retries=2)), db)
        answered: list[int] = []
        killed = threading.Event()

        def on_result(task, gen) -> None:  # noqa: ANN001 - the OnResult callback shape
            answered.append(task.request_index)
            if len(answered) == 3 and not killed.is_set():
                killed.set()
                s.kill()

        with pytest.raises(TeacherServerError, match="failed a completion 3 times.*APIConnectionError"):
            t.generate_batch(reqs(10), on_result=on_result)
        kept = t.store.__len__()
        assert killed.is_set() and 3 <= kept < 10 and kept == len(answered)
        t.close()

        s.start()  # same port: the same teacher fingerprint
        t2 = CachedTeacher(OpenAITeacher(spec(s, max_concurrency=2)), db)
        out = t2.generate_batch(reqs(10))
        assert s.stats()["requests"] == 10 - kept and t2.hits == kept and t2.misses == 10 - kept
        assert sum(g.cached for g in out) == kept and all(g.text for g in out)
    finally:
        s.kill()


# ----------------------------------------------------------------------------------------------- top-k (KD)
def test_topk_logprobs_from_server_match_local(srv: Server, local: LocalTeacher) -> None:
    from curate.distill.topk import TopK  # TODO(models): curate.models.topk

    t = OpenAITeacher(spec(srv, vocab_size=local.vocab_size, max_concurrency=2))
    ids = torch.tensor([[1, 520, 2372, 314, 253, 1345], [1, 42, 43, 44, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    got = t.topk_logprobs(ids, mask, 8)
    want = TopK.from_logits(local.logits(ids, mask), 8)
    m = mask.bool()
    assert torch.equal(got.ids[m], want.ids[m])
    assert torch.allclose(got.logprobs[m], want.logprobs[m], atol=1e-4)
    # log1p(-sum exp(top-k)) vs the exact logsumexp tail: equal while the top-k do not hold ~all the mass
    assert torch.allclose(got.tail_logmass[m], want.tail_logmass[m], atol=1e-3)
    top_mass = want.logprobs[m].exp().sum(-1)
    assert float(top_mass.mean()) > 0.2  # the tiny model is peaked enough for the tail to matter
    assert torch.isinf(got.logprobs[1, 4:]).all()
    assert srv.stats()["requests"] == 2
    assert t.vocab_size == local.vocab_size


def test_distill_topk_cache_from_served_teacher(srv: Server, local: LocalTeacher, tmp_path: Path) -> None:
    """`curate distill`'s top-k cache builds from a served teacher and holds what the local model gives."""
    from curate.distill.cache import build_teacher_cache
    from curate.synth.teacher import TeacherBackend  # TODO(models): curate.models.teacher

    t = OpenAITeacher(spec(srv, vocab_size=local.vocab_size))
    assert isinstance(t, TeacherBackend) and isinstance(local, TeacherBackend)
    batches = [[[1, 520, 2372, 314], [1, 42, 43]], [[5, 6, 7, 8, 9]]]
    served = build_teacher_cache(t, batches, tmp_path / "served", k=4)
    ref = build_teacher_cache(local, batches, tmp_path / "local", k=4)
    assert len(served) == len(ref) == 3 and served.settings["teacher"] == t.name
    for i in range(3):
        a, b = served[i], ref[i]
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.topk.ids, b.topk.ids)
        assert torch.allclose(a.topk.logprobs, b.topk.logprobs, atol=1e-4)
        assert torch.allclose(a.topk.tail_logmass, b.topk.tail_logmass, atol=1e-3)
    with pytest.raises(CurateError, match="no full-vocabulary logits"):
        t.logits(torch.tensor([[1, 2]]))


def test_topk_needs_vocab_size(srv: Server) -> None:
    with pytest.raises(CurateError, match="vocab_size"):
        _ = OpenAITeacher(spec(srv)).vocab_size


def test_key_never_in_environment_dump(srv: Server) -> None:
    """The spec holds the variable's name; the key is read once, when the client is built."""
    s = spec(srv)
    assert API_KEY not in s.model_dump_json() and s.api_key_env == KEY_ENV
    assert os.environ[KEY_ENV] == API_KEY
