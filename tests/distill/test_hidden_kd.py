"""Hidden-state KD (curate.distill.hidden): the MSE / cosine term and its projection gradient against float64
references written from DistillKit's definitions, the hooks against transformers' ``output_hidden_states``,
layer-mapping validation, and a run through ``distill(cfg)`` that reports CKA before and after training."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from curate.core.errors import ConfigError  # noqa: E402
from curate.distill.config import DistillConfig, HiddenStates  # noqa: E402
from curate.distill.hidden import HiddenStateKD, _Taps, resolve_layers  # noqa: E402
from tests.conftest import make_tiny_teacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


def llama(hidden: int, layers: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1))


def ref_loss(kind: str, s, t, w):
    """Per-token loss in float64 with plain loops: mse = (1/d) sum_j ((W s)_j - t_j)^2, cosine = 1 - <Ws, t> /
    (|Ws| |t|)."""
    out = []
    for i in range(s.shape[0]):
        ws = [sum(w[j, k] * s[i, k] for k in range(s.shape[1])) for j in range(w.shape[0])]
        if kind == "mse":
            out.append(sum((ws[j] - t[i, j]) ** 2 for j in range(len(ws))) / len(ws))
        else:
            dot = sum(ws[j] * t[i, j] for j in range(len(ws)))
            n1 = sum(v * v for v in ws) ** 0.5
            n2 = sum(t[i, j] ** 2 for j in range(len(ws))) ** 0.5
            out.append(1 - dot / (n1 * n2))
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_loss_and_projection_gradient_match_float64_reference(kind):
    kd = HiddenStateKD(HiddenStates(layers=[(1, 2), (2, 3)], loss=kind), llama(8, 2), llama(12, 3, seed=1))
    assert kd.projections is not None and kd.projections[0].weight.shape == (12, 8)
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(5, 8, generator=g) for _ in range(2)]
    t = [torch.randn(5, 12, generator=g) for _ in range(2)]
    per = kd.per_token(s, t)
    per.sum().backward()
    ws = [p.weight.detach().double().requires_grad_(True) for p in kd.projections]
    ref = (ref_loss(kind, s[0].double(), t[0].double(), ws[0]) + ref_loss(kind, s[1].double(), t[1].double(), ws[1])) / 2
    ref.sum().backward()
    assert per.detach().double().numpy() == pytest.approx(ref.detach().numpy(), abs=1e-5)
    for p, w in zip(kd.projections, ws, strict=True):
        assert p.weight.grad.double().numpy() == pytest.approx(w.grad.numpy(), abs=1e-5)
    kd.close()


def test_equal_widths_use_no_projection_unless_forced():
    st, te = llama(8, 1), llama(8, 2, seed=1)
    assert HiddenStateKD(HiddenStates(layers=[(1, 2)]), st, te).projections is None
    forced = HiddenStateKD(HiddenStates(layers=[(1, 2)], projection="always"), st, te)
    assert forced.projections is not None and forced.projections[0].weight.shape == (8, 8)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_taps_read_what_output_hidden_states_returns(family):
    if family == "llama":
        m = llama(16, 3)
    else:
        torch.manual_seed(0)
        m = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=3, n_head=2))
    m.eval()
    taps = _Taps(m, {0, 1, 2, 3})
    ids = torch.randint(0, 32, (2, 7))
    hs = m(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hs) == 4
    for k in range(4):
        assert torch.allclose(taps.out[k], hs[k], atol=1e-6), k
    taps.close()


def test_layer_mapping_validation():
    assert resolve_layers("uniform", 3, 5) == [(1, 2), (2, 4)]  # 2 student layers onto 4 teacher layers
    assert resolve_layers([(0, 0), (2, 4)], 3, 5) == [(0, 0), (2, 4)]
    with pytest.raises(ConfigError, match=r"\(3, 1\) out of range; student indices are 0..2"):
        resolve_layers([(3, 1)], 3, 5)
    with pytest.raises(ConfigError, match=r"\(1, -1\)"):
        resolve_layers([(1, -1)], 3, 5)
    with pytest.raises(ConfigError, match="out of range"):
        HiddenStateKD(HiddenStates(layers=[(1, 9)]), llama(8, 2), llama(8, 2))
    base = dict(teacher={"path": "t"}, student={"path": "s"}, data={"train": ["x"]}, output_dir="o")
    with pytest.raises(ValueError, match="online teacher"):
        DistillConfig.model_validate(base | {"hidden_states": {"layers": [[1, 1]]},
                                             "teacher_signal": {"mode": "cache", "dir": "c"}})
    with pytest.raises(ValueError, match="hidden_states.layers"):
        DistillConfig.model_validate(base | {"hidden_states": {"layers": "every"}})


def test_readme_snippet_is_a_valid_hidden_state_config():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "examples" / "distill" / "README.md").read_text()
    (snip,) = [b for b in map(yaml.safe_load, re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M))
               if "hidden_states" in b]
    cfg = DistillConfig.model_validate(snip)
    assert cfg.hidden_states.layers == [(2, 15), (4, 30)] and cfg.hidden_states.loss == "cosine"


def test_hidden_state_kd_end_to_end_reports_cka(tmp_path):
    from safetensors.torch import load_file

    from curate.distill.run import distill

    root = make_tiny_teacher(tmp_path, layers=2, examples=48)
    cfg = dict(teacher={"path": str(root / "teacher")},
               student={"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                        "intermediate_size": 32}},
               data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                     "eval_fraction": 0.25},
               loss={"name": "forward_kl"}, hidden_states={"layers": [[1, 2]], "loss": "cosine", "weight": 1.0},
               optim={"lr": 1e-2, "batch_size": 6, "max_steps": 20, "schedule": "constant"},
               eval={"samples": 0}, output_dir=str(tmp_path / "out"), progress=False, plot=False, threads=1)
    res = distill(cfg)
    out = res.output_dir
    rep = json.loads((out / "report.json").read_text())
    (pair,) = rep["hidden_states"]["pairs"]
    assert (pair["student"], pair["teacher"]) == (1, 2) and rep["hidden_states"]["projection"]
    assert 0 <= pair["cka_before"] <= 1 and 0 <= pair["cka_after"] <= 1
    assert pair["cka_after"] > pair["cka_before"]  # matching the teacher's states raises their similarity
    assert "linear CKA before" in (out / "report.md").read_text()
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("hidden" in s for s in steps)
    assert sum(s["hidden"] for s in steps[-3:]) < sum(s["hidden"] for s in steps[:3])
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["aux"]["projections.0.weight"].shape == (32, 16)  # the projection is in the checkpoint ...
    assert not any("projection" in k for k in load_file(out / "student" / "model.safetensors"))  # ... not the student


def test_resume_restores_the_projections_and_reproduces_the_run(tmp_path):
    from curate.distill.data import TokenData
    from curate.distill.trainer import DistillTrainer

    g = torch.Generator().manual_seed(0)
    d = TokenData([torch.randint(3, 32, (int(k),), generator=g).tolist() for k in torch.randint(6, 12, (12,), generator=g)],
                  [2] * 12)
    teacher = llama(12, 2, seed=1)

    def run(out: str, seed: int, **train_kw):
        c = DistillConfig.model_validate(dict(
            teacher={"from_config": {"model_type": "llama"}}, student={"from_config": {"model_type": "llama"}},
            data={"train": ["unused.jsonl"]}, output_dir=str(tmp_path / out), progress=False, plot=False,
            hidden_states={"layers": [[1, 1], [2, 2]], "loss": "mse", "weight": 1.0},
            optim={"batch_size": 3, "max_steps": 4, "lr": 1e-2}))
        student = llama(8, 2, seed=seed)
        torch.manual_seed(seed)  # the projections' init
        aux = HiddenStateKD(c.hidden_states, student, teacher)
        t = DistillTrainer(c, student, d, teacher=teacher, aux=aux)
        t.train(**train_kw)
        aux.close()
        return t

    straight = run("a", 2)
    run("b", 2, max_steps=2)
    resumed = run("b", 77, resume=True)  # other student and projection weights: all come from the checkpoint
    assert [r["hidden"] for r in resumed.history] == pytest.approx([r["hidden"] for r in straight.history], rel=1e-5)
    assert torch.allclose(resumed.aux.projections[1].weight, straight.aux.projections[1].weight, atol=1e-6)
