"""Stop token ids in rollouts (mask after the first stop id of any kind, on a hand-built generation and in real
on-policy rollouts) and sequence-level KD (``seq_kd:``) end to end on a tiny real teacher: cached, resumable,
keyed by teacher + prompts + settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from curate.distill.config import DistillConfig, OnPolicy  # noqa: E402
from curate.distill.data import TokenData  # noqa: E402
from curate.distill.signals import OnPolicy as OnPolicyRollout  # noqa: E402
from curate.distill.stops import completion_mask, cut, stop_token_ids  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py

PAD = 0


def test_completion_mask_on_a_hand_built_generation():
    stops = [1, 3]
    gen = torch.tensor([
        [5, 7, 1, 9, 3, 4],   # eos at 2: keep 0..2
        [5, 3, 8, 1, 6, 6],   # the other stop id comes first: keep 0..1
        [1, 4, 4, 4, 4, 4],   # stops at once: keep the stop itself
        [5, 1, 0, 0, 0, 0],   # finished early, padded by generate: the pads go
        [5, 6, 7, 8, 9, 4],   # ran to max_new_tokens: keep all
        [5, 0, 0, 3, 0, 0],   # a pad id the model chose (no stop before it) is content; the stop ends it
    ])
    want = [[5, 7, 1], [5, 3], [1], [5, 1], [5, 6, 7, 8, 9, 4], [5, 0, 0, 3]]
    mask = completion_mask(gen, stops)
    # a plain-loop reference: up to the first stop id of any kind (inclusive), else everything
    for row, m in zip(gen.tolist(), mask.tolist(), strict=True):
        end = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
        assert m == [j < end for j in range(len(row))]
    assert cut(gen, stops) == want
    assert cut(gen, [1]) == [[5, 7, 1], [5, 3, 8, 1], [1], [5, 1], [5, 6, 7, 8, 9, 4], gen[5].tolist()]
    assert completion_mask(torch.tensor([[5, 6]]), []).tolist() == [[True, True]]


def tiny_lm(eos: int | list[int]) -> LlamaForCausalLM:
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                     bos_token_id=2, eos_token_id=1, pad_token_id=PAD))
    m.generation_config.eos_token_id = eos
    return m


def test_default_stop_ids_are_tokenizer_eos_plus_generation_config_list():
    assert stop_token_ids(None, eos_id=1, model=tiny_lm([1, 7, 9])) == [1, 7, 9]
    assert stop_token_ids(None, eos_id=2, model=tiny_lm(7)) == [2, 7]
    assert stop_token_ids([4, 4, 5], eos_id=1, model=tiny_lm([1, 7])) == [4, 5]
    assert stop_token_ids(None, eos_id=None, model=None) == []


def test_on_policy_rollouts_end_at_the_first_stop_id_of_any_kind():
    """A student whose generation_config lists extra eos ids (as Llama 3's <|eot_id|>): no rollout runs past
    any of them; with the tokenizer's eos alone (the old behaviour) rollouts run on through them."""
    extra = list(range(3, 14))  # half the vocabulary: sampling hits one within a few tokens
    student = tiny_lm([1, *extra])
    g = torch.Generator().manual_seed(0)
    data = TokenData([torch.randint(14, 24, (8,), generator=g).tolist() for _ in range(8)], [3] * 8)
    spec = OnPolicy(max_new_tokens=16, prompt_tokens=3)
    roll = OnPolicyRollout(spec, 1.0, seed=0, pad_id=PAD, eos_id=1)
    torch.manual_seed(1)
    b = roll.rollout(student, data, list(range(8)), device=torch.device("cpu"), autocast=lambda: torch.autocast("cpu", enabled=False))
    stops = {1, *extra}
    lens = []
    for row, att in zip(b["input_ids"].tolist(), b["attention_mask"].tolist(), strict=True):
        comp = row[3: sum(att)]
        hits = [j for j, t in enumerate(comp) if t in stops]
        assert not hits or hits[0] == len(comp) - 1, comp  # the first stop id ends the rollout
        lens.append(len(comp))
    assert b["labels"][:, 3:].ne(-100).sum(1).tolist() == lens  # labels cover exactly the kept completion
    only_eos = OnPolicyRollout(OnPolicy(max_new_tokens=16, prompt_tokens=3, stop_token_ids=[1]), 1.0, seed=0,
                               pad_id=PAD, eos_id=1)
    torch.manual_seed(1)
    b1 = only_eos.rollout(student, data, list(range(8)), device=torch.device("cpu"),
                          autocast=lambda: torch.autocast("cpu", enabled=False))
    ran_on = [row[3: sum(att)] for row, att in zip(b1["input_ids"].tolist(), b1["attention_mask"].tolist(), strict=True)]
    assert any(any(t in extra for t in comp[:-1]) for comp in ran_on)  # the old behaviour trains past a stop
    assert sum(map(len, ran_on)) > sum(lens)


# ----------------------------------------------------------------------------------------------- seq_kd
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
             plot=False, threads=1, eval={"samples": 0}, loss={"name": "ce"})
    d.update(kw)
    return DistillConfig.model_validate(d)


def answers(root: Path) -> dict[int, list[int]]:
    return {r["i"]: r["gen"] for r in map(json.loads, (root / "answers.jsonl").read_text().splitlines())}


def test_seq_kd_end_to_end_cached_resumable_and_keyed(tiny):
    from curate.distill import distill
    from curate.distill.run import prepare
    from curate.distill.seq_kd import prompts_of, teacher_sequences

    c = tiny_cfg(tiny, seq_kd={"decoding": "greedy", "max_new_tokens": 6, "batch_size": 4})
    res = distill(c)
    info = res.report["seq_kd"]
    root = Path(info["dir"])
    assert root.parent == res.output_dir / "seq_kd" and info["generated"] == 18 and info["reused"] == 0  # 24 - 6 held out
    assert (res.output_dir / "report.json").is_file() and res.report["eval"]["student"]["ppl"] > 1
    got = answers(root)
    assert sorted(got) == list(range(18))
    # each cached answer is the teacher's own greedy continuation of that prompt, run alone (no padding)
    p = prepare(c, need_student=False)
    prompts = prompts_of(p.train, 32)
    assert prompts[0] == p.train.seqs[0][: p.train.n_prompt[0]]
    for i in (0, 5, 17):
        out = p.teacher.generate(input_ids=torch.tensor([prompts[i]]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=[1], pad_token_id=p.pad_id)[0, len(prompts[i]):].tolist()
        want = out[: out.index(1) + 1] if 1 in out else out
        assert got[i] == want
    # training runs on prompt + teacher answer, the loss on the answer
    data, _ = teacher_sequences(c, p)
    assert data.seqs[5] == (prompts[5] + got[5])[:24] and data.n_prompt[5] == len(prompts[5])
    # a second run reuses every answer
    again = distill(c)
    assert again.report["seq_kd"]["generated"] == 0 and again.report["seq_kd"]["reused"] == 18
    # an interrupted build (the last batch torn mid-line) keeps the finished batches and redoes the rest
    lines = (root / "answers.jsonl").read_text().splitlines()
    (root / "answers.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:7])
    resumed = distill(c)
    assert resumed.report["seq_kd"]["generated"] == 2  # 18 = 4 x 4 + 2: the last batch holds 2
    assert answers(root) == got
    # other generation settings never reuse these answers
    other = distill(tiny_cfg(tiny, seq_kd={"decoding": "greedy", "max_new_tokens": 4, "batch_size": 4}))
    assert other.report["seq_kd"]["key"] != info["key"] and other.report["seq_kd"]["generated"] == 18


def test_seq_kd_sampling_is_resumable_and_word_kd_adds_the_kd_term(tiny):
    from curate.distill import distill

    c = tiny_cfg(tiny, seq_kd={"decoding": "sample", "max_new_tokens": 6, "batch_size": 8},
                 loss={"name": "forward_kl", "alpha": 0.5})
    res = distill(c)
    root = Path(res.report["seq_kd"]["dir"])
    first = answers(root)
    recs = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kd"] > 0 and r["ce"] > 0 for r in recs)  # Seq-KD + Word-KD
    (root / "answers.jsonl").write_text("".join(json.dumps({"b": 0, "i": i, "gen": first[i]}) + "\n" for i in range(8)))
    assert distill(c).report["seq_kd"]["generated"] == 10
    assert answers(root) == first  # each sampled batch has its own seed
    beam = distill(tiny_cfg(tiny, seq_kd={"decoding": "beam", "num_beams": 3, "max_new_tokens": 6}))
    assert beam.report["seq_kd"]["key"] != res.report["seq_kd"]["key"] and beam.report["seq_kd"]["examples"] == 18
