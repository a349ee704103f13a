"""LocalHFTeacher against the model it wraps (tiny Llama built from config) and the real SmolLM2 GGUF."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from curate.models.packaged import smollm2_gguf_path  # noqa: E402
from curate.models.teacher import LocalHFTeacher, TeacherBackend, config_hash, tokenizer_hash  # noqa: E402
from curate.models.topk import TopK  # noqa: E402

MODEL_VOCAB = 260  # > tokenizer length (258): a padded embedding, as real checkpoints often have


def byte_tokenizer(extra: tuple[str, ...] = ()):
    """A byte-level tokenizer (256 byte tokens + <eos> + <pad>) built offline with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for tok in ("<eos>", "<pad>", *extra):
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")


def tiny_llama(seed: int = 0, vocab: int = MODEL_VOCAB, layers: int = 2, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=None, eos_token_id=256, pad_token_id=257, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama()
    return model, LocalHFTeacher(model, device="cpu", tokenizer=byte_tokenizer())


def test_protocol_and_identity(tiny):
    model, t = tiny
    assert isinstance(t, TeacherBackend)
    assert t.vocab_size == MODEL_VOCAB and len(t.tokenizer) == 258
    fp = t.fingerprint()
    assert fp["vocab_size"] == MODEL_VOCAB and fp["teacher_config_hash"] == config_hash(model.config)
    assert fp["tokenizer_vocab_hash"] == tokenizer_hash(byte_tokenizer())
    assert tokenizer_hash(byte_tokenizer(("<extra>",))) != fp["tokenizer_vocab_hash"]
    other = LocalHFTeacher(tiny_llama(seed=1), device="cpu")
    assert other.fingerprint()["teacher_config_hash"] == fp["teacher_config_hash"]  # same architecture
    assert other.fingerprint()["teacher_weights_hash"] != fp["teacher_weights_hash"]  # different weights
    assert not any(p.requires_grad for p in t.model.parameters())


def test_logits_match_model_and_respect_padding(tiny):
    model, t = tiny
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 9), generator=g)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    assert torch.allclose(t.logits(ids), ref, atol=1e-6)
    padded = torch.cat([ids[:1, :5], torch.full((1, 4), 257)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    assert torch.allclose(t.logits(padded, mask)[0, :5], t.logits(ids[:1, :5])[0], atol=1e-5)


def test_topk_logprobs(tiny):
    _, t = tiny
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    k = 12
    tk = t.topk_logprobs(ids, None, k)
    assert isinstance(tk, TopK)
    assert tk.ids.shape == (2, 7, k) and tk.logprobs.shape == (2, 7, k) and tk.tail_logmass.shape == (2, 7)
    lp = torch.log_softmax(t.logits(ids).double(), -1)
    ref_v, _ = lp.topk(k, -1)
    assert torch.allclose(tk.logprobs.double(), ref_v, atol=1e-5)
    assert torch.allclose(lp.gather(-1, tk.ids), tk.logprobs.double(), atol=1e-5)
    assert (tk.logprobs[..., :-1] >= tk.logprobs[..., 1:]).all()
    total = tk.logprobs.double().exp().sum(-1) + tk.tail_logmass.double().exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    full = t.topk_logprobs(ids, None, MODEL_VOCAB)
    assert torch.isinf(full.tail_logmass).all()


def _reference_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 reference: log_softmax, its top-k, and the logsumexp of everything outside the top-k."""
    lp = torch.log_softmax(logits.double(), -1)
    vals, ids = lp.topk(k, -1)
    tail = torch.logsumexp(lp.scatter(-1, ids, float("-inf")), -1)
    return vals, ids, tail


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_topk_matches_float64_reference(dtype):
    """topk_logprobs goes through topk_from_hidden (hidden states, head per chunk, in-place tail); against a
    float64 log_softmax of the model's own logits, over several chunks, with padding, and for the head run
    as a module (bf16: no fp32 buffer)."""
    from curate.models.teacher import topk_from_hidden

    model = tiny_llama(seed=3).to(dtype)
    t = LocalHFTeacher(model, device="cpu")
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 256, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    k = 10
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hid = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    ref_v, ref_i, ref_t = _reference_topk(logits, k)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    tk = t.topk_logprobs(ids, mask, k)
    assert tk.ids.shape == (3, 11, k) and tk.tail_logmass.shape == (3, 11) and tk.logprobs.dtype == torch.float32
    assert torch.allclose(tk.logprobs.double(), ref_v, atol=tol)
    assert torch.allclose(tk.tail_logmass.double(), ref_t, atol=tol)
    lp = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(lp.gather(-1, tk.ids), ref_v, atol=tol)  # the ids are a top-k (ties aside)
    for chunk in (4, 7, 33, 1000):  # chunk boundaries inside a row block, a single chunk
        got, buf = topk_from_hidden(hid.reshape(33, -1), model.lm_head, k, chunk=chunk)
        assert torch.allclose(got.logprobs.double(), ref_v.reshape(33, k), atol=tol)
        assert torch.allclose(got.tail_logmass.double(), ref_t.reshape(33), atol=tol)
        assert (buf is not None) == (dtype == torch.float32)
        again, _ = topk_from_hidden(hid.reshape(33, -1), model.lm_head, k, chunk=chunk, buf=buf)  # reused buffer
        assert torch.equal(again.ids, got.ids) and torch.equal(again.tail_logmass, got.tail_logmass)
    full, _ = topk_from_hidden(hid.reshape(33, -1), model.lm_head, MODEL_VOCAB, chunk=8)
    assert torch.isinf(full.tail_logmass).all() and torch.allclose(
        full.logprobs.double(), lp.reshape(33, -1).sort(-1, descending=True).values, atol=tol)


def test_generate_greedy_matches_manual_decoding_and_seeded_sampling(tiny):
    model, t = tiny
    tok = t.tokenizer
    prompts = ["hello wor", "ab"]
    out = t.generate(prompts, max_new_tokens=6, temperature=0)
    for prompt, text in zip(prompts, out):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert text == tok.decode(new, skip_special_tokens=True)
    state = torch.random.get_rng_state()
    a = t.generate(prompts, max_new_tokens=8, temperature=1.0, seed=5)
    b = t.generate(prompts, max_new_tokens=8, temperature=1.0, seed=5)
    c = t.generate(prompts, max_new_tokens=8, temperature=1.0, seed=6)
    assert a == b and a != c
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert t.generate([], max_new_tokens=3) == []


def test_load_from_folder(tiny, tmp_path):
    model, t = tiny
    model.save_pretrained(tmp_path)
    t.tokenizer.save_pretrained(tmp_path)
    loaded = LocalHFTeacher(tmp_path, device="cpu")
    assert loaded.name == str(tmp_path)
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(loaded.logits(ids), t.logits(ids), atol=1e-6)
    fa, fb = loaded.fingerprint(), t.fingerprint()
    for key in ("teacher_config_hash", "teacher_weights_hash", "tokenizer_vocab_hash", "vocab_size"):
        assert fa[key] == fb[key], key
    with pytest.raises(FileNotFoundError):
        LocalHFTeacher(tmp_path / "missing", device="cpu")


# ----------------------------------------------------------------------------------------------- real teacher
@pytest.fixture(scope="module")
def smollm2():
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    pytest.importorskip("gguf")
    return LocalHFTeacher(path, device="cpu")


def test_smollm2_gguf_teacher(smollm2):
    t = smollm2
    assert t.name.endswith(".gguf") and t.vocab_size == 49152
    text = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    ids = t.tokenizer(text, return_tensors="pt")["input_ids"]
    logits = t.logits(ids)
    assert logits.shape == (1, ids.shape[1], 49152)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert nll < 3.5, nll  # a working LM on plain English (uniform would be ln 49152 = 10.8)
    assert t.tokenizer.decode(logits[0, -1].argmax()).strip() == "Rome"
    tk = t.topk_logprobs(ids, None, 16)
    mass = tk.logprobs.exp().sum(-1) + tk.tail_logmass.exp()
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-4)
    out = t.generate(["The capital of France is"], max_new_tokens=5, temperature=0)
    assert len(out) == 1 and out[0].strip()


def test_topk_tail_far_below_the_top_stays_finite():
    """A peaked row whose tail lies ~700 nats below its top logit: the tail is summed relative to its own
    maximum (the (k+1)-th logit), so it neither underflows to -inf nor loses digits, as the float64
    reference shows; a row with an all -inf tail gives -inf, and a row with -inf logits inside the tail
    ignores them."""
    from curate.models.teacher import topk_from_hidden

    g = torch.Generator().manual_seed(5)
    h = torch.randn(6, 16, generator=g)
    head = torch.nn.Linear(16, 40, bias=False).requires_grad_(False)  # a teacher's head: no grad
    with torch.no_grad():
        head.weight.normal_(generator=g)
        head.weight[0] = h[0] * 700 / float(h[0] @ h[0])  # row 0: logit 700 at id 0, the rest O(10)
    k = 3
    got, _ = topk_from_hidden(h, head, k, chunk=4)
    ref_v, ref_i, ref_t = _reference_topk(head(h), k)
    assert torch.isfinite(got.tail_logmass).all() and float(got.tail_logmass[0]) < -600
    torch.testing.assert_close(got.tail_logmass.double(), ref_t, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(got.logprobs.double(), ref_v, rtol=1e-6, atol=1e-5)
    assert torch.equal(got.ids, ref_i)

    class Masked(torch.nn.Module):  # a module head: logits with -inf entries
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lo = head(x)
            lo[:, 20:] = float("-inf")  # -inf inside the tail of every row
            lo[1, k:] = float("-inf")  # row 1: only k finite logits, an empty tail
            return lo

    got, _ = topk_from_hidden(h, Masked(), k)
    ref_v, _, ref_t = _reference_topk(Masked()(h), k)
    assert float(got.tail_logmass[1]) == float("-inf") and float(ref_t[1]) == float("-inf")
    torch.testing.assert_close(got.tail_logmass.double(), ref_t, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(got.logprobs.double(), ref_v, rtol=1e-6, atol=1e-5)
