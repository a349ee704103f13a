"""The CPU head path's gradient bookkeeping (curate.distill.fused.HeadInto with a reused gradient buffer, the
tied embedding's sparse lookup in DistillTrainer) against float64 autograd of the plain ops."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from curate.distill.config import DistillConfig  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.fused import HeadInto  # noqa: E402
from curate.distill.trainer import DistillTrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


def test_head_into_accumulates_into_the_buffer_like_autograd_float64():
    """Three chunks (two micro-batches) of HeadInto into a reused [V, H] gradient buffer, then a sparse
    embedding lookup of the same (tied) weight: w.grad is the buffer itself and equals float64 autograd of
    F.linear + a dense F.embedding to rounding; a second step (grad set to None) reuses the buffer."""
    g = torch.Generator().manual_seed(0)
    v, hdim = 37, 8
    w0 = torch.randn(v, hdim, generator=g, dtype=torch.float64)
    hs = [torch.randn(n, hdim, generator=g, dtype=torch.float64) for n in (5, 3, 6)]
    ids = torch.randint(0, v, (2, 7), generator=g)
    gouts = [torch.randn(h.shape[0], v, generator=g, dtype=torch.float64) for h in hs]
    ge = torch.randn(2, 7, hdim, generator=g, dtype=torch.float64)

    ref_w = w0.clone().requires_grad_(True)
    ref_h = [h.clone().requires_grad_(True) for h in hs]
    for h, go in zip(ref_h, gouts, strict=True):
        (F.linear(h, ref_w) * go).sum().backward()
    (F.embedding(ids, ref_w) * ge).sum().backward()

    w = w0.clone().requires_grad_(True)
    buf = torch.empty_like(w0)
    for step in range(2):
        w.grad = None
        new_h = [h.clone().requires_grad_(True) for h in hs]
        for h, go in zip(new_h, gouts, strict=True):
            out = torch.empty(h.shape[0], v, dtype=torch.float64)
            (HeadInto.apply(h, w, out, buf) * go).sum().backward()
        (F.embedding(ids, w, sparse=True) * ge).sum().backward()
        assert w.grad.data_ptr() == buf.data_ptr() and not w.grad.is_sparse, step
        torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-12, atol=1e-12)
        for a, b in zip(new_h, ref_h, strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    # without a buffer (or for a non-leaf weight) HeadInto returns the gradient to autograd as before
    w2 = w0.clone().requires_grad_(True)
    for h, go in zip(hs, gouts, strict=True):
        (HeadInto.apply(h, w2, torch.empty(h.shape[0], v, dtype=torch.float64)) * go).sum().backward()
    (F.embedding(ids, w2) * ge).sum().backward()
    torch.testing.assert_close(w2.grad, ref_w.grad, rtol=1e-12, atol=1e-12)


def _llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def test_trainer_step_gradient_matches_float64_reference(tmp_path):
    """A train step's accumulated gradients (2 micro-batches, 3 chunks each, tied embedding: the reused head
    gradient buffer + the sparse lookup) equal float64 autograd of the same forward-KL loss through the
    whole model; the embedding is left non-sparse, and the next step writes into the same buffer."""
    teacher, student = _llama(1), _llama(2)
    ref_student = _llama(2).double()
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in (20, 25, 18, 22)]
    d = TokenData(seqs, [2, 0, 3, 1])
    c = DistillConfig.model_validate(dict(
        teacher={"from_config": {"model_type": "llama"}}, student={"from_config": {"model_type": "llama"}},
        data={"train": ["unused.jsonl"]}, output_dir=str(tmp_path / "out"), progress=False, plot=False,
        loss={"name": "forward_kl", "alpha": 0.0, "temperature": 1.0, "chunk_tokens": 16},
        optim={"lr": 1e-3, "batch_size": 2, "grad_accum": 2, "max_steps": 2}))
    tr = DistillTrainer(c, student, d, teacher=teacher)
    assert tr._sparse_emb is student.get_input_embeddings()
    tr._perm_cache = (0, [0, 1, 2, 3])
    micro = [tr._batch([0, 1]), tr._batch([2, 3])]
    n_total = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    for m in micro:
        tr._micro(m, n_total)
    tr._dense_grads()
    w = student.get_input_embeddings().weight
    assert w.grad.data_ptr() == tr._head_grad.data_ptr() and not student.get_input_embeddings().sparse

    t64 = teacher.double()
    total = 0.0
    for m in micro:
        ids, att = m["input_ids"], m["attention_mask"]
        s = ref_student(input_ids=ids, attention_mask=att).logits[:, :-1]
        with torch.no_grad():
            t = t64(input_ids=ids, attention_mask=att).logits[:, :-1]
        mask = m["labels"][:, 1:] != -100
        lt = F.log_softmax(t[mask], -1)
        total = total + (lt.exp() * (lt - F.log_softmax(s[mask], -1))).sum()
    (total / n_total).backward()
    for (name, p), (_, q) in zip(student.named_parameters(), ref_student.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=2e-6, msg=name)

    ptr = tr._head_grad.data_ptr()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.train_step()
    assert tr._head_grad.data_ptr() == ptr  # the buffer is reused, not re-allocated


def test_sparse_embedding_gradient_without_a_head_gradient_is_made_dense(tmp_path):
    """A backward that reaches only the (sparse) lookup leaves a sparse .grad; the step densifies it for
    clipping and the fused optimizer."""
    student = _llama(2)
    c = DistillConfig.model_validate(dict(
        teacher={"from_config": {"model_type": "llama"}}, student={"from_config": {"model_type": "llama"}},
        data={"train": ["unused.jsonl"]}, output_dir=str(tmp_path / "out"), progress=False, plot=False,
        loss={"name": "ce"}, optim={"batch_size": 1, "max_steps": 1}))
    tr = DistillTrainer(c, student, TokenData([[1, 2, 3, 4]], [0]))
    emb = student.get_input_embeddings()
    with tr._sparse_lookup(True):
        emb(torch.tensor([[1, 2, 2]])).sum().backward()
    assert emb.weight.grad.is_sparse and not emb.sparse
    tr._dense_grads()
    assert not emb.weight.grad.is_sparse and float(emb.weight.grad[2].sum()) == pytest.approx(2 * 16)
