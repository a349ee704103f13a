"""The KD-mode seam: teacher signals (``targets(micro_batch).chunk(a, e)``) and losses plug into the one
training loop. A two-teacher mode written as a signal + a loss, outside curate, trains with the loss and
gradients of a direct computation; the cache signal hands unindexed batches to its fallback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from curate.distill.config import DistillConfig  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.losses import forward_kl  # noqa: E402
from curate.distill.signals import CachedTopK, LogitTargets, MicroBatch, TopKTargets  # noqa: E402
from curate.distill.trainer import DistillTrainer  # noqa: E402
from curate.models.topk import TopK  # noqa: E402

V = 30


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


def gpt2(layers: int, embd: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=embd, n_layer=layers, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=1))


def data(n: int = 8) -> TokenData:
    g = torch.Generator().manual_seed(0)
    return TokenData([torch.randint(2, V, (int(k),), generator=g).tolist()
                      for k in torch.randint(5, 14, (n,), generator=g)], [1] * n)


def cfg(tmp_path, chunk: int = 16) -> DistillConfig:
    return DistillConfig.model_validate(dict(
        teacher={"from_config": {"model_type": "gpt2"}}, student={"from_config": {"model_type": "gpt2"}},
        data={"train": ["unused.jsonl"]}, output_dir=str(tmp_path / "out"), progress=False, plot=False,
        loss={"chunk_tokens": chunk}, optim={"batch_size": 4, "max_steps": 2}))


@dataclass(frozen=True)
class BothChunks:
    a: torch.Tensor
    b: torch.Tensor

    def chunk(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a[s:e], self.b[s:e]


class TwoTeachers:
    """A multi-teacher signal: both teachers' logits of the valid rows."""

    def __init__(self, t1: torch.nn.Module, t2: torch.nn.Module) -> None:
        self.t1, self.t2 = t1, t2

    @torch.no_grad()
    def targets(self, mb: MicroBatch) -> BothChunks:
        lo = [t(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1][mb.mask]
              for t in (self.t1, self.t2)]
        return BothChunks(*lo)


class MeanKL:
    """The multi-teacher loss: the mean of the forward KLs to each teacher."""

    needs_teacher = True

    def __call__(self, s: torch.Tensor, target, labels: torch.Tensor):
        kd = 0.5 * (forward_kl(s, target[0]) + forward_kl(s, target[1]))
        return kd, {"kd": kd.detach().sum()}


def test_a_new_mode_is_a_signal_and_a_loss_on_the_same_loop(tmp_path):
    t1, t2, student, ref = gpt2(2, 32, 1), gpt2(1, 32, 2), gpt2(1, 16, 3), gpt2(1, 16, 3)
    tr = DistillTrainer(cfg(tmp_path), student, data(), loss=MeanKL(), signal=TwoTeachers(t1, t2))
    b = tr._batch([0, 1, 2, 3])
    m = b["labels"][:, 1:] != -100
    n = int(m.sum())
    assert n > 16  # several chunks
    sums = tr._micro(b, n)
    s = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1][m]
    with torch.no_grad():
        lt = [F.log_softmax(t(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1][m], -1)
              for t in (t1, t2)]
    ls = F.log_softmax(s, -1)
    direct = sum(0.5 * (x.exp() * (x - ls)).sum(-1) for x in lt).mean()
    direct.backward()
    assert sums["loss"] / n == pytest.approx(direct.item(), rel=1e-5)
    assert sums["kd"] == pytest.approx(sums["loss"], rel=1e-6)
    for (name, p), (_, q) in zip(student.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
    tr.train()  # the whole loop (steps, checkpoint, metrics) runs the new mode unchanged
    assert tr.step == 2 and all(r["kd"] > 0 for r in tr.history)


class _Fixed:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def targets(self, mb: MicroBatch) -> LogitTargets:
        return LogitTargets(self.t)


def test_cached_topk_serves_indexed_batches_and_hands_the_rest_to_its_fallback():
    seqs = [[3, 4, 5, 6], [7, 8, 9]]
    g = torch.Generator().manual_seed(0)
    rows = [TopK.from_logits(torch.randn(len(s), V, generator=g), 4) for s in seqs]

    @dataclass
    class Entry:
        topk: TopK

    cache = [Entry(r) for r in rows]
    from curate.distill.data import collate

    b = collate(seqs, [0, 0], pad_id=0)
    b["idx"] = [0, 1]
    mb = MicroBatch.of(b, torch.device("cpu"))
    got = CachedTopK(cache, device=torch.device("cpu")).targets(mb)
    assert isinstance(got, TopKTargets)
    want_ids = torch.cat([rows[0].ids[:-1], rows[1].ids[:-1]])  # valid shifted rows of both sequences
    assert torch.equal(got.chunk(0, mb.n).ids, want_ids) and mb.n == 5
    held_out = MicroBatch.of(dict(b, idx=None), torch.device("cpu"))
    assert CachedTopK(cache, device=torch.device("cpu")).targets(held_out) is None
    fallback = _Fixed(torch.zeros(5, V))
    assert isinstance(CachedTopK(cache, device=torch.device("cpu"), fallback=fallback).targets(held_out),
                      LogitTargets)
