"""Multi-teacher KD (curate.distill.multi_teacher): the mixing weights, the mixture and the merged top-k caches
against float64 references written from the definitions (plain loops), the signals on real tiny models, the
``teachers:`` YAML, and ``distill`` end to end with two teachers in every mixing mode, online and cached."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.core.errors import ConfigError  # noqa: E402
from curate.distill.config import DistillConfig, MultiTeacherSpec  # noqa: E402
from curate.distill.data import collate  # noqa: E402
from curate.distill.losses import forward_kl, reverse_kl  # noqa: E402
from curate.distill.multi_teacher import (  # noqa: E402
    MultiCachedTopK,
    MultiOnline,
    merge_topk,
    mix_logprobs,
    mixing_weights,
    topk_scores,
)
from curate.distill.signals import MicroBatch, OnlineTeacher  # noqa: E402
from curate.models.topk import TopK  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


# ----------------------------------------------------------------------------------------------- references
def ref_weights(scores: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """w_k = pi_k exp(s_k / tau) / sum_j pi_j exp(s_j / tau); tau = 0: the best teacher(s), ties by pi."""
    pri = prior / prior.sum()
    out = np.zeros_like(scores)
    for e in range(scores.shape[0]):
        if tau == 0:
            best = [k for k in range(scores.shape[1]) if scores[e, k] == scores[e].max()]
            for k in best:
                out[e, k] = pri[k] / sum(pri[j] for j in best)
            continue
        z = [pri[k] * math.exp((scores[e, k] - scores[e].max()) / tau) for k in range(scores.shape[1])]
        for k in range(scores.shape[1]):
            out[e, k] = z[k] / sum(z)
    return out


def ref_complete(lp: np.ndarray, ids: np.ndarray, tail: float, vocab: int) -> np.ndarray:
    """A top-k row as a dense distribution: its k probabilities, the tail spread uniformly over the rest."""
    k = len(ids)
    dense = np.full(vocab, math.exp(tail) / (vocab - k) if k < vocab else 0.0)
    for j in range(k):
        dense[ids[j]] = math.exp(lp[j])
    return dense


def softmax64(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


# ----------------------------------------------------------------------------------------------- weights
def test_mixing_weights_match_the_definition():
    g = np.random.default_rng(0)
    scores = g.normal(size=(6, 3)) * 2
    prior = np.array([1.0, 2.0, 0.5])
    for tau in (0.3, 1.0, 4.0):
        got = mixing_weights(torch.tensor(scores), torch.tensor(prior), tau).numpy()
        np.testing.assert_allclose(got, ref_weights(scores, prior, tau), rtol=1e-12, atol=1e-14)
    scores[2, 0] = scores[2, 2] = scores[2].max() + 1.0  # a tie: split by the prior (1 : 0.5)
    got = mixing_weights(torch.tensor(scores), torch.tensor(prior), 0.0).numpy()
    np.testing.assert_allclose(got, ref_weights(scores, prior, 0.0), atol=0)
    assert got[2].tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    fixed = mixing_weights(None, torch.tensor(prior), 1.0).numpy()
    np.testing.assert_allclose(fixed, [prior / prior.sum()], rtol=1e-15)


def test_agreement_weights_for_two_teachers_are_ca_mkds():
    """CA-MKD (Zhang et al. 2022): w_k = (1 - softmax_k(CE_k)) / (K - 1); for K = 2 it is softmax(-CE) = the
    agreement rule at tau = 1 with equal priors."""
    ce = np.random.default_rng(1).uniform(0.1, 5.0, size=(8, 2))
    ca = np.array([[(1 - math.exp(c[k]) / sum(math.exp(x) for x in c)) / (2 - 1) for k in range(2)] for c in ce])
    got = mixing_weights(torch.tensor(-ce), torch.ones(2, dtype=torch.float64), 1.0).numpy()
    np.testing.assert_allclose(got, ca, rtol=1e-12)


def test_mixture_is_in_probability_space():
    g = torch.Generator().manual_seed(2)
    lps = [torch.log_softmax(torch.randn(5, 7, generator=g, dtype=torch.float64) * 3, -1) for _ in range(3)]
    w = torch.softmax(torch.randn(5, 3, generator=g, dtype=torch.float64), -1)
    got = mix_logprobs(lps, w).numpy()
    for r in range(5):
        for v in range(7):
            want = sum(w[r, k].item() * math.exp(lps[k][r, v].item()) for k in range(3))
            assert got[r, v] == pytest.approx(math.log(want), rel=1e-12)
    # not the logit average (a normalised geometric mean): they differ
    avg = torch.log_softmax(sum(w[:, k:k + 1] * lps[k] for k in range(3)), -1)
    assert (avg - mix_logprobs(lps, w)).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------- merged caches
def _teachers_topk(n: int, vocab: int, ks: list[int], seed: int) -> tuple[list[np.ndarray], list[TopK]]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, vocab, generator=g, dtype=torch.float64) * 2  # overlapping top-k ids
    dense, parts = [], []
    for k in ks:
        lo = shared + torch.randn(n, vocab, generator=g, dtype=torch.float64)
        dense.append(torch.softmax(lo, -1).numpy())
        parts.append(TopK.from_logits(lo, k))
    return dense, parts


@pytest.mark.parametrize(("vocab", "ks"), [(40, [4, 4]), (50, [3, 5, 4]), (10, [4, 3]), (12, [12, 12])])
def test_merged_cache_is_the_mixture_of_the_completed_teachers(vocab, ks):
    n = 6
    _, parts = _teachers_topk(n, vocab, ks, seed=vocab)
    w = torch.softmax(torch.randn(n, len(ks), generator=torch.Generator().manual_seed(3), dtype=torch.float64), -1)
    merged = merge_topk(parts, w, vocab)
    s_tot = sum(ks) if 2 * sum(ks) <= vocab else vocab  # the dense mixture when the union may cover most ids
    assert merged.ids.shape == (n, s_tot)
    for r in range(n):
        mix = sum(w[r, k].item() * ref_complete(parts[k].logprobs[r].numpy(), parts[k].ids[r].numpy(),
                                                 parts[k].tail_logmass[r].item(), vocab) for k in range(len(ks)))
        ids = merged.ids[r].tolist()
        assert len(set(ids)) == len(ids)  # distinct ids
        union = {int(i) for p in parts for i in p.ids[r]}
        assert union <= set(ids)
        for j, v in enumerate(ids):
            assert math.exp(merged.logprobs[r, j].item()) == pytest.approx(mix[v], rel=1e-10, abs=1e-300)
        rest = sum(mix[v] for v in range(vocab) if v not in set(ids))
        if s_tot < vocab:
            assert math.exp(merged.tail_logmass[r].item()) == pytest.approx(rest, rel=1e-10)
        else:
            assert merged.tail_logmass[r].item() == float("-inf")
        total = math.exp(merged.tail_logmass[r].item()) + float(merged.logprobs[r].exp().sum())
        assert total == pytest.approx(1.0, rel=1e-12)
        assert (merged.logprobs[r, :-1] >= merged.logprobs[r, 1:]).all()  # sorted descending


def test_merged_cache_with_full_caches_is_the_exact_mixture_and_its_kl_the_dense_kl():
    vocab, n = 9, 5
    dense, parts = _teachers_topk(n, vocab, [vocab, vocab], seed=7)
    w = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    merged = merge_topk(parts, w, vocab)
    student = torch.randn(n, vocab, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for r in range(n):
        mix = 0.3 * dense[0][r] + 0.7 * dense[1][r]
        got = np.zeros(vocab)
        got[merged.ids[r].numpy()] = merged.logprobs[r].exp().numpy()
        np.testing.assert_allclose(got, mix, rtol=1e-12)
        q = softmax64(student[r].numpy())
        kl = sum(mix[v] * math.log(mix[v] / q[v]) for v in range(vocab))
        assert forward_kl(student[r:r + 1], merged[r:r + 1]).item() == pytest.approx(kl, rel=1e-9)


def test_merged_cache_kl_is_the_bucketed_kl_of_the_completed_mixture():
    """The loss on the merged TopK = KL over the buckets (merged ids + rest) of the completed mixture."""
    vocab, n = 30, 4
    _, parts = _teachers_topk(n, vocab, [4, 6], seed=11)
    w = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    merged = merge_topk(parts, w, vocab)
    student = torch.randn(n, vocab, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    for r in range(n):
        mix = sum(w[0, k].item() * ref_complete(parts[k].logprobs[r].numpy(), parts[k].ids[r].numpy(),
                                                 parts[k].tail_logmass[r].item(), vocab) for k in range(2))
        q = softmax64(student[r].numpy())
        ids = set(merged.ids[r].tolist())
        pb = [mix[v] for v in sorted(ids)] + [sum(mix[v] for v in range(vocab) if v not in ids)]
        qb = [q[v] for v in sorted(ids)] + [sum(q[v] for v in range(vocab) if v not in ids)]
        fkl = sum(a * math.log(a / b) for a, b in zip(pb, qb, strict=True))
        rkl = sum(b * math.log(b / a) for a, b in zip(pb, qb, strict=True))
        assert forward_kl(student[r:r + 1], merged[r:r + 1]).item() == pytest.approx(fkl, rel=1e-9)
        assert reverse_kl(student[r:r + 1], merged[r:r + 1]).item() == pytest.approx(rkl, rel=1e-9)


def test_topk_scores_are_those_of_the_completed_distribution():
    vocab = 20
    _, (t,) = _teachers_topk(5, vocab, [4], seed=13)
    labels = torch.tensor([int(t.ids[0, 1]), 0, 5, int(t.ids[3, 0]), 19])
    ent, gold = topk_scores(t, labels, vocab)
    for r in range(5):
        d = ref_complete(t.logprobs[r].numpy(), t.ids[r].numpy(), t.tail_logmass[r].item(), vocab)
        assert ent[r].item() == pytest.approx(-sum(p * math.log(p) for p in d if p > 0), rel=1e-10)
        assert gold[r].item() == pytest.approx(math.log(d[int(labels[r])]), rel=1e-10)


# ----------------------------------------------------------------------------------------------- signals
V = 24


def gpt2(layers: int, seed: int, scale: float = 1.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=layers, n_head=2,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    with torch.no_grad():
        m.lm_head.weight.mul_(scale)  # tied to wte: a sharper (lower-entropy) teacher
    return m.eval()


def _batch(n: int = 3) -> MicroBatch:
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, V, (int(k),), generator=g).tolist() for k in (7, 9, 5)[:n]]
    b = collate(seqs, [2] * n, pad_id=0)
    b["idx"] = list(range(n))
    return MicroBatch.of(b, torch.device("cpu"))


def _online(models: list) -> list[OnlineTeacher]:
    from contextlib import nullcontext

    from curate.distill.fused import Scratch
    from curate.models.causal_lm import lm_parts

    return [OnlineTeacher(m, vocab=V, device=torch.device("cpu"), parts=lm_parts(m), autocast=nullcontext, amp=None,
                          scratch=Scratch(torch.device("cpu"))) for m in models]


@pytest.mark.parametrize(("mixing", "tau"), [("fixed", 1.0), ("confidence", 1.0), ("confidence", 0.0),
                                             ("agreement", 0.5)])
def test_online_signal_mixes_the_teachers_per_example(mixing, tau):
    models = [gpt2(1, 1), gpt2(2, 2, scale=30.0)]
    prior = torch.tensor([2.0, 1.0], dtype=torch.float64)
    sig = MultiOnline(_online(models), MultiTeacherSpec(mixing=mixing, tau=tau), prior, chunk=5)
    mb = _batch()
    tg = sig.targets(mb)
    got = torch.cat([tg.chunk(a, min(mb.n, a + 5)) for a in range(0, mb.n, 5)]).double().numpy()
    # reference: full-vocabulary teacher distributions in float64, scores averaged per sequence by hand
    with torch.no_grad():
        lps = [torch.log_softmax(m(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits.double(), -1)
               for m in models]
    rows = 0
    pri = prior.numpy()
    for e in range(mb.mask.shape[0]):
        pos = [t for t in range(mb.mask.shape[1]) if mb.mask[e, t]]
        score = np.zeros(2)
        for k in range(2):
            vals = []
            for t in pos:
                p = lps[k][e, t].exp().numpy()
                y = int(mb.input_ids[e, t + 1])
                # confidence: minus the entropy (the surer teacher scores higher); agreement: log p(gold)
                vals.append(sum(x * math.log(x) for x in p) if mixing == "confidence" else math.log(p[y]))
            score[k] = sum(vals) / len(vals)
        w = pri / pri.sum() if mixing == "fixed" else ref_weights(score[None], pri, tau)[0]
        for t in pos:
            mix = sum(w[k] * lps[k][e, t].exp().numpy() for k in range(2))
            np.testing.assert_allclose(np.exp(got[rows]), mix, rtol=2e-5, atol=1e-7)
            rows += 1
    assert rows == mb.n
    if mixing == "confidence":  # the sharp teacher (lower entropy) leads
        assert float(tg.weights[:, 1].min()) > 0.5


def test_cached_signal_merges_the_caches_with_the_same_weights():
    from dataclasses import dataclass

    @dataclass
    class Entry:
        topk: TopK

    models = [gpt2(1, 1), gpt2(2, 2, scale=30.0)]
    mb = _batch()
    caches = []
    for m in models:
        with torch.no_grad():
            lo = m(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        caches.append([Entry(TopK.from_logits(lo[r, : int(mb.attention_mask[r].sum())], 5)) for r in range(3)])
    sig = MultiCachedTopK(caches, MultiTeacherSpec(mixing="agreement", tau=1.0), torch.ones(2), vocab=V,
                          device=torch.device("cpu"))
    got = sig.targets(mb).chunk(0, mb.n)
    assert got.k == 10 and got.ids.shape == (mb.n, 10)
    # reference weights from the completed cached rows, averaged per sequence by hand
    rows = 0
    for e in range(3):
        pos = [t for t in range(mb.mask.shape[1]) if mb.mask[e, t]]
        score = np.zeros(2)
        dists = []
        for k in range(2):
            tk = caches[k][e].topk
            d = [ref_complete(tk.logprobs[t].double().numpy(), tk.ids[t].numpy(), tk.tail_logmass[t].item(), V)
                 for t in pos]
            dists.append(d)
            score[k] = np.mean([math.log(d[i][int(mb.input_ids[e, t + 1])]) for i, t in enumerate(pos)])
        w = ref_weights(score[None], np.ones(2), 1.0)[0]
        for i, _t in enumerate(pos):
            mix = w[0] * dists[0][i] + w[1] * dists[1][i]
            ids = got.ids[rows].tolist()
            np.testing.assert_allclose(got.logprobs[rows].double().exp().numpy(), mix[ids], rtol=1e-5)
            rows += 1
    assert sig.stats.tokens == mb.n  # counted as training rows (grad enabled)


# ----------------------------------------------------------------------------------------------- yaml
def _yaml(tmp_path, body: str):
    (tmp_path / "d.jsonl").write_text('{"text": "hello world"}\n')
    p = tmp_path / "distill.yaml"
    p.write_text("student: {from_config: {base: teacher, num_hidden_layers: 1}}\ndata: {train: [d.jsonl]}\n"
                 "output_dir: out\n" + body)
    return p


def test_teachers_yaml_validates_and_bad_weights_name_key_and_line(tmp_path):
    p = _yaml(tmp_path, "teachers:\n  - {path: a, weight: 2}\n  - {path: b, name: big}\n"
                        "multi_teacher: {mixing: confidence, tau: 0.5}\n")
    cfg = DistillConfig.from_yaml(p)
    assert cfg.teacher.path == str(tmp_path / "a")  # the first teacher is the reference teacher
    assert [t.name for t in cfg.teachers] == ["t0", "big"] and cfg.teachers[1].path == str(tmp_path / "b")
    assert [t.weight for t in cfg.teachers] == [2.0, 1.0] and cfg.multi_teacher.mixing == "confidence"
    assert DistillConfig.model_validate(__import__("yaml").safe_load(cfg.to_yaml())) == cfg  # round trip
    bad = _yaml(tmp_path, "teachers:\n  - {path: a, weight: 2}\n  - path: b\n    weight: -1\n"
                          "  - {path: c, weight: .inf}\nmulti_teacher: {mixing: vote}\n")
    with pytest.raises(ConfigError) as e:
        DistillConfig.from_yaml(bad)
    msg = str(e.value)
    assert "teachers[1].weight" in msg and "line 7" in msg and "greater than 0" in msg
    assert "teachers[2].weight" in msg and "line 8" in msg
    assert "multi_teacher.mixing" in msg and "line 9" in msg
    one = _yaml(tmp_path, "teachers:\n  - {path: a}\n")
    with pytest.raises(ConfigError, match="teachers"):
        DistillConfig.from_yaml(one)
    base = dict(student={"path": "s"}, data={"train": ["x"]}, output_dir="o")
    with pytest.raises(ValueError, match="first of `teachers`"):
        DistillConfig.model_validate(base | {"teacher": {"path": "z"}, "teachers": [{"path": "a"}, {"path": "b"}]})
    with pytest.raises(ValueError, match="give `teachers`"):
        DistillConfig.model_validate(base | {"teacher": {"path": "a"}, "multi_teacher": {"mixing": "agreement"}})
    with pytest.raises(ValueError, match="distinct"):
        DistillConfig.model_validate(base | {"teachers": [{"path": "a", "name": "x"}, {"path": "b", "name": "x"}]})


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """Two tiny real Llama teachers of one tokenizer: ``a`` random (seed 0), ``b`` (seed 1) trained for a few
    steps on the training answers with CE, so it is both surer and closer to the labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the one_thread fixture (2 threads spin on a busy box)
    root = tmp_path_factory.mktemp("mt")
    a = make_tiny_teacher(root / "a", seed=0)
    b = make_tiny_teacher(root / "b", seed=1)
    tok = AutoTokenizer.from_pretrained(b / "teacher")
    m = AutoModelForCausalLM.from_pretrained(b / "teacher")
    rows = [json.loads(x) for x in (b / "train.jsonl").read_text().splitlines()]
    ids = [tok(f"{r['q']} {r['a']}")["input_ids"] + [1] for r in rows]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m.train()
    for _ in range(40):
        b_ = collate(ids, [0] * len(ids), pad_id=2)
        loss = m(input_ids=b_["input_ids"], attention_mask=b_["attention_mask"], labels=b_["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.save_pretrained(b / "teacher")
    torch.set_num_threads(threads)
    return a, b


def _cfg(root, a, b, **kw):
    d = dict(teachers=[{"path": str(a / "teacher"), "name": "rand"}, {"path": str(b / "teacher"), "name": "trained"}],
             student={"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                      "intermediate_size": 32}},
             data={"train": [str(a / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                   "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32},
             output_dir=str(root), optim={"batch_size": 4, "max_steps": 3}, progress=False, plot=False, threads=1,
             eval={"samples": 0})
    d.update(kw)
    return DistillConfig.model_validate(d)


SIGNALS = {"online": {"mode": "online"}, "online-bf16": {"mode": "online", "dtype": "bfloat16"},
           "cache": {"mode": "cache", "k": 4}}


@pytest.mark.parametrize(("mixing", "signal"), [("fixed", "online"), ("confidence", "online"),
                                                ("agreement", "online"), ("agreement", "cache"),
                                                ("confidence", "online-bf16")])
def test_distill_with_two_teachers_reports_each_contribution(tmp_path, two_teachers, mixing, signal, device="cpu"):
    from curate.distill import distill

    a, b = two_teachers
    ts = SIGNALS[signal] | ({"dir": str(tmp_path / "cache")} if signal == "cache" else {})
    cfg = _cfg(tmp_path / "run", a, b, multi_teacher={"mixing": mixing, "tau": 1.0}, teacher_signal=ts,
               loss={"name": "forward_kl", "alpha": 0.0}, device=device)
    if mixing == "fixed":
        cfg.teachers[0].weight = 3.0  # prior 0.75 : 0.25
    res = distill(cfg)
    rep = json.loads((res.output_dir / "report.json").read_text())["teachers"]
    rand, trained = rep["teachers"]
    assert [rand["name"], trained["name"]] == ["rand", "trained"] and rep["mixing"] == mixing
    assert rep["tokens_scored"] == res.report["eval"]["tokens_scored"] > 0
    for r in (rand, trained):
        assert r["kl_teacher_student"] > 0 and r["eval_ppl"] > 1
    assert trained["eval_ppl"] < rand["eval_ppl"]  # the trained teacher fits the held-out answers better
    assert rand["mean_weight_train"] + trained["mean_weight_train"] == pytest.approx(1.0)
    assert rand["mean_weight_eval"] + trained["mean_weight_eval"] == pytest.approx(1.0)
    if mixing == "fixed":
        assert rand["mean_weight_train"] == pytest.approx(0.75) and trained["mean_weight_eval"] == pytest.approx(0.25)
    else:  # the surer / label-closer teacher takes most of the weight
        assert trained["mean_weight_train"] > 0.6 and trained["mean_weight_eval"] > 0.6
    assert rep["kl_mixture_student"] > 0
    md = (res.output_dir / "report.md").read_text()
    assert "## Teachers (mixing: " + mixing in md and "| trained |" in md and "KL(mixture || student)" in md
    if mixing == "agreement":  # `curate report RUN_DIR` shows the teachers too
        from curate.report.distill_report import distill_report

        page = distill_report(res.output_dir).markdown()
        assert "teacher (mixing: agreement)" in page and "trained" in page
    if signal == "cache":
        assert (tmp_path / "cache" / "rand" / "meta.json").exists() and (tmp_path / "cache" / "trained").is_dir()
        assert res.report["cache"] is None  # no single-teacher cache was built


@pytest.mark.gpu
@pytest.mark.parametrize("signal", ["online", "cache"])
def test_distill_with_two_teachers_on_cuda(tmp_path, two_teachers, signal):
    """The same run on CUDA (bf16 autocast by precision auto): devices of the weights, merge and report."""
    test_distill_with_two_teachers_reports_each_contribution(tmp_path, two_teachers, "agreement", signal,
                                                             device="cuda")


def test_a_teacher_of_another_tokenizer_is_refused_with_a_pointer_to_cross_tokenizer_kd(tmp_path, two_teachers):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from curate.distill import distill

    a, b = two_teachers
    c = make_tiny_teacher(tmp_path / "c", seed=2)
    words = ["<unk>", "</s>", "<pad>"] + [f"x{i}" for i in range(29)]
    t = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(c / "teacher")
    cfg = _cfg(tmp_path / "run", a, b)
    cfg.teachers.append(cfg.teachers[1].model_copy(update={"path": str(c / "teacher"), "name": "other"}))
    with pytest.raises(ConfigError, match=r"teachers\[2\] \(other\) has another tokenizer.*cross-tokenizer KD"):
        distill(cfg)


def test_readme_snippet_validates_and_its_settings_run(tmp_path, two_teachers):
    """The ``teachers:`` YAML of examples/distill/README.md loads as written; then with the two tiny teachers
    at its teacher paths it runs through ``distill`` (its mixing, loss and cached signal)."""
    import re
    import shutil
    from pathlib import Path

    from curate.distill import distill

    readme = (Path(__file__).resolve().parents[2] / "examples" / "distill" / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M) if "teachers:" in b]
    a, b = two_teachers
    shutil.copy(a / "train.jsonl", tmp_path / "train.jsonl")
    (tmp_path / "distill.yaml").write_text(snippet)
    cfg = DistillConfig.from_yaml(tmp_path / "distill.yaml")
    assert [t.name for t in cfg.teachers] == ["a", "b"] and cfg.multi_teacher.mixing == "agreement"
    (tmp_path / "models").mkdir()
    shutil.copytree(a / "teacher", tmp_path / "models" / "teacher-a")
    shutil.copytree(b / "teacher", tmp_path / "models" / "teacher-b")
    cfg.optim.max_steps, cfg.progress, cfg.plot, cfg.eval.samples = 2, False, False, 0
    res = distill(cfg)
    assert [t["name"] for t in res.report["teachers"]["teachers"]] == ["a", "b"]
    assert (tmp_path / "cache" / "b" / "meta.json").exists()


def test_on_policy_steps_with_cached_teachers_are_scored_online_and_counted(tmp_path, two_teachers):
    from curate.distill import distill

    a, b = two_teachers
    cfg = _cfg(tmp_path / "run", a, b, multi_teacher={"mixing": "confidence"}, on_policy_fraction=1.0,
               on_policy={"max_new_tokens": 4}, teacher_signal={"mode": "cache", "dir": str(tmp_path / "c"), "k": 4})
    res = distill(cfg)
    rows = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["on_policy"] for r in rows)
    w = [t["mean_weight_train"] for t in res.report["teachers"]["teachers"]]
    assert None not in w and sum(w) == pytest.approx(1.0)  # the rollouts went to the online teachers


def test_cli_distill_cache_builds_one_cache_per_teacher_that_distill_reuses(tmp_path, two_teachers, capsys):
    import yaml

    from curate.cli import main
    from curate.distill import distill

    a, b = two_teachers
    cfg = _cfg(tmp_path / "run", a, b, teacher_signal={"mode": "cache", "dir": str(tmp_path / "c"), "k": 4})
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["distill-cache", str(p), "--no-progress"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["cache"] for x in lines] == [str(tmp_path / "c" / "rand"), str(tmp_path / "c" / "trained")]
    assert all(x["num_sequences"] == 32 for x in lines)  # 40 examples, 8 held out
    metas = [tmp_path / "c" / n / "meta.json" for n in ("rand", "trained")]
    before = [m.stat().st_mtime_ns for m in metas]
    distill(cfg)
    assert [m.stat().st_mtime_ns for m in metas] == before  # reused, not rebuilt


def test_multi_teacher_composes_with_uncertainty_weighting(tmp_path, two_teachers):
    """``loss.token_weighting`` (curate.distill.modes_uncert) wraps whatever signal the run has: here the
    teachers' mixture, whose entropy then weights each token's KD term."""
    from curate.distill import distill

    a, b = two_teachers
    cfg = _cfg(tmp_path / "run", a, b, multi_teacher={"mixing": "agreement"},
               loss={"name": "forward_kl", "alpha": 0.0, "token_weighting": "teacher_entropy"})
    res = distill(cfg)
    w = [t["mean_weight_train"] for t in res.report["teachers"]["teachers"]]
    assert sum(w) == pytest.approx(1.0) and w[1] > 0.6
    assert all(r["kd"] > 0 for r in map(json.loads, (res.output_dir / "metrics.jsonl").read_text().splitlines()))
