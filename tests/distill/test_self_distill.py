"""Self-distillation (``self_distill:``): the EMA update against a float64 hand computation, the EMA state
through checkpoints, deep mutual learning's gradients against a float64 reference, and every mode end to end
through ``distill(cfg)`` on a tiny real teacher."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from curate.distill.config import DistillConfig  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.self_distill import EMAHook, MutualHook, ema_decay_at, ema_update, online_signal  # noqa: E402
from curate.distill.trainer import DistillTrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py

V = 24


def llama(seed: int, hidden: int = 16, layers: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=0))


def data(n: int = 12, seed: int = 0) -> TokenData:
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(2, V, (int(torch.randint(6, 14, (), generator=g)),), generator=g).tolist() for _ in range(n)]
    return TokenData(seqs, [2] * n)


def cfg(tmp_path: Path, **kw) -> DistillConfig:
    d = dict(teacher={"from_config": {"model_type": "llama"}}, student={"from_config": {"model_type": "llama"}},
             data={"train": ["unused.jsonl"]}, output_dir=str(tmp_path / "out"), progress=False, plot=False,
             optim={"lr": 3e-3, "batch_size": 4, "max_steps": 4})
    d.update(kw)
    return DistillConfig.model_validate(d)


def state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# ----------------------------------------------------------------------------------------------- EMA
def test_ema_update_float64_by_hand_over_three_steps():
    """theta_T <- a_t theta_T + (1 - a_t) theta_S with Mean Teacher's a_t = min(decay, 1 - 1/(t+1)), by hand."""
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)).double()
    teacher = copy.deepcopy(student)
    hand = {k: v.detach().numpy().copy() for k, v in teacher.named_parameters()}  # float64 numpy
    for warmup, expected in ((True, [0.5, 2 / 3, 0.75]), (False, [0.9, 0.9, 0.9])):
        for t in (1, 2, 3):
            with torch.no_grad():
                for p in student.parameters():
                    p.add_(torch.randn_like(p))  # a stand-in optimizer step
            a = ema_decay_at(t, 0.9, warmup)
            assert a == pytest.approx(expected[t - 1], abs=1e-15)
            ema_update(teacher, student, a)
            for k, p in student.named_parameters():
                hand[k] = a * hand[k] + (1.0 - a) * p.detach().numpy()
        for k, p in teacher.named_parameters():
            assert p.dtype == torch.float64
            assert abs(p.detach().numpy() - hand[k]).max() < 1e-15, k


def test_ema_hook_in_the_trainer_and_resume_matches_uninterrupted(tmp_path):
    d = data()

    def run(out: Path, steps: int | None, resume: bool = False, seed: int = 2):
        student = llama(seed)
        ema = copy.deepcopy(student)
        hook = EMAHook(ema, decay=0.8, warmup=True)
        c = cfg(out, loss={"name": "forward_kl", "alpha": 0.5})
        tr = DistillTrainer(c, student, d, teacher=ema, hooks=[hook])
        snaps = [state(student)]
        tr.train(resume=resume, max_steps=steps, on_step=lambda rec: snaps.append(state(student)))
        return tr, ema, snaps

    tr, ema, snaps = run(tmp_path / "a", None)
    assert [r["ema_decay"] for r in tr.history] == pytest.approx([0.5, 2 / 3, 0.75, 0.8])
    # the teacher is the hand-computed average of the student's own weights after each step
    ref = {k: v.double() for k, v in snaps[0].items()}
    for t, s in enumerate(snaps[1:], start=1):
        a = ema_decay_at(t, 0.8, True)
        ref = {k: a * ref[k] + (1 - a) * s[k].double() for k in ref}
    for k, v in state(ema).items():
        assert torch.allclose(v.double(), ref[k], atol=1e-6), k
    assert not all(torch.equal(v, snaps[-1][k]) for k, v in state(ema).items())  # a lagging copy, not the student
    # 2 steps, then a fresh trainer (other init) resumes: same losses and the same EMA weights
    run(tmp_path / "b", 2)
    tr2, ema2, _ = run(tmp_path / "b", None, resume=True, seed=7)
    assert [r["loss"] for r in tr2.history] == pytest.approx([r["loss"] for r in tr.history], rel=1e-6)
    for k, v in state(ema).items():
        assert torch.allclose(v, state(ema2)[k], atol=1e-6), k
    # a checkpoint made without the EMA state is refused rather than silently restarting the average
    plain = DistillTrainer(cfg(tmp_path / "c"), llama(2), d, teacher=llama(1))
    plain.train(max_steps=1)
    with pytest.raises(ValueError, match="no state for 'ema_teacher'"):
        DistillTrainer(cfg(tmp_path / "c"), llama(2), d, teacher=llama(1),
                       hooks=[EMAHook(llama(2), decay=0.9, warmup=True)]).train(resume=True)


# ----------------------------------------------------------------------------------------------- mutual
def reference_loss64(model: torch.nn.Module, other: torch.nn.Module, b: dict, alpha: float, T: float) -> torch.Tensor:
    """DML generalised: mean over valid tokens of alpha*CE(y, p) + (1-alpha)*T^2*sum_v q^T_v (log q^T_v - log p^T_v),
    q = the other model (a constant), written out with exp/sum in float64."""
    ids, att = b["input_ids"], b["attention_mask"]
    z = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    with torch.no_grad():
        zq = other(input_ids=ids, attention_mask=att).logits[:, :-1]
    lab = b["labels"][:, 1:]
    terms = []
    for i in range(lab.shape[0]):
        for t in range(lab.shape[1]):
            y = int(lab[i, t])
            if y == -100:
                continue
            zt = z[i, t]
            log_p1 = zt - torch.log(torch.exp(zt - zt.max()).sum()) - zt.max()
            ce = -log_p1[y]
            s = zt / T
            log_p = s - s.max() - torch.log(torch.exp(s - s.max()).sum())
            u = zq[i, t] / T
            log_q = u - u.max() - torch.log(torch.exp(u - u.max()).sum())
            kl = (torch.exp(log_q) * (log_q - log_p)).sum()
            terms.append(alpha * ce + (1 - alpha) * T * T * kl)
    return torch.stack(terms).mean()


def test_mutual_learning_gradients_match_float64_reference(tmp_path):
    alpha, T = 0.3, 2.0
    d = data()
    s, peer = llama(2), llama(5, hidden=24)
    c = cfg(tmp_path, loss={"name": "forward_kl", "alpha": alpha, "temperature": T})
    s_tr = DistillTrainer(c, s, d, signal=online_signal(peer, c, V))
    p_tr = DistillTrainer(c, peer, d, signal=online_signal(s, c, V))
    b = s_tr._batch(list(range(4)))
    n = int((b["labels"][:, 1:] != -100).sum())
    s64, p64 = copy.deepcopy(s).double(), copy.deepcopy(peer).double()
    for tr, m, ref_m, other in ((s_tr, s, s64, p64), (p_tr, peer, p64, s64)):
        out = tr._micro(b, n)
        ref = reference_loss64(ref_m, other, b, alpha, T)
        ref.backward()
        assert out["loss"] / n == pytest.approx(ref.item(), rel=1e-5)
        for (name, g), (_, q) in zip(m.named_parameters(), ref_m.named_parameters(), strict=True):
            assert g.grad is not None and torch.allclose(g.grad.double(), q.grad, atol=1e-6, rtol=1e-4), name


def test_mutual_hook_steps_the_peer_against_the_updated_student(tmp_path):
    """DML Algorithm 1: S steps against P, then P steps against the updated S on the same batch."""
    d = data()
    s, peer = llama(2), llama(5)
    c = cfg(tmp_path, loss={"name": "forward_kl", "alpha": 0.5}, optim={"lr": 3e-3, "batch_size": 4, "max_steps": 1})
    p_tr = DistillTrainer(c, peer, d, signal=online_signal(s, c, V))
    s_tr = DistillTrainer(c, s, d, signal=online_signal(peer, c, V), hooks=[MutualHook(p_tr)])
    # the same step taken by hand: S's update, then P's against a frozen copy of the updated S
    s_ref, p_ref = copy.deepcopy(s), copy.deepcopy(peer)
    s_tr_ref = DistillTrainer(c, s_ref, d, signal=online_signal(copy.deepcopy(peer), c, V))
    s_tr_ref.train_step()
    p_tr_ref = DistillTrainer(c, p_ref, d, teacher=copy.deepcopy(s_ref))
    p_tr_ref.train_step()
    rec = s_tr.train_step()
    assert "peer_loss" in rec and p_tr.step == 1
    for k, v in state(s).items():
        assert torch.allclose(v, state(s_ref)[k], atol=1e-6), k
    for k, v in state(peer).items():
        assert torch.allclose(v, state(p_ref)[k], atol=1e-6), k


def test_mutual_resume_restores_the_peer(tmp_path):
    """The peer's weights, optimizer and schedule ride in the student's checkpoint: 2 + 2 steps == 4 steps."""
    d = data()

    def run(out: Path, steps: int | None, resume: bool = False, seed: int = 2):
        s, peer = llama(seed), llama(seed + 3)
        c = cfg(out, loss={"name": "forward_kl", "alpha": 0.5})
        p_tr = DistillTrainer(c, peer, d, signal=online_signal(s, c, V))
        tr = DistillTrainer(c, s, d, signal=online_signal(peer, c, V), hooks=[MutualHook(p_tr)])
        tr.train(resume=resume, max_steps=steps)
        return tr, peer

    tr, peer = run(tmp_path / "a", None)
    run(tmp_path / "b", 2)
    tr2, peer2 = run(tmp_path / "b", None, resume=True, seed=9)
    assert [r["peer_loss"] for r in tr2.history] == pytest.approx([r["peer_loss"] for r in tr.history], rel=1e-6)
    for k, v in state(peer).items():
        assert torch.allclose(v, state(peer2)[k], atol=1e-6), k


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def tiny(tmp_path):
    return make_tiny_teacher(tmp_path, examples=24)


def tiny_cfg(root: Path, **kw) -> DistillConfig:
    d = dict(teacher={"path": str(root / "teacher")},
             student={"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                      "intermediate_size": 32}},
             data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                   "template": "{prompt} {response}", "eval_fraction": 0.25, "max_len": 24},
             output_dir=str(root / "run"), optim={"batch_size": 4, "max_steps": 3, "lr": 3e-3}, progress=False,
             plot=False, threads=1, eval={"samples": 0})
    d.update(kw)
    return DistillConfig.model_validate(d)


def test_distill_ema_and_checkpoint_modes(tiny):
    from curate.distill import distill

    res = distill(tiny_cfg(tiny, self_distill={"mode": "ema", "ema_decay": 0.9}))
    sd = res.report["self_distill"]
    assert sd["mode"] == "ema" and sd["eval"]["ppl"] > 1 and 0 <= sd["eval"]["top1_agreement"] <= 1
    assert (res.output_dir / "ema_teacher" / "model.safetensors").is_file()
    assert "## Self-distillation (ema)" in (res.output_dir / "report.md").read_text()
    recs = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["ema_decay"] for r in recs] == pytest.approx([0.5, 2 / 3, 0.75])
    # the saved EMA student is the frozen teacher of a checkpoint-mode run
    ck = tiny_cfg(tiny, output_dir=str(tiny / "ck"),
                  self_distill={"mode": "checkpoint", "checkpoint": str(res.output_dir / "ema_teacher")})
    res2 = distill(ck)
    assert res2.report["self_distill"]["eval"]["ppl"] == pytest.approx(sd["eval"]["ppl"], rel=1e-5)
    assert res2.train["steps"] == 3 and res2.report["eval"]["student"]["ppl"] > 1


def test_distill_mutual_trains_both_and_reports_the_peer(tiny):
    from curate.distill import distill
    from curate.distill.run import prepare

    c = tiny_cfg(tiny, self_distill={"mode": "mutual", "peer": "teacher", "peer_lr": 1e-3})
    before = state(prepare(c, need_student=False).teacher)
    res = distill(c)
    recs = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("peer_loss" in r and r["peer_loss"] > 0 for r in recs)
    from transformers import AutoModelForCausalLM

    peer = AutoModelForCausalLM.from_pretrained(res.output_dir / "peer")
    assert any(not torch.equal(v, before[k]) for k, v in state(peer).items())  # the teacher copy trained too
    sd = res.report["self_distill"]
    assert sd["source"] == "teacher" and sd["eval"]["kl_teacher_self"] > 0  # moved away from the original
    assert res.report["eval"]["kl_teacher_student"] > 0  # the report's teacher is the untouched original


def test_born_again_rounds_same_init_reports_and_resume(tiny):
    from curate.distill import distill
    from curate.distill.run import prepare
    from curate.distill.self_distill import round_config

    c = tiny_cfg(tiny, self_distill={"mode": "born_again", "rounds": 3, "first_round": "labels"})
    res = distill(c)
    out = res.output_dir
    rows = res.report["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["teacher"] for r in rows] == ["labels", "round 1 student", "round 2 student"]
    for r in (1, 2, 3):
        rep = json.loads((out / f"round_{r}" / "report.json").read_text())
        assert rep["eval"]["student"]["ppl"] == pytest.approx(rows[r - 1]["ppl"])
    r2 = json.loads((out / "round_2" / "report.json").read_text())["config"]
    assert r2["self_distill"] == {**r2["self_distill"], "mode": "checkpoint",
                                  "checkpoint": str(out / "round_1" / "student")}
    assert json.loads((out / "round_1" / "report.json").read_text())["config"]["loss"]["name"] == "ce"
    md = (out / "report.md").read_text()
    assert "## Born-again rounds" in md and md.count("round 2 student") == 1
    assert (out / "student" / "model.safetensors").read_bytes() == (out / "round_3" / "student" / "model.safetensors").read_bytes()
    # round k+1 starts from the same initialisation as round k
    inits = [state(prepare(round_config(c, r, out / f"round_{r - 1}")).student) for r in (1, 2)]
    assert all(torch.equal(v, inits[1][k]) for k, v in inits[0].items())
    # different rounds end in different students (each learnt from a different teacher)
    w = [(out / f"round_{r}" / "student" / "model.safetensors").read_bytes() for r in (1, 2, 3)]
    assert len(set(w)) == 3
    # --resume: finished rounds are not retrained
    stamp = [(out / f"round_{r}" / "round_done.json").stat().st_mtime_ns for r in (1, 2, 3)]
    again = distill(c, resume=True)
    assert [(out / f"round_{r}" / "round_done.json").stat().st_mtime_ns for r in (1, 2, 3)] == stamp
    assert again.report["rounds"] == rows


def test_self_distill_config_errors(tiny):
    with pytest.raises(ValueError, match="needs `checkpoint`"):
        tiny_cfg(tiny, self_distill={"mode": "checkpoint"})
    with pytest.raises(ValueError, match="on-policy"):
        tiny_cfg(tiny, self_distill={"mode": "mutual"}, on_policy_fraction=0.5)
    with pytest.raises(ValueError, match="online"):
        tiny_cfg(tiny, self_distill={"mode": "ema"}, teacher_signal={"mode": "cache", "dir": "c"})
    with pytest.raises(ValueError, match="teacher loss"):
        tiny_cfg(tiny, self_distill={"mode": "born_again"}, loss={"name": "ce"})
    t = str(tiny / "teacher")
    with pytest.raises(ValueError, match="drop `teachers`"):
        tiny_cfg(tiny, teachers=[{"path": t}, {"path": t, "name": "b"}], self_distill={"mode": "ema"})
    with pytest.raises(ValueError, match="no frozen hidden"):
        tiny_cfg(tiny, self_distill={"mode": "mutual"}, hidden_states={"layers": "uniform"})


def readme_snippets() -> list[dict]:
    text = (REPO / "examples" / "distill" / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Self-distillation and sequence-level KD"):]
    section = section[: section.find("\n## ", 5) if "\n## " in section[5:] else len(section)]
    return [yaml.safe_load(m) for m in re.findall(r"^```yaml\n(.*?)^```", section, re.S | re.M)]


def test_readme_snippets_load_and_run(tiny):
    from curate.distill import distill

    snippets = readme_snippets()
    assert len(snippets) >= 3
    modes = set()
    for j, snip in enumerate(snippets):
        c = tiny_cfg(tiny, output_dir=str(tiny / f"readme{j}"), **snip)  # the snippet's sections, as written
        modes.add(c.self_distill.mode if c.self_distill else "seq_kd" if c.seq_kd else None)
        if j == 0:
            assert distill(c).report["eval"]["student"]["ppl"] > 1
    assert {"ema", "born_again", "mutual", "seq_kd"} <= modes
