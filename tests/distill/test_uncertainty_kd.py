"""Uncertainty-aware KD (issue 13 item 3): token weights by teacher confidence, the teacher-informed label
prior and KPOD's step difficulty + progressive schedule, each against a float64 reference written here from
the definitions (plain loops), the cached and online teacher giving the same weights, and `distill()` end to
end with each option on a tiny real teacher."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.distill.config import DistillConfig, LossSpec  # noqa: E402
from curate.distill.modes_uncert import (  # noqa: E402
    PromptSchedule,
    UncertaintyLoss,
    UncertaintySignal,
    Weighted,
    kpod_prompts,
    label_prior,
)
from curate.distill.signals import LogitTargets, TopKTargets  # noqa: E402
from curate.models.topk import TopK  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- references
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _entropy_ref(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def _topk_entropy_ref(p: np.ndarray, k: int) -> float:
    """Top-k entries plus the tail spread uniformly over the V-k others (loop form)."""
    v = len(p)
    top = sorted(p, reverse=True)[:k]
    tail = 1.0 - sum(top)
    h = -sum(x * math.log(x) for x in top if x > 0)
    if v > k and tail > 0:
        h -= tail * math.log(tail / (v - k))
    return h


def _weights_ref(ents: list[float], v: int, kind: str) -> list[float]:
    c = [max(0.0, 1.0 - h / math.log(v)) if kind == "teacher_entropy" else math.exp(-h) for h in ents]
    s = sum(c)
    return [x * len(c) / s for x in c]


def _mb(n: int):
    from curate.distill.signals import MicroBatch

    labels = torch.arange(n) % 7
    return MicroBatch(torch.zeros(1, n + 1, dtype=torch.long), torch.ones(1, n + 1, dtype=torch.long),
                      torch.ones(1, n, dtype=torch.bool), labels, None)


class _Fixed:
    """A teacher signal giving fixed targets (the real signals are exercised end to end below)."""

    def __init__(self, t):
        self.t = t

    def targets(self, mb):
        return self.t


# ---------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("kind", ["teacher_entropy", "teacher_exp_entropy"])
def test_weights_match_float64_reference_dense_and_topk(kind):
    g = torch.Generator().manual_seed(0)
    n, v, k = 37, 11, 4
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * torch.linspace(0.2, 4, n, dtype=torch.float64)[:, None]
    probs = [_softmax(row) for row in logits.numpy()]
    spec = LossSpec(token_weighting=kind, chunk_tokens=16)  # 3 chunks: the weights are normalised over all rows
    sig = UncertaintySignal(_Fixed(LogitTargets(logits)), spec, vocab=v)
    got = sig.targets(_mb(n)).weight
    want = _weights_ref([_entropy_ref(list(p)) for p in probs], v, kind)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert got.sum().item() == pytest.approx(n, rel=1e-6)  # mean 1: the loss keeps its scale
    # from a top-k teacher: entropy with the tail spread uniformly
    sig = UncertaintySignal(_Fixed(TopKTargets(TopK.from_logits(logits, k))), spec, vocab=v)
    got = sig.targets(_mb(n)).weight
    want = _weights_ref([_topk_entropy_ref(p, k) for p in probs], v, kind)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # k = V: the cached teacher's weights are the dense teacher's
    sig = UncertaintySignal(_Fixed(TopKTargets(TopK.from_logits(logits, v))), spec, vocab=v)
    want = _weights_ref([_entropy_ref(list(p)) for p in probs], v, kind)
    np.testing.assert_allclose(sig.targets(_mb(n)).weight.numpy(), want, rtol=1e-6)


def test_confident_tokens_get_more_weight_and_none_is_plain_kd():
    logits = torch.tensor([[8.0, 0, 0, 0], [0.0, 0, 0, 0]], dtype=torch.float64)
    w = UncertaintySignal(_Fixed(LogitTargets(logits)), LossSpec(token_weighting="teacher_entropy"),
                          vocab=4).targets(_mb(2)).weight
    assert w[0] > 1 > w[1] and w[1] == pytest.approx(0.0, abs=1e-12)  # a uniform teacher gets weight 0
    w = UncertaintySignal(_Fixed(LogitTargets(logits)), LossSpec(teacher_prior="label_smoothing"),
                          vocab=4).targets(_mb(2)).weight
    assert w.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name,temperature,alpha", [("forward_kl", 1.0, 0.5), ("forward_kl", 2.0, 0.0),
                                                    ("reverse_kl", 1.0, 0.3), ("generalized_jsd", 1.5, 0.5)])
def test_weighted_loss_matches_float64_reference(name, temperature, alpha):
    g = torch.Generator().manual_seed(1)
    n, v = 9, 6
    s = torch.randn(n, v, generator=g, dtype=torch.float64)
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, v, (n,), generator=g)
    w = torch.rand(n, generator=g, dtype=torch.float64) * 2
    spec = LossSpec(name=name, temperature=temperature, alpha=alpha, token_weighting="teacher_entropy")
    loss = UncertaintyLoss(spec)
    s_req = s.clone().requires_grad_(True)
    per, comp = loss(s_req, Weighted(t, w), y)
    want, kd_want = [], []
    for i in range(n):
        p = _softmax(t[i].numpy() / temperature)
        q = _softmax(s[i].numpy() / temperature)
        if name == "forward_kl":
            kd = sum(p[j] * math.log(p[j] / q[j]) for j in range(v))
        elif name == "reverse_kl":
            kd = sum(q[j] * math.log(q[j] / p[j]) for j in range(v))
        else:  # beta = 0.5
            m = [0.5 * p[j] + 0.5 * q[j] for j in range(v)]
            kd = 0.5 * sum(p[j] * math.log(p[j] / m[j]) for j in range(v)) + \
                0.5 * sum(q[j] * math.log(q[j] / m[j]) for j in range(v))
        ce = -math.log(_softmax(s[i].numpy())[int(y[i])])
        kd_want.append(kd)
        want.append(alpha * ce + (1 - alpha) * float(w[i]) * temperature ** 2 * kd)
    np.testing.assert_allclose(per.detach().numpy(), want, rtol=1e-7)
    assert comp["kd"].item() == pytest.approx(sum(kd_want), rel=1e-7)  # logged KD is the unweighted divergence
    # the gradient (fused closed form where it applies) is the reference's
    per.sum().backward()
    s_ref = s.clone().requires_grad_(True)
    from curate.distill import losses as L

    kd_t = L.compute_kd_loss(name, s_ref, t, temperature=temperature, **({"beta": 0.5} if name == "generalized_jsd" else {}))
    ref = alpha * L.token_ce(s_ref, y) + (1 - alpha) * w * temperature ** 2 * kd_t
    ref.sum().backward()
    torch.testing.assert_close(s_req.grad, s_ref.grad, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------- prior
def test_label_prior_matches_float64_reference_dense_and_topk():
    g = torch.Generator().manual_seed(2)
    n, v, k, lam_max, eps = 8, 10, 3, 0.6, 0.1
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, v, (n,), generator=g)
    y[0] = int(logits[0].argmax())  # one label inside the top-k, most outside
    dense = label_prior(logits, y, vocab=v, weight=lam_max, smoothing=eps).exp()
    top = label_prior(TopK.from_logits(logits, k), y, vocab=v, weight=lam_max, smoothing=eps)
    for i in range(n):
        p = _softmax(logits[i].numpy())
        lam = lam_max * _entropy_ref(list(p)) / math.log(v)
        mix = [(1 - lam) * p[j] + lam * ((1 - eps) * (j == int(y[i])) + eps / v) for j in range(v)]
        np.testing.assert_allclose(dense[i].numpy(), mix, rtol=1e-9)
        # top-k: the same mix coarsened to the k teacher ids + the rest bucket (lambda from the top-k entropy)
        lam_k = lam_max * _topk_entropy_ref(p, k) / math.log(v)
        ids = list(np.argsort(-p)[:k])
        mix_k = [(1 - lam_k) * p[j] + lam_k * ((1 - eps) * (j == int(y[i])) + eps / v) for j in range(v)]
        got = dict(zip(top.ids[i].tolist(), top.logprobs[i].exp().tolist(), strict=True))
        assert set(got) == {int(j) for j in ids}
        for j in ids:
            assert got[int(j)] == pytest.approx(mix_k[j], rel=1e-6)
        assert math.exp(top.tail_logmass[i]) == pytest.approx(sum(mix_k[j] for j in range(v) if j not in ids), rel=1e-6)
        assert top.logprobs[i].tolist() == sorted(top.logprobs[i].tolist(), reverse=True)
    assert float(dense.sum(-1).sub(1).abs().max()) < 1e-12


# ---------------------------------------------------------------------------------------------- KPOD
def test_kpod_step_difficulty_and_schedule_match_reference():
    from curate.distill.data import TokenData
    from curate.models.teacher_student import kpod_difficulty, step_difficulties

    g = torch.Generator().manual_seed(3)
    v, k = 12, 4
    ends = torch.zeros(v, dtype=torch.bool)
    ends[[0, 1]] = True  # ids 0 and 1 end a step
    seq = [5, 6, 7, 2, 3, 0, 4, 9, 1, 8, 10, 0, 11, 3]  # prompt 3 tokens; steps [2 3 0] [4 9 1] [8 10 0] [11 3]
    n_prompt = 3
    logits = torch.randn(len(seq), v, generator=g, dtype=torch.float64) * 2
    tk = TopK.from_logits(logits, k)
    row = {"input_ids": torch.tensor(seq), "ids": tk.ids, "logprobs": tk.logprobs, "tail_logmass": tk.tail_logmass}
    # reference: per token j (position >= n_prompt) the teacher NLL from row j-1 (tail bucket when outside)
    probs = [_softmax(r) for r in logits.numpy()]
    steps, cur = [], []
    for j in range(n_prompt, len(seq)):
        p = probs[j - 1]
        top = list(np.argsort(-p)[:k])
        nll = -math.log(p[seq[j]]) if seq[j] in top else -math.log(1 - sum(p[i] for i in top))
        conf = 1 - _topk_entropy_ref(p, k) / math.log(v)
        cur.append((nll, conf))
        if seq[j] in (0, 1):
            steps.append(cur)
            cur = []
    steps.append(cur)
    for sig in ("uniform", "teacher_confidence"):
        all_c = [c for st in steps for _, c in st]
        norm = len(all_c) / sum(all_c)
        d_ref = [sum(nll * (1.0 if sig == "uniform" else c * norm) for nll, c in st) for st in steps]
        t = TopK(tk.ids[n_prompt - 1:-1], tk.logprobs[n_prompt - 1:-1], tk.tail_logmass[n_prompt - 1:-1])
        d = step_difficulties(t, torch.tensor(seq[n_prompt:]), ends, vocab=v, significance=sig)
        np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-9)
        assert kpod_difficulty(row, n_prompt, ends, vocab=v, significance=sig) == pytest.approx(np.mean(d_ref))
    # schedule: stage s covers the longest suffix of steps within (s+1)/S of the total difficulty
    d_ref = [sum(nll for nll, _ in st) for st in steps]
    first_tok = [n_prompt, 6, 9, 12]  # where each step starts in the sequence
    data = TokenData([seq], [n_prompt])
    stages = 3
    got = kpod_prompts(data, [row], ends, vocab=v, stages=stages)
    for s in range(stages):
        if s == stages - 1:
            want = n_prompt
        else:
            budget = (s + 1) / stages * sum(d_ref)
            ok = [j for j in range(4) if sum(d_ref[j:]) <= budget] or [3]
            want = first_tok[min(min(ok), 3)] if min(ok) > 0 else n_prompt
        assert got[s][0] == want, (s, got, d_ref)
    assert got[0][0] > n_prompt  # the first stage trains the final step(s) only
    # data.mode rationale: only the rationale rows are scheduled, the label rows keep their whole answer
    from curate.distill.data import TASK_LABEL, TASK_RATIONALE

    two = kpod_prompts(TokenData([seq, seq], [n_prompt, n_prompt], [TASK_LABEL, TASK_RATIONALE]), [row, row], ends,
                       vocab=v, stages=stages)
    assert [st[0] for st in two] == [n_prompt] * stages and [st[1] for st in two] == [st[0] for st in got]
    sched = PromptSchedule(got, total_steps=6)
    assert [sched.stage(i) for i in range(6)] == [0, 0, 1, 1, 2, 2]


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def teacher_dir(tmp_path):
    torch.set_num_threads(1)
    return make_tiny_teacher(tmp_path, examples=30, max_response=14)


def _cfg(root: Path, **kw) -> DistillConfig:
    d = dict(teacher={"path": str(root / "teacher")},
             student={"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                      "intermediate_size": 32}},
             data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                   "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32},
             eval={"samples": 0}, output_dir=str(root / "run"), optim={"batch_size": 4, "max_steps": 4},
             progress=False, plot=False, threads=1)
    d.update(kw)
    return DistillConfig.model_validate(d)


def test_cached_and_online_teacher_give_the_same_weights(teacher_dir):
    """k = V cache vs the online teacher (hidden states + head per chunk): the same weights per token."""
    from curate.distill.run import build_cache, prepare
    from curate.distill.trainer import DistillTrainer

    loss = {"name": "forward_kl", "token_weighting": "teacher_entropy", "teacher_prior": "label_smoothing",
            "chunk_tokens": 16}
    cfg = _cfg(teacher_dir, loss=loss, teacher_signal={"mode": "cache", "dir": str(teacher_dir / "c"), "k": 32})
    p = prepare(cfg)
    cache = build_cache(cfg, p)
    cached = DistillTrainer(cfg, p.student, p.train, cache=cache, vocab=p.vocab, pad_id=p.pad_id)
    online = DistillTrainer(_cfg(teacher_dir, loss=loss), p.student, p.train, teacher=p.teacher, vocab=p.vocab,
                            pad_id=p.pad_id)
    assert isinstance(cached.signal, UncertaintySignal) and isinstance(online.signal, UncertaintySignal)
    from curate.distill.signals import MicroBatch

    b = cached._batch([0, 1, 2, 3])
    mb = MicroBatch.of(b, cached.device)
    wc, wo = cached.signal.targets(mb).weight, online.signal.targets(mb).weight
    assert mb.n > 16 and wc.std() > 0.01  # more rows than one chunk; the weights do vary
    torch.testing.assert_close(wc, wo, rtol=1e-3, atol=1e-4)  # fp32 forwards, cache vs online
    # and the two losses agree (prior included) on the batch
    torch.manual_seed(0)
    lc = cached.batch_loss(b, mb.n, backward=False)
    lo = online.batch_loss(b, mb.n, backward=False)
    assert lc["loss"] == pytest.approx(lo["loss"], rel=1e-4) and lc["kd"] == pytest.approx(lo["kd"], rel=1e-4)


def test_distill_with_weighting_prior_and_kpod_end_to_end(teacher_dir):
    from curate.distill import distill

    cfg = _cfg(teacher_dir, loss={"name": "forward_kl", "alpha": 0.3, "token_weighting": "teacher_exp_entropy",
                                  "teacher_prior": "label_smoothing"},
               teacher_signal={"mode": "cache", "dir": str(teacher_dir / "cache"), "k": 8},
               data={"train": [str(teacher_dir / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                     "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32,
                     "order": "kpod_difficulty_asc",
                     "kpod": {"stages": 2, "step_pattern": "^w[0-5]$", "significance": "teacher_confidence"}})
    res = distill(cfg)
    assert res.train["steps"] == 4 and math.isfinite(res.train["final_loss"])
    rep = json.loads((res.output_dir / "report.json").read_text())
    assert rep["config"]["loss"]["token_weighting"] == "teacher_exp_entropy"
    assert rep["config"]["data"]["kpod"]["stages"] == 2 and "retention_ppl" in rep["eval"]
    assert (res.output_dir / "report.md").exists()
    # online teacher, entropy weights only
    res = distill(_cfg(teacher_dir, loss={"name": "reverse_kl", "token_weighting": "teacher_entropy"},
                       output_dir=str(teacher_dir / "run2")))
    assert res.train["steps"] == 4 and (res.output_dir / "report.json").exists()


def test_kpod_schedule_in_the_trainer(teacher_dir):
    """Stage 0 trains only the final steps (later prompt ends), the last stage the whole response."""
    from curate.distill.modes_uncert import kpod_schedule
    from curate.distill.run import prepare
    from curate.distill.trainer import DistillTrainer

    cfg = _cfg(teacher_dir, data={"train": [str(teacher_dir / "train.jsonl")], "prompt_field": "q",
                                  "response_field": "a", "template": "{prompt} {response}", "eval_fraction": 0.2,
                                  "max_len": 32, "kpod": {"stages": 2, "step_pattern": "^w[0-5]$"}})
    p = prepare(cfg)
    base = list(p.train.n_prompt)
    tr = DistillTrainer(cfg, p.student, p.train, teacher=p.teacher, vocab=p.vocab, pad_id=p.pad_id)
    tr.prompt_schedule = kpod_schedule(cfg, p, None, tr.total_steps, tr.device)
    tr.train_step()
    first = list(tr.train_data.n_prompt)
    assert all(a >= b for a, b in zip(first, base, strict=True)) and sum(first) > sum(base)
    while tr.step < tr.total_steps - 1:
        tr.train_step()
    tr.train_step()
    assert tr.train_data.n_prompt == base


def test_uncertainty_options_validate():
    with pytest.raises(ValueError, match="divergence"):
        LossSpec(name="hinton", token_weighting="teacher_entropy")
    with pytest.raises(ValueError, match="token_weighting"):
        LossSpec(token_weighting="entropy")
    from curate.distill.config import KPODSpec
    from curate.models.teacher_student import DEFAULT_STEP_PATTERN

    assert KPODSpec().step_pattern == DEFAULT_STEP_PATTERN
    assert re.search(DEFAULT_STEP_PATTERN, "so x = 3.") and re.search(DEFAULT_STEP_PATTERN, "\n")
    assert not re.search(DEFAULT_STEP_PATTERN, " then")


def test_readme_snippet_is_a_valid_distill_config(tmp_path):
    """The uncertainty-aware KD snippet of examples/distill/README.md loads as a distill.yaml section."""
    import yaml

    text = (REPO / "examples" / "distill" / "README.md").read_text()
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M) if "token_weighting" in b]
    assert len(blocks) == 1
    snippet = yaml.safe_load(blocks[0])
    make_tiny_teacher(tmp_path, examples=4)
    base = {"teacher": {"path": str(tmp_path / "teacher")}, "student": {"from_config": {"base": "teacher"}},
            "data": {"train": [str(tmp_path / "train.jsonl")]}, "output_dir": str(tmp_path / "o"),
            "teacher_signal": {"mode": "cache", "dir": str(tmp_path / "c")}}
    for sec, vals in snippet.items():
        base[sec] = {**base.get(sec, {}), **vals}
    cfg = DistillConfig.model_validate(base)
    assert cfg.loss.token_weighting != "none" and cfg.loss.teacher_prior == "label_smoothing"
    assert cfg.data.kpod.stages > 0 and cfg.data.order.startswith("kpod_difficulty")


def test_teacher_student_orders_are_the_dense_signal_orders(teacher_dir):
    """data.order teacher_student_kl / student_nll: the student as initialised against the k = V cache equals
    a dense float64 loop computation, and the curriculum sorts by it; distill() runs with the order."""
    from curate.distill import distill
    from curate.distill.modes_uncert import order_values
    from curate.distill.run import build_cache, prepare
    from curate.distill.trainer import DistillTrainer
    from curate.models.topk_cache import curriculum

    data = {"train": [str(teacher_dir / "train.jsonl")], "prompt_field": "q", "response_field": "a",
            "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32, "order": "teacher_student_kl_desc"}
    cfg = _cfg(teacher_dir, data=data, teacher_signal={"mode": "cache", "dir": str(teacher_dir / "c"), "k": 32})
    p = prepare(cfg)
    cache = build_cache(cfg, p)
    kl_ref, nll_ref = [], []
    t64, s64 = p.teacher.double().eval(), p.student.double().eval()
    for seq, n_p in zip(p.train.seqs, p.train.n_prompt, strict=True):
        with torch.no_grad():
            pt = torch.softmax(t64(input_ids=torch.tensor([seq])).logits[0], -1).numpy()
            ps = torch.softmax(s64(input_ids=torch.tensor([seq])).logits[0], -1).numpy()
        js = range(max(1, n_p), len(seq))
        kl_ref.append(np.mean([sum(pt[j - 1][v] * math.log(pt[j - 1][v] / ps[j - 1][v]) for v in range(32)) for j in js]))
        nll_ref.append(np.mean([-math.log(ps[j - 1][seq[j]]) for j in js]))
    p.teacher.float()
    p.student.float()
    dev = torch.device("cpu")
    kl = order_values("teacher_student_kl", cfg, p, cache, dev)
    nll = order_values("student_nll", cfg, p, cache, dev)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-4)
    np.testing.assert_allclose(nll, nll_ref, rtol=1e-4)
    want = curriculum(kl_ref, descending=True)
    assert curriculum(kl, descending=True) == want and kl_ref[want[0]] >= kl_ref[want[-1]]
    tr = DistillTrainer(cfg, p.student, p.train, cache=cache, vocab=p.vocab, pad_id=p.pad_id)
    tr.fixed_order = curriculum(kl, descending=True)
    assert tr.batch_indices(0) == want[:4]
    res = distill(cfg)
    assert res.train["steps"] == 4 and (res.output_dir / "report.json").exists()


@pytest.mark.gpu
def test_weights_prior_and_loss_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(4)
    n, v, k = 300, 50, 8
    t, s = torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g)
    y = torch.randint(0, v, (n,), generator=g)
    spec = LossSpec(token_weighting="teacher_entropy", teacher_prior="label_smoothing", chunk_tokens=64)
    out = {}
    for dev in ("cpu", "cuda"):
        from curate.distill.signals import MicroBatch

        mb = MicroBatch(torch.zeros(1, n + 1, dtype=torch.long, device=dev), torch.ones(1, n + 1, device=dev),
                        torch.ones(1, n, dtype=torch.bool, device=dev), y.to(dev), None)
        for name, tgt in (("dense", LogitTargets(t.to(dev))), ("topk", TopKTargets(TopK.from_logits(t, k).to(dev)))):
            tg = UncertaintySignal(_Fixed(tgt), spec, vocab=v).targets(mb)
            sd = s.to(dev).requires_grad_(True)
            per, _ = UncertaintyLoss(spec)(sd, tg.chunk(0, n), y.to(dev))
            per.sum().backward()
            out[dev, name] = (tg.weight.cpu(), per.detach().cpu(), sd.grad.cpu())
    for name in ("dense", "topk"):
        for a, b in zip(out["cpu", name], out["cuda", name], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
