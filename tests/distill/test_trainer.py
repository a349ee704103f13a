"""The distillation training loop against direct computations: loss normalisation over the whole
accumulated batch, chunked == unchunked, resume == uninterrupted, vocab slicing, cache mode."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from curate.distill.config import DistillConfig  # noqa: E402
from curate.distill.data import TokenData, collate  # noqa: E402
from curate.distill.trainer import DistillTrainer, lr_lambda  # noqa: E402

V = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


def gpt2(layers: int, embd: int, vocab: int = V, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=embd, n_layer=layers, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(cfg)


def llama(layers: int, hidden: int, vocab: int = V, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def data(n: int = 24, seed: int = 0, prompts: bool = True) -> TokenData:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(6, 20, (n,), generator=g).tolist()
    seqs = [torch.randint(2, V, (n_,), generator=g).tolist() for n_ in lens]
    n_prompt = [int(torch.randint(0, 4, (), generator=g)) if prompts else 0 for _ in seqs]
    return TokenData(seqs, n_prompt)


def cfg(tmp_path, **kw) -> DistillConfig:
    d = dict(teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
             data={"train": ["unused.jsonl"]}, output_dir=str(tmp_path / "out"), progress=False, plot=False)
    optim = dict(lr=3e-3, batch_size=4, grad_accum=1, max_steps=4, warmup_steps=1)
    optim.update(kw.pop("optim", {}))
    d["optim"] = optim
    d.update(kw)
    return DistillConfig.model_validate(d)


def params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def reference_loss(student, teacher, batch, alpha: float, T: float) -> torch.Tensor:
    """Direct computation: alpha*CE + (1-alpha)*T^2*KL(p_T^T||p_S^T), mean over valid (shifted) tokens."""
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    lab = batch["labels"][:, 1:]
    m = lab != -100
    ls, lt = F.log_softmax(s[m] / T, -1), F.log_softmax(t[m] / T, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    ce = F.cross_entropy(s[m], lab[m], reduction="none")
    return (alpha * ce + (1 - alpha) * T * T * kl).mean()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("chunk", [16, 4096])
def test_gradient_matches_direct_computation(tmp_path, arch, chunk):
    mk = gpt2 if arch == "gpt2" else llama
    teacher, student = mk(2, 32, seed=1), mk(1, 16, seed=2)
    ref_student = mk(1, 16, seed=2)
    c = cfg(tmp_path, loss={"name": "forward_kl", "alpha": 0.3, "temperature": 2.0, "chunk_tokens": chunk})
    d = data()
    tr = DistillTrainer(c, student, d, teacher=teacher)
    assert tr.s_parts is not None and tr.t_parts is not None  # hidden-state chunked path
    b = tr._batch(list(range(4)))
    n = int((b["labels"][:, 1:] != -100).sum())
    sums = tr._micro(b, n)
    ref = reference_loss(ref_student, teacher, b, 0.3, 2.0)
    ref.backward()
    assert sums["loss"] / n == pytest.approx(ref.item(), rel=1e-5)
    for (name, p), (_, q) in zip(student.named_parameters(), ref_student.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


def test_grad_accum_normalises_over_whole_batch(tmp_path):
    """batch 4 x accum 1 == batch 2 x accum 2 == batch 1 x accum 4 (same sequences, varied lengths)."""
    teacher = gpt2(2, 32, seed=1)
    results = []
    for bs, ga in ((4, 1), (2, 2), (1, 4)):
        student = gpt2(1, 16, seed=2)
        c = cfg(tmp_path, optim={"batch_size": bs, "grad_accum": ga, "max_steps": 1})
        tr = DistillTrainer(c, student, data(4), teacher=teacher)
        tr._perm_cache = (0, [0, 1, 2, 3])  # same order for every split
        rec = tr.train_step()
        results.append((rec["loss"], params(student)))
    for loss, p in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        for k in p:
            assert torch.allclose(p[k], results[0][1][k], atol=1e-6), k


def test_per_micro_batch_mean_would_differ(tmp_path):
    """Guard that the previous test can fail: per-micro-batch means weight short sequences more."""
    teacher, student = gpt2(2, 32, seed=1), gpt2(1, 16, seed=2)
    tr = DistillTrainer(cfg(tmp_path), student, data(4), teacher=teacher)
    b1, b2 = tr._batch([0]), tr._batch([1, 2, 3])
    n1, n2 = (int((b["labels"][:, 1:] != -100).sum()) for b in (b1, b2))
    assert n1 != n2
    l1, l2 = (reference_loss(student, teacher, b, 0.5, 1.0).item() for b in (b1, b2))
    whole = (l1 * n1 + l2 * n2) / (n1 + n2)
    assert abs((l1 + l2) / 2 - whole) > 1e-4


@pytest.mark.parametrize("on_policy", [0.0, 0.5])
def test_resume_reproduces_uninterrupted_run(tmp_path, on_policy):
    teacher = gpt2(2, 32, seed=1)
    kw = dict(optim={"max_steps": 4, "batch_size": 2, "grad_accum": 2}, on_policy_fraction=on_policy,
              on_policy={"max_new_tokens": 6, "prompt_tokens": 3})
    c1 = cfg(tmp_path / "a", **kw)
    s1 = gpt2(1, 16, seed=2)
    torch.manual_seed(123)
    t1 = DistillTrainer(c1, s1, data(), teacher=teacher, eos_id=1)
    t1.train()
    straight = [r["loss"] for r in t1.history]

    c2 = cfg(tmp_path / "b", **kw)
    s2 = gpt2(1, 16, seed=2)
    torch.manual_seed(123)
    t2 = DistillTrainer(c2, s2, data(), teacher=teacher, eos_id=1)
    t2.train(max_steps=2)
    s3 = gpt2(1, 16, seed=77)
    torch.manual_seed(999)
    t3 = DistillTrainer(c2, s3, data(), teacher=teacher, eos_id=1)
    t3.train(resume=True)
    assert t3.step == 4
    assert [r["loss"] for r in t3.history] == pytest.approx(straight, rel=1e-6, abs=1e-7)
    if on_policy:
        assert any(r["on_policy"] for r in t3.history) and not all(r["on_policy"] for r in t3.history)
    p1, p3 = params(s1), params(t3.student)
    for k in p1:
        assert torch.allclose(p1[k], p3[k], atol=1e-6), k
    lines = (tmp_path / "b" / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_padded_vocab_is_sliced(tmp_path):
    """Teacher logits 48 wide, student 40 (same tokenizer of 40 ids): loss uses the shared 40 ids."""
    teacher, student = gpt2(2, 32, vocab=48, seed=1), gpt2(1, 16, vocab=V, seed=2)
    ref_student = gpt2(1, 16, vocab=V, seed=2)
    c = cfg(tmp_path, loss={"name": "forward_kl", "alpha": 0.0})
    tr = DistillTrainer(c, student, data(), teacher=teacher, vocab=V)
    b = tr._batch([0, 1, 2])
    n = int((b["labels"][:, 1:] != -100).sum())
    sums = tr._micro(b, n)
    s = ref_student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1, :V]
    m = b["labels"][:, 1:] != -100
    lt, ls = F.log_softmax(t[m], -1), F.log_softmax(s[m], -1)
    assert sums["loss"] / n == pytest.approx((lt.exp() * (lt - ls)).sum(-1).mean().item(), rel=1e-5)


def test_cache_mode_with_full_k_equals_online(tmp_path):
    """A top-k cache with k = V carries the whole teacher distribution: same step as online."""
    from curate.distill.cache import build_teacher_cache
    from curate.models.teacher import LocalHFTeacher

    teacher = gpt2(2, 32, seed=1)
    d = data(8)
    backend = LocalHFTeacher(teacher, device="cpu", name="t")
    cache = build_teacher_cache(backend, [d.seqs[:4], d.seqs[4:]], tmp_path / "cache", k=V)
    out = []
    for mode in ("online", "cache"):
        student = gpt2(1, 16, seed=2)
        c = cfg(tmp_path / mode, loss={"name": "reverse_kl", "alpha": 0.5, "temperature": 1.5},
                optim={"max_steps": 2})
        tr = DistillTrainer(c, student, d, teacher=teacher if mode == "online" else None,
                            cache=cache if mode == "cache" else None)
        tr.train()
        out.append(([r["loss"] for r in tr.history], params(student)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-4)
    for k in out[0][1]:
        assert torch.allclose(out[0][1][k], out[1][1][k], atol=1e-5), k


def test_cache_top_k_subset_gives_a_lower_bound_kl(tmp_path):
    """k < V: the bucketed KL (k ids + rest) is <= the full KL (data-processing inequality)."""
    from curate.distill.cache import build_teacher_cache
    from curate.models.teacher import LocalHFTeacher

    teacher, d = gpt2(2, 32, seed=1), data(4)
    cache = build_teacher_cache(LocalHFTeacher(teacher, device="cpu", name="t"), [d.seqs], tmp_path / "c", k=4)
    full = DistillTrainer(cfg(tmp_path, loss={"alpha": 0.0}), gpt2(1, 16, seed=2), d, teacher=teacher)
    topk = DistillTrainer(cfg(tmp_path, loss={"alpha": 0.0}), gpt2(1, 16, seed=2), d, cache=cache)
    b = full._batch([0, 1, 2, 3])
    n = int((b["labels"][:, 1:] != -100).sum())
    lf, lk = full._micro(b, n)["loss"], topk._micro(b, n)["loss"]
    assert 0 < lk < lf


def test_ce_only_needs_no_teacher(tmp_path):
    student = gpt2(1, 16, seed=2)
    tr = DistillTrainer(cfg(tmp_path, loss={"name": "ce"}, optim={"max_steps": 3}), student, data())
    before = params(student)
    tr.train()
    assert all(r["kd"] if "kd" in r else True for r in tr.history)
    assert any(not torch.equal(before[k], v) for k, v in params(student).items())
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillTrainer(cfg(tmp_path, loss={"name": "forward_kl"}), gpt2(1, 16), data())


def test_kd_training_reduces_held_out_kl(tmp_path):
    teacher = gpt2(2, 32, seed=1)
    d, ev = data(32, seed=0), data(8, seed=5)
    student = gpt2(1, 16, seed=2)
    c = cfg(tmp_path, loss={"name": "forward_kl", "alpha": 0.0}, optim={"max_steps": 15, "lr": 1e-2})
    tr = DistillTrainer(c, student, d, teacher=teacher, eval_data=ev)
    before = tr.eval_loss()["loss"]
    tr.train()
    assert tr.eval_loss()["loss"] < 0.7 * before


def test_lr_schedule():
    assert lr_lambda(0, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_lambda(10, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_lambda(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(55, 10, 100, "linear", 0.0) == pytest.approx(0.5)


def test_collate_masks_prompt_and_padding():
    b = collate([[5, 6, 7, 8], [9, 10]], [2, 0], pad_id=0)
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [9, 10, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
