"""Top-k teacher cache: round trip, refusal of mismatched settings, resume, and KL equivalence at k = V."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from curate.distill.cache import (  # noqa: E402
    CacheMismatchError,
    TeacherCache,
    build_teacher_cache,
    capture_settings,
    dataset_fingerprint,
)
from curate.distill.losses import forward_kl, select_valid  # noqa: E402
from curate.models.teacher import LocalHFTeacher  # noqa: E402

VOCAB = 256


def _teacher(seed: int = 0) -> LocalHFTeacher:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LocalHFTeacher(LlamaForCausalLM(cfg), device="cpu", name=f"tiny-llama-{seed}")


class CountingTeacher:
    """Delegates to a real teacher and counts forward passes (to observe resume skipping work)."""

    def __init__(self, inner: LocalHFTeacher) -> None:
        self.inner, self.calls = inner, 0
        self.name, self.tokenizer, self.vocab_size = inner.name, inner.tokenizer, inner.vocab_size

    def fingerprint(self):
        return self.inner.fingerprint()

    def topk_logprobs(self, input_ids, attention_mask=None, k=16):
        self.calls += 1
        return self.inner.topk_logprobs(input_ids, attention_mask, k)


@pytest.fixture(scope="module")
def teacher():
    return _teacher()


def _batches(seed: int = 0):
    """Three batches in the three accepted forms: a [B,T] tensor, ragged lists, a dict with a mask."""
    g = torch.Generator().manual_seed(seed)
    b0 = torch.randint(1, VOCAB, (2, 10), generator=g)
    b1 = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (3, 12, 7)]
    ids = torch.randint(1, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return [b0, b1, {"input_ids": ids, "attention_mask": mask}]


def _flat_sequences(batches):
    out = [s for s in batches[0]] + [torch.tensor(s) for s in batches[1]]
    d = batches[2]
    out += [d["input_ids"][i][d["attention_mask"][i].bool()] for i in range(2)]
    return out


def test_round_trip_matches_online_teacher(teacher, tmp_path):
    batches = _batches()
    cache = build_teacher_cache(teacher, batches, tmp_path / "c", k=8)
    seqs = _flat_sequences(batches)
    assert len(cache) == len(seqs) == 7
    for i, seq in enumerate(seqs):
        item = cache[i]
        assert torch.equal(item.input_ids, seq)
        online = teacher.topk_logprobs(seq[None], None, 8)
        assert torch.equal(item.topk.ids, online.ids[0])
        assert torch.allclose(item.topk.logprobs, online.logprobs[0], atol=1e-5)
        assert torch.allclose(item.topk.tail_logmass, online.tail_logmass[0], atol=1e-5)
    assert torch.equal(cache[-1].input_ids, seqs[-1])
    with pytest.raises(IndexError):
        cache[7]
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    s = meta["settings"]
    assert meta["complete"] and meta["num_tokens"] == sum(len(x) for x in seqs)
    assert s["k"] == 8 and s["temperature"] == 1.0 and s["vocab_size"] == VOCAB and s["teacher"] == "tiny-llama-0"
    assert s["teacher_config_hash"] and s["teacher_weights_hash"] and s["dataset_fingerprint"]
    assert meta["bytes_per_token"] > 8 * (4 + 4)  # ids int32 + float32 log-probs per token
    # a reopened cache is the same; padded collation keeps rows aligned
    again = TeacherCache(tmp_path / "c")
    ids, mask, tk = again.collate([3, 0])
    assert ids.shape == (2, 12) and tk.ids.shape == (2, 12, 8)
    assert torch.equal(ids[0], seqs[3]) and mask[1, 10:].sum() == 0
    assert torch.equal(tk.ids[1, :10], cache[0].topk.ids)


def test_tail_mass_is_exact(teacher, tmp_path):
    batches = _batches(1)
    cache = build_teacher_cache(teacher, batches[:1], tmp_path / "c", k=5)
    seq = cache[1]
    lp = torch.log_softmax(teacher.logits(seq.input_ids[None])[0].double(), -1)
    top = lp.gather(-1, seq.topk.ids)
    expect = torch.log1p(-top.exp().sum(-1))
    assert torch.allclose(seq.topk.tail_logmass.double(), expect, atol=1e-5)
    assert (seq.topk.tail_logmass < 0).all()


def test_forward_kl_from_cache_with_k_equal_v_equals_online(teacher, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    batches = _batches(2)
    cache = build_teacher_cache(teacher, batches[:2], tmp_path / "c", k=VOCAB)
    torch.manual_seed(9)
    student = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           max_position_embeddings=64)).eval()
    ids, mask, tk = cache.collate(range(len(cache)))
    labels = ids.masked_fill(mask == 0, -100)
    s_logits = student(input_ids=ids, attention_mask=mask).logits
    rows, _ = select_valid(s_logits, labels)
    t_rows, _ = select_valid(teacher.logits(ids, mask), labels)
    c_rows, _ = select_valid(tk, labels)
    for temp in (1.0, 2.0):
        online = forward_kl(rows, t_rows, temp)
        cached = forward_kl(rows, c_rows, temp)
        assert torch.allclose(cached, online, atol=1e-5), (cached - online).abs().max()
    # the same against the top-16 cache is a (strictly smaller) lower bound
    small = build_teacher_cache(teacher, batches[:2], tmp_path / "c16", k=16)
    _, _, tk16 = small.collate(range(len(small)))
    c16, _ = select_valid(tk16, labels)
    assert (forward_kl(rows, c16) <= forward_kl(rows, t_rows) + 1e-6).all()


def test_mismatch_refused(teacher, tmp_path):
    cache = build_teacher_cache(teacher, _batches()[:1], tmp_path / "c", k=8, max_len=32)
    expected = capture_settings(teacher, k=8, max_len=32)
    cache.check_compatible(expected)
    cache.check_compatible({"k": 8, "vocab_size": VOCAB})
    with pytest.raises(CacheMismatchError, match="k: cache=8 expected=16"):
        cache.check_compatible({**expected, "k": 16})
    with pytest.raises(CacheMismatchError, match="teacher_weights_hash"):
        cache.check_compatible(capture_settings(_teacher(seed=1), k=8, max_len=32))
    with pytest.raises(CacheMismatchError, match="tokenizer_vocab_hash"):
        cache.check_compatible({"tokenizer_vocab_hash": "0123456789abcdef"})
    with pytest.raises(CacheMismatchError, match="dataset_fingerprint"):
        cache.check_compatible({"dataset_fingerprint": "other-data"})
    # building into the same folder with different capture settings is refused too
    with pytest.raises(CacheMismatchError, match="max_len"):
        build_teacher_cache(teacher, _batches()[:1], tmp_path / "c", k=8, max_len=16)
    # an interrupted build is not accepted for training
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["complete"] = False
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheMismatchError, match="incomplete"):
        TeacherCache(tmp_path / "c").check_compatible(expected)


def test_resume_skips_finished_shards(teacher, tmp_path):
    batches = _batches(3)
    out = tmp_path / "c"

    def interrupted():
        yield batches[0]
        yield batches[1]
        raise KeyboardInterrupt

    first = CountingTeacher(teacher)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(first, interrupted(), out, k=4)
    assert first.calls == 2
    assert not json.loads((out / "meta.json").read_text())["complete"]
    second = CountingTeacher(teacher)
    cache = build_teacher_cache(second, batches, out, k=4)
    assert second.calls == 1 and cache.meta["shards_built"] == 1  # only the unfinished third batch ran
    fresh = build_teacher_cache(teacher, batches, tmp_path / "fresh", k=4)
    assert cache.settings["dataset_fingerprint"] == fresh.settings["dataset_fingerprint"]
    # the fingerprint depends on the sequences, not on how they were batched; a trainer can recompute it
    seqs = _flat_sequences(batches)
    assert fresh.settings["dataset_fingerprint"] == dataset_fingerprint(seqs)
    rebatched = build_teacher_cache(teacher, [seqs[:1], seqs[1:]], tmp_path / "rebatched", k=4)
    assert rebatched.settings["dataset_fingerprint"] == fresh.settings["dataset_fingerprint"]
    assert dataset_fingerprint(seqs[::-1]) != dataset_fingerprint(seqs)
    for i in range(len(fresh)):
        assert torch.equal(cache[i].topk.ids, fresh[i].topk.ids)
        assert torch.equal(cache[i].topk.logprobs, fresh[i].topk.logprobs)
    # a shard whose tokens changed is rebuilt, not silently reused
    changed = [batches[0] + 1, batches[1], batches[2]]
    third = CountingTeacher(teacher)
    rebuilt = build_teacher_cache(third, changed, out, k=4)
    assert third.calls == 1 and torch.equal(rebuilt[0].input_ids, batches[0][0] + 1)
    assert rebuilt.settings["dataset_fingerprint"] != fresh.settings["dataset_fingerprint"]


def test_max_len_and_half_precision(teacher, tmp_path):
    batches = _batches(4)
    cache = build_teacher_cache(teacher, batches, tmp_path / "c", k=6, max_len=5, logprob_dtype="bfloat16")
    assert all(len(cache[i]) <= 5 for i in range(len(cache)))
    ref = build_teacher_cache(teacher, batches, tmp_path / "r", k=6, max_len=5)
    assert torch.allclose(cache[2].topk.logprobs, ref[2].topk.logprobs, atol=0.05)
    assert cache.meta["bytes_per_token"] < ref.meta["bytes_per_token"]
    with pytest.raises(ValueError, match="logprob_dtype"):
        build_teacher_cache(teacher, batches, tmp_path / "x", k=6, logprob_dtype="int8")
