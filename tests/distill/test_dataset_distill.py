"""Dataset distillation for text (curate.distill.dataset_distill): the gradient-matching distance and the MMD
against float64 references written from the papers' formulas, each method lowering its own objective on a
tiny char-level model (tinyshakespeare), and the whole comparison through ``distill(cfg)`` writing its report."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.distill.config import DatasetDistillSpec, DistillConfig  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.dataset_distill import (  # noqa: E402
    DistributionMatching,
    GradientMatching,
    SyntheticSet,
    _RealBatches,
    _transposed,
    fresh_student,
    gradient_match_distance,
    kcenter_indices,
    mmd_linear,
)

README = Path(__file__).resolve().parents[2] / "examples" / "distill" / "README.md"


# ----------------------------------------------------------------------------------------------- references
def ref_distance_wb(g_syn: list[np.ndarray], g_real: list[np.ndarray], transpose: list[bool]) -> float:
    """DC utils.distance_wb + match_loss('ours'), written as loops in float64: per tensor of dim >= 2 (conv
    flattened to [out, rest]), sum over rows of 1 - a.b / (|a| |b| + 1e-6); 1-D tensors give 0."""
    total = 0.0
    for gs, gr, tr in zip(g_syn, g_real, transpose, strict=True):
        if gs.ndim == 1:
            continue
        if tr:
            gs, gr = gs.T, gr.T
        a, b = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        for i in range(a.shape[0]):
            dot = sum(float(x) * float(y) for x, y in zip(a[i], b[i], strict=True))
            na = math.sqrt(sum(float(x) ** 2 for x in a[i]))
            nb = math.sqrt(sum(float(y) ** 2 for y in b[i]))
            total += 1.0 - dot / (na * nb + 1e-6)
    return total


def ref_mmd(real: np.ndarray, syn: np.ndarray) -> float:
    """|| (1/n) sum_i real_i - (1/m) sum_j syn_j ||^2 with explicit loops (DM, linear kernel)."""
    d = real.shape[1]
    out = 0.0
    for k in range(d):
        mr = sum(float(real[i, k]) for i in range(real.shape[0])) / real.shape[0]
        ms = sum(float(syn[j, k]) for j in range(syn.shape[0])) / syn.shape[0]
        out += (mr - ms) ** 2
    return out


def test_gradient_match_distance_matches_float64_reference():
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (4,), (3, 2, 2, 2), (6, 4), (2, 3, 4), (7,)]
    transpose = [False, False, False, True, False, False]
    gs = [rng.normal(size=s) for s in shapes]
    gr = [rng.normal(size=s) for s in shapes]
    gr[0][2] = 0.0  # an all-zero row: cos = 0 / (0 + eps) -> contributes 1, as in the reference
    ref = ref_distance_wb(gs, gr, transpose)
    got = gradient_match_distance([torch.tensor(x) for x in gs], [torch.tensor(x) for x in gr], transpose=transpose)
    assert got.dtype == torch.float64 and float(got) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    got32 = gradient_match_distance([torch.tensor(x, dtype=torch.float32) for x in gs],
                                    [torch.tensor(x, dtype=torch.float32) for x in gr], transpose=transpose)
    assert float(got32) == pytest.approx(ref, rel=1e-5)
    # the transposed tensor is compared by its columns: without the flag the value differs
    plain = gradient_match_distance([torch.tensor(x) for x in gs], [torch.tensor(x) for x in gr])
    assert float(plain) == pytest.approx(ref_distance_wb(gs, gr, [False] * 6), rel=1e-12)
    assert abs(float(plain) - ref) > 1e-3
    # identities: equal gradients ~0, opposite ones 2 per row, invariant to a positive scale per tensor
    rows = sum(x.shape[1] if t else x.shape[0] for x, t in zip(gs, transpose, strict=True) if x.ndim > 1)
    same = gradient_match_distance([torch.tensor(x) for x in gs], [torch.tensor(x) for x in gs], transpose=transpose)
    opp = gradient_match_distance([torch.tensor(x) for x in gs], [torch.tensor(-x) for x in gs], transpose=transpose)
    assert float(same) == pytest.approx(0.0, abs=1e-5) and float(opp) == pytest.approx(2.0 * rows, rel=1e-5)
    scaled = gradient_match_distance([torch.tensor(3.0 * x) for x in gs], [torch.tensor(x) for x in gr],
                                     transpose=transpose)
    assert float(scaled) == pytest.approx(ref, rel=1e-6)
    # a missing gradient (a parameter the loss does not reach) counts 0
    assert float(gradient_match_distance([None, torch.ones(2, 2)], [torch.ones(2, 2), None])) == 0.0


def test_mmd_linear_matches_float64_reference():
    rng = np.random.default_rng(1)
    real, syn = rng.normal(size=(9, 5)), rng.normal(loc=0.3, size=(4, 5))
    got = mmd_linear(torch.tensor(real), torch.tensor(syn))
    assert got.dtype == torch.float64 and float(got) == pytest.approx(ref_mmd(real, syn), rel=1e-12)
    # a synthetic set whose mean is the real mean has zero loss (algorithms.md 10.2)
    mean_set = torch.tensor(real).mean(0, keepdim=True).repeat(3, 1)
    assert float(mmd_linear(torch.tensor(real), mean_set)) == pytest.approx(0.0, abs=1e-24)


def test_kcenter_indices_cover_better_than_a_random_subset():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=10.0, size=(6, 4))
    X = np.concatenate([c + rng.normal(scale=0.1, size=(30, 4)) for c in centres])
    idx = kcenter_indices(X, 6, seed=0)
    assert len(set(idx)) == 6
    assert sorted({i // 30 for i in idx}) == list(range(6))  # one pick per cluster
    radius = np.sqrt(((X[:, None] - X[idx][None]) ** 2).sum(-1)).min(1).max()
    assert radius < 1.0
    assert kcenter_indices(X, 6, seed=0) == idx  # seeded


# ----------------------------------------------------------------------------------------------- the methods
BLOCK = 33


@pytest.fixture(scope="module")
def char_setup(shared_data):
    """Tinyshakespeare as 33-character blocks, a 2-layer char teacher and a 1-layer student (random init)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    text = (shared_data / "books" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:40000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = TokenData.from_blocks([stoi[c] for c in text], BLOCK)
    V = len(chars)

    def make(layers: int, embd: int, seed: int) -> GPT2LMHeadModel:
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=BLOCK, n_embd=embd, n_layer=layers, n_head=2,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    return data, make(2, 32, 0).eval(), make(1, 16, 1), V


def _spec(**kw) -> DatasetDistillSpec:
    base = dict(size=6, gm={"iterations": 3, "outer_loop": 3, "inner_loop": 2, "batch_real": 16},
                dm={"iterations": 30, "batch_real": 32})
    return DatasetDistillSpec.model_validate(base | kw)


def _probe(char_setup, kind: str):
    data, teacher, student, V = char_setup
    cpu = torch.device("cpu")
    pool = list(range(len(data)))
    batch = _RealBatches(data, pool, teacher=teacher, vocab=V, pad_id=0, device=cpu, seed=99).draw(32)
    nets = [fresh_student(student, 10_000 + s, cpu).eval() for s in range(3)]
    return data, teacher, student, V, pool, batch, nets


def test_gradient_matching_lowers_the_gradient_distance(char_setup, one_thread):
    data, teacher, student, V, pool, batch, nets = _probe(char_setup, "gm")
    gm = GradientMatching(student=student, teacher=teacher, data=data, pool=pool, spec=_spec(), vocab=V, pad_id=0,
                          device=torch.device("cpu"), seed=0, seq_len=BLOCK - 1)
    z0 = gm.z.detach().clone()

    def objective() -> float:
        return sum(float(gm.distance(n, batch)) for n in nets) / len(nets)

    before = objective()
    gm.run()
    after = objective()
    assert after < before - 0.5, (before, after)  # on held-out networks and a held-out real batch
    assert len(gm.history) == 3 and not torch.equal(gm.z.detach(), z0)
    syn = gm.result()
    assert syn.logits.shape == (6, BLOCK - 1, V) and syn.labels.shape == (6, BLOCK - 2, V)
    # the labels are the teacher's distribution on the final soft tokens (SRe2L-style relabelling)
    x = torch.softmax(syn.logits, -1) @ teacher.get_input_embeddings().weight
    with torch.no_grad():
        want = teacher(inputs_embeds=x).logits[:, :-1]
    assert torch.allclose(syn.labels, want, atol=1e-5)


def test_distribution_matching_lowers_the_mmd(char_setup, one_thread):
    data, teacher, student, V, pool, batch, nets = _probe(char_setup, "dm")
    dm = DistributionMatching(student=student, teacher=teacher, data=data, pool=pool, spec=_spec(), vocab=V,
                              pad_id=0, device=torch.device("cpu"), seed=0, seq_len=BLOCK - 1)
    for n in nets:
        for q in n.parameters():
            q.requires_grad_(False)

    def objective() -> float:
        with torch.no_grad():
            return sum(float(dm.loss(n, batch)) for n in nets) / len(nets)

    before = objective()
    dm.run()
    after = objective()
    assert after < 0.7 * before, (before, after)


def test_learned_labels_move_with_gradient_matching(char_setup, one_thread):
    data, teacher, student, V, pool, _, _ = _probe(char_setup, "gm")
    spec = _spec(labels="learned", gm={"iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 16})
    gm = GradientMatching(student=student, teacher=teacher, data=data, pool=pool, spec=spec, vocab=V, pad_id=0,
                          device=torch.device("cpu"), seed=0, seq_len=BLOCK - 1)
    y0 = gm.y.detach().clone()
    assert torch.allclose(y0, gm.teacher_labels())  # learned labels start at the teacher's
    gm.run()
    assert not torch.allclose(gm.y.detach(), y0) and torch.equal(gm.result().labels, gm.y.detach())
    with pytest.raises(ValueError, match="learned by gm"):
        DatasetDistillSpec(labels="learned", methods=["dm"])


def test_transposed_marks_gpt2_conv1d(char_setup):
    student = char_setup[2]
    params = list(student.parameters())
    flags = dict(zip([n for n, _ in student.named_parameters()], _transposed(student, params), strict=True))
    assert flags["transformer.h.0.attn.c_attn.weight"] and flags["transformer.h.0.mlp.c_fc.weight"]
    assert not flags["transformer.wte.weight"] and not flags["transformer.h.0.ln_1.weight"]


# ----------------------------------------------------------------------------------------------- end to end
def readme_snippet() -> dict:
    import yaml

    blocks = re.findall(r"^```yaml\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    snippet = next(b for b in blocks if "dataset_distill:" in b)
    return yaml.safe_load(snippet)


def test_readme_snippet_validates():
    cfg = DistillConfig.model_validate(readme_snippet())
    dd = cfg.dataset_distill
    assert dd is not None and set(dd.methods) == {"random", "kcenter", "sre2l", "gm", "dm"}


def test_distill_runs_every_method_and_writes_the_table(tmp_path, one_thread):
    """The README snippet's dataset_distill section on a tiny real Llama teacher (make_tiny_teacher), scaled
    down: every method trains a student, the report has one row per method, the sets are saved."""
    from curate.distill import distill

    root = make_tiny_teacher(tmp_path, examples=60)
    snip = readme_snippet()
    dd = snip["dataset_distill"] | {"size": 6, "methods": ["random", "kcenter", "random_kd", "sre2l", "gm", "dm"],
                                    "gm": snip["dataset_distill"]["gm"] | {"iterations": 2, "outer_loop": 2,
                                                                           "inner_loop": 1, "batch_real": 8},
                                    "dm": snip["dataset_distill"]["dm"] | {"iterations": 5, "batch_real": 8}}
    cfg = DistillConfig.model_validate(snip | {
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                    "intermediate_size": 32}},
        "data": {"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                 "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 24},
        "output_dir": str(tmp_path / "run"), "optim": snip["optim"] | {"max_steps": 6, "batch_size": 4},
        "dataset_distill": dd, "progress": False, "plot": False, "threads": 1})
    res = distill(cfg)
    rep = res.report
    assert [r["method"] for r in rep["table"]] == dd["methods"]
    for r in rep["table"]:
        assert r["sequences"] == 6 and r["kl_teacher_student"] > 0 and r["student_ppl"] > 1
        assert r["teacher_ppl"] == pytest.approx(rep["table"][0]["teacher_ppl"])
    md = (res.output_dir / "report.md").read_text()
    assert md.count("\n| ") == len(dd["methods"]) + 1 and "held-out KL" in md
    assert (res.output_dir / "report.json").exists()
    m = rep["methods"]
    # the same size for the subsets; k-center and random pick different sequences; SRe2L = k-center + relabel
    assert len(m["random"]["indices"]) == len(m["kcenter"]["indices"]) == 6
    assert m["sre2l"]["indices"] == m["kcenter"]["indices"] and m["random_kd"]["indices"] == m["random"]["indices"]
    # SRe2L lowers its own objective (KD on the relabelled coreset)
    assert m["sre2l"]["train"]["final_loss"] < m["sre2l"]["train"]["first_loss"]
    for k in ("gm", "dm"):
        syn = SyntheticSet.load(res.output_dir / "synthetic" / f"{k}.safetensors")
        assert syn.logits.shape[0] == 6 and syn.labels is not None
        assert len(m[k]["objective"]) == dd[k]["iterations"]
    # the students differ (different sets), all from the same initialisation
    assert len({round(r["kl_teacher_student"], 6) for r in rep["table"]}) == len(dd["methods"])


def test_soft_label_loss_is_the_kd_loss():
    """_kd equals T^2 * forward_kl (the trainer's KL) and passes gradients to learned label logits."""
    from curate.distill.dataset_distill import _kd
    from curate.distill.losses import forward_kl

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 7, generator=g, dtype=torch.float64), torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    want = 4.0 * forward_kl(s.reshape(-1, 7), t.reshape(-1, 7), 2.0).mean()
    assert float(_kd(s, t, None, 2.0)) == pytest.approx(float(want), rel=1e-12)
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])
    assert float(_kd(s, t, mask, 1.0)) == pytest.approx(float(forward_kl(s[mask], t[mask]).mean()), rel=1e-12)
    y = t.clone().requires_grad_(True)
    _kd(s, y, None, 1.0).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def _tiny_cfg(root: Path, out: Path, **dd) -> dict:
    return {"teacher": {"path": str(root / "teacher")},
            "student": {"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                        "intermediate_size": 32}},
            "data": {"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                     "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 24},
            "output_dir": str(out), "optim": {"max_steps": 3, "batch_size": 4}, "progress": False, "plot": False,
            "threads": 1, "dataset_distill": {"size": 4, "gm": {"iterations": 1, "outer_loop": 2, "inner_loop": 1,
                                                                "batch_real": 8},
                                              "dm": {"iterations": 3, "batch_real": 8}} | dd}


def test_cli_distill_prints_the_comparison(tmp_path, capsys, one_thread):
    import yaml

    from curate.cli import main

    root = make_tiny_teacher(tmp_path, examples=30)
    p = tmp_path / "dd.yaml"
    p.write_text(yaml.safe_dump(_tiny_cfg(root, tmp_path / "out", methods=["random", "dm"])))
    assert main(["distill", str(p), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| random | 4 |" in out and "| dm | 4 |" in out and "synthetic" in out
    assert (tmp_path / "out" / "synthetic" / "dm.safetensors").exists()


@pytest.mark.gpu
def test_every_method_runs_on_cuda(tmp_path):
    from curate.distill import distill

    root = make_tiny_teacher(tmp_path, examples=30)
    cfg = DistillConfig.model_validate(_tiny_cfg(root, tmp_path / "out", methods=["kcenter", "sre2l", "gm", "dm"])
                                       | {"device": "cuda"})
    rep = distill(cfg).report
    assert [r["method"] for r in rep["table"]] == ["kcenter", "sre2l", "gm", "dm"]
    assert all(r["kl_teacher_student"] > 0 for r in rep["table"])


def test_rerun_with_another_size_relabels_its_own_subset(tmp_path, one_thread):
    """A second run into the same output dir with another set size builds a new relabelling cache instead of
    failing on the first run's (a cache of other data is refused by build_teacher_cache)."""
    from curate.distill import distill

    root = make_tiny_teacher(tmp_path, examples=30)
    for size in (4, 5):
        cfg = _tiny_cfg(root, tmp_path / "out", methods=["sre2l"])
        cfg["dataset_distill"]["size"] = size
        rep = distill(DistillConfig.model_validate(cfg)).report
        assert rep["table"][0]["sequences"] == size
    assert len(list((tmp_path / "out" / "sre2l").glob("cache-*"))) == 2


def test_dataset_distill_refuses_several_teachers():
    base = {"student": {"path": "s"}, "data": {"train": ["x"]}, "output_dir": "o", "dataset_distill": {"size": 4},
            "teachers": [{"path": "a"}, {"path": "b"}]}
    with pytest.raises(ValueError, match="one teacher"):
        DistillConfig.model_validate(base)
