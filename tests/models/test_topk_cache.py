"""Per-example teacher signals read from the top-k cache equal a direct computation from teacher logits."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from curate.distill.cache import build_teacher_cache  # noqa: E402
from curate.models.topk_cache import cache_signals, curriculum, read_meta  # noqa: E402
from curate.synth.teacher import LocalHFTeacher  # noqa: E402

VOCAB = 64


@pytest.fixture(scope="module")
def setup():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (9, 14, 6, 11)]
    return model, seqs


def direct(model, seq, start, k=VOCAB):
    """Entropy / top-1 prob / NLL of the next token from the full softmax, rows start-1 .. L-2, and the
    mean probability outside the top-k."""
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
    rows = lp[start - 1: len(seq) - 1]
    nxt = torch.tensor(seq[start:])
    p_tail = 1 - rows.topk(k, -1).values.exp().sum(-1)
    return (float(-(rows.exp() * rows).sum(-1).mean()), float(rows.max(-1).values.exp().mean()),
            float(-rows.gather(-1, nxt[:, None]).mean()), float(p_tail.mean()))


@pytest.mark.parametrize("k", [VOCAB, 8])
def test_cache_signals_equal_direct_computation(setup, tmp_path, k):
    model, seqs = setup
    teacher = LocalHFTeacher(model, device="cpu", name="tiny")
    build_teacher_cache(teacher, [seqs[:2], seqs[2:]], tmp_path / "c", k=k)
    assert read_meta(tmp_path / "c")["complete"]
    starts = [1, 5, 2, 10]
    sig = cache_signals(tmp_path / "c", starts=starts)
    for i, seq in enumerate(seqs):
        ent, conf, nll, p_tail = direct(model, seq, starts[i], k)
        assert sig["teacher_confidence"][i] == pytest.approx(conf, rel=1e-5)
        if k == VOCAB:  # exact at k = V
            assert sig["teacher_entropy"][i] == pytest.approx(ent, rel=1e-5)
            assert sig["teacher_nll"][i] == pytest.approx(nll, rel=1e-5)
        else:  # top-k + tail bucket: lower bounds of the full entropy and NLL, within P_tail*log(V-k)
            assert sig["teacher_entropy"][i] <= ent + 1e-6
            assert sig["teacher_nll"][i] <= nll + 1e-6
            # full entropy = coarse entropy + P_tail * H(tail) <= coarse + P_tail * log(V - k)
            assert ent <= sig["teacher_entropy"][i] + p_tail * math.log(VOCAB - k) + 1e-5


def test_curriculum_orders_by_value_nan_last():
    assert curriculum([0.3, math.nan, 0.1, 0.2]) == [2, 3, 0, 1]
    assert curriculum([0.3, math.nan, 0.1, 0.2], descending=True) == [0, 3, 2, 1]
