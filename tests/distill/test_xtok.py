"""Cross-tokenizer KD (curate.distill.xtok): the ULD loss against a float64 reference written from the paper's
formula, GOLD's span alignment on hand-made and real tokenisations, and a char-level student distilled from a
BPE-tokenised teacher end to end through ``distill(cfg)``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from curate.core.errors import ConfigError  # noqa: E402
from curate.distill.config import DataSpec, DistillConfig  # noqa: E402
from curate.distill.xtok import (  # noqa: E402
    CrossTargets,
    ULDLoss,
    align_position,
    align_spans,
    example_groups,
    tokenize_pairs,
)
from tests.conftest import shared_file  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/distill/conftest.py


# ------------------------------------------------------------------------------------------ reference
def ref_uld(s_logits, t_logits, s_labels, t_labels, groups, temperature):
    """Per-group ULD in float64 with plain loops: merged probabilities (first position's distribution times the
    probabilities of the group's later actual tokens), each sorted decreasingly, zero-padded, L1."""
    def merged(logits, labels, rows):
        p = torch.softmax(logits.double() / temperature, dim=-1)
        out = p[rows[0]].clone()
        for r in rows[1:]:
            out = out * p[r, labels[r]]
        return out

    vals = []
    for sg, tg in groups:
        ps = sorted(merged(s_logits, s_labels, sg).unbind(), key=lambda v: float(v.detach()), reverse=True)
        pt = sorted(merged(t_logits, t_labels, tg).unbind(), key=lambda v: float(v.detach()), reverse=True)
        n = max(len(ps), len(pt))
        zero = torch.zeros((), dtype=torch.float64)
        ps, pt = ps + [zero] * (n - len(ps)), pt + [zero] * (n - len(pt))
        vals.append(sum((a - b).abs() for a, b in zip(ps, pt, strict=True)))
    return vals


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_s, n_t, v_s, v_t = 9, 7, 11, 17
    s_lo = torch.randn(n_s, v_s, generator=g) * 2
    t_lo = torch.randn(n_t, v_t, generator=g) * 2
    s_lab = torch.randint(0, v_s, (n_s,), generator=g)
    t_lab = torch.randint(0, v_t, (n_t,), generator=g)
    # singletons, a 2-row student group, a 3-row teacher group, a 3-row student group across rows 4..6
    groups = [([0], [0]), ([1, 2], [1]), ([3], [2, 3, 4]), ([4, 5, 6], [5]), ([7], [6])]
    return s_lo, t_lo, s_lab, t_lab, groups


@pytest.mark.parametrize(("alpha", "temperature"), [(0.0, 1.0), (0.4, 2.0)])
def test_uld_loss_and_gradient_match_float64_reference(alpha, temperature):
    s_lo, t_lo, s_lab, t_lab, groups = _case()
    t_logp = torch.log_softmax(t_lo / temperature, dim=-1)
    x = s_lo.clone().requires_grad_(True)
    per, comp = ULDLoss(alpha=alpha, temperature=temperature)(x, CrossTargets(t_logp, t_lab, groups).chunk(0, 9), s_lab)
    xr = s_lo.double().requires_grad_(True)
    ref = ref_uld(xr, t_lo, s_lab, t_lab, groups, temperature)
    ce = torch.nn.functional.cross_entropy(xr, s_lab, reduction="none")
    ref_per = torch.zeros(9, dtype=torch.float64)
    for (sg, _), v in zip(groups, ref, strict=True):
        ref_per[sg[-1]] = ref_per[sg[-1]] + (1 - alpha) * v  # each group's ULD at its last student row
    ref_per = ref_per + alpha * ce
    assert per.detach().double().numpy() == pytest.approx(ref_per.detach().numpy(), abs=1e-5)
    assert float(comp["kd"]) == pytest.approx(float(sum(ref).detach()), abs=1e-5)
    per.sum().backward()
    ref_per.sum().backward()
    assert x.grad.double().numpy() == pytest.approx(xr.grad.numpy(), abs=1e-5)
    assert float(per[8].detach()) == pytest.approx(alpha * float(ce[8].detach()), abs=1e-5)  # row 8 is in no group


def test_uld_value_is_the_same_when_a_chunk_boundary_cuts_a_group():
    s_lo, t_lo, s_lab, t_lab, groups = _case(1)
    t_logp = torch.log_softmax(t_lo, dim=-1)
    loss = ULDLoss(alpha=0.0, temperature=1.0)
    whole, _ = loss(s_lo, CrossTargets(t_logp, t_lab, groups).chunk(0, 9), s_lab)
    tg = CrossTargets(t_logp, t_lab, groups)
    parts = [loss(s_lo[a:e], tg.chunk(a, e), s_lab[a:e])[0] for a, e in ((0, 5), (5, 9))]  # cuts group rows 4..6
    assert torch.cat(parts).detach().numpy() == pytest.approx(whole.detach().numpy(), abs=1e-6)


def test_uld_of_identical_sorted_shapes_is_zero_and_padding_adds_the_tail():
    # a teacher that is the student's distribution permuted over a larger vocabulary (extra ids at 0 mass)
    p = torch.tensor([[0.5, 0.3, 0.2]])
    t = torch.log(torch.tensor([[1e-30, 0.2, 0.5, 1e-30, 0.3]]))
    per, _ = ULDLoss(alpha=0.0, temperature=1.0)(p.log(), CrossTargets(t, torch.tensor([0]), [([0], [0])]).chunk(0, 1),
                                                 torch.tensor([0]))
    assert float(per[0]) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ alignment
def test_span_alignment_on_a_hand_made_pair_of_tokenisations():
    # "the cat sat." as ["the", " cat", " sat", "."] and as ["th", "e", " c", "at", " sat."]
    a_ends, b_ends = [3, 7, 11, 12], [2, 3, 5, 7, 12]
    assert align_spans(a_ends, b_ends) == [([0], [0, 1]), ([1], [2, 3]), ([2, 3], [4])]
    assert align_spans(b_ends, a_ends) == [([0, 1], [0]), ([2, 3], [1]), ([4], [2, 3])]
    assert align_spans([3, 7, 9], [3, 8]) == [([0], [0])]  # a tail no common boundary closes is dropped
    # with an end-of-sequence token on both sides (zero width at the text's end): eos pairs with eos
    assert align_spans(a_ends + [12], b_ends + [12])[-1] == ([4], [5])


def test_example_groups_drop_unpredicted_tokens_and_eos_on_request():
    a_ends, b_ends = [3, 7, 11, 12, 12], [2, 3, 5, 7, 12, 12]  # both end with eos
    # plain text: token 0 of each side is never predicted, so the group holding it goes
    g = example_groups(a_ends, 0, b_ends, 0, alignment="spans", skip_eos=False, s_eos=True, t_eos=True)
    assert g == [([1], [2, 3]), ([2, 3], [4]), ([4], [5])]
    g = example_groups(a_ends, 0, b_ends, 0, alignment="spans", skip_eos=True, s_eos=True, t_eos=True)
    assert g == [([1], [2, 3]), ([2, 3], [4])]
    # a 1-token prompt on side a ("the"), 2 tokens on side b ("th", "e"): the response starts after them
    g = example_groups(a_ends, 1, b_ends, 2, alignment="spans", skip_eos=False, s_eos=True, t_eos=True)
    assert g == [([1], [2, 3]), ([2, 3], [4]), ([4], [5])]
    g = example_groups(a_ends, 1, b_ends, 2, alignment="position", skip_eos=False, s_eos=True, t_eos=True)
    assert g == align_position(1, 5, 2, 6) == [([1], [2]), ([2], [3]), ([3], [4]), ([4], [5])]


def _char_tok(text: str):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2} | {c: i + 3 for i, c in enumerate(sorted(set(text)))}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")),
                                   unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


def _bpe_tok(text: str, size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([text], trainers.BpeTrainer(vocab_size=size, special_tokens=["<unk>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return shared_file("books/tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]


def test_real_tokenisations_align_on_the_same_text(shakespeare):
    """On tinyshakespeare lines tokenised by a char tokenizer and a trained BPE, every span group covers the
    same characters on both sides, and the groups tile the predicted response."""
    import polars as pl

    s_tok, t_tok = _char_tok(shakespeare), _bpe_tok(shakespeare)
    paras = [p for p in shakespeare.split("\n\n") if len(p) > 40][:30]
    df = pl.DataFrame({"q": [p[:20] for p in paras], "a": [p[20:] for p in paras]})
    spec = DataSpec(train=["x"], prompt_field="q", response_field="a", template="{prompt}{response}", max_len=128)
    from curate.distill.config import CrossTokenizer

    d = tokenize_pairs(df, s_tok, t_tok, spec, CrossTokenizer())
    assert len(d) == len(paras) and all(n == 20 for n in d.n_prompt)  # char tokens: the prompt is 20 chars
    n_multi = 0
    for i in range(len(d)):
        g = example_groups(d.s_ends[i], d.n_prompt[i], d.t_ends[i], d.t_n_prompt[i], alignment="spans",
                           skip_eos=False, s_eos=d.seqs[i][-1] == 1, t_eos=d.t_seqs[i][-1] == 1)
        assert g, i
        for sg, tg in g:
            assert d.s_ends[i][sg[-1]] == d.t_ends[i][tg[-1]]  # the group closes on a common boundary
            assert d.s_ends[i][sg[0] - 1] <= d.t_ends[i][tg[0] - 1] or tg[0] == d.t_n_prompt[i]
            n_multi += len(sg) > 1
        flat = [j for sg, _ in g for j in sg]
        assert flat == list(range(flat[0], flat[-1] + 1))  # consecutive student tokens, none skipped
    assert n_multi > 100  # BPE tokens span several characters: the char student's groups merge rows


# ------------------------------------------------------------------------------------------ end to end
README = Path(__file__).resolve().parents[2] / "examples" / "distill" / "README.md"


def readme_snippet(key: str) -> dict:
    """The YAML block of examples/distill/README.md that has a top-level ``key``."""
    import re

    import yaml

    blocks = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", README.read_text(), re.S | re.M)]
    (block,) = [b for b in blocks if key in b]
    return block


def test_readme_snippet_is_a_valid_cross_tokenizer_config():
    cfg = DistillConfig.model_validate(readme_snippet("cross_tokenizer"))
    assert cfg.loss.name == "uld" and cfg.cross_tokenizer.alignment == "spans" and cfg.student.tokenizer


def _llama(vocab: int, hidden: int, layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        eos_token_id=1, pad_token_id=2, bos_token_id=1))


@pytest.fixture(scope="module")
def cross_setup(tmp_path_factory, shakespeare):
    """A BPE-tokenised teacher briefly trained on tinyshakespeare, a char tokenizer for the student, and
    prompt/response pairs of Shakespeare lines."""
    root = tmp_path_factory.mktemp("xtok")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the one_thread fixture (see tests/distill/conftest.py)
    t_tok, s_tok = _bpe_tok(shakespeare), _char_tok(shakespeare)
    teacher = _llama(len(t_tok), 48, 2, seed=0)
    ids = torch.tensor(t_tok(shakespeare[:40_000], add_special_tokens=False)["input_ids"])
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):  # about 5 s on one thread: a teacher far better than uniform
        starts = torch.randint(0, len(ids) - 65, (16,), generator=g)
        x = torch.stack([ids[s:s + 65] for s in starts])
        loss = teacher(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    teacher.save_pretrained(root / "teacher")
    t_tok.save_pretrained(root / "teacher")
    s_tok.save_pretrained(root / "student_tok")
    lines = [ln for ln in shakespeare.splitlines() if len(ln) > 25][:90]
    with open(root / "train.jsonl", "w") as f:
        for ln in lines:
            f.write(json.dumps({"q": ln[:12], "a": ln[12:]}) + "\n")
    return root, len(s_tok)


def _cfg(root: Path, n_chars: int, out: str, alignment: str, **kw) -> dict:
    snip = readme_snippet("cross_tokenizer")  # the README's loss and cross_tokenizer sections, as written
    return dict(teacher={"path": str(root / "teacher")},
                student={"from_config": {"model_type": "llama", "vocab_size": n_chars, "hidden_size": 32,
                                         "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                         "num_key_value_heads": 1, "eos_token_id": 1, "pad_token_id": 2,
                                         "bos_token_id": 1},
                         "tokenizer": str(root / "student_tok")},
                data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                      "template": "{prompt}{response}", "max_len": 96, "eval_fraction": 0.1},
                loss=snip["loss"], cross_tokenizer=snip["cross_tokenizer"] | {"alignment": alignment},
                optim={"lr": 3e-3, "batch_size": 8, "max_steps": 12, "schedule": "constant"},
                eval={"samples": 0}, output_dir=str(root / out), progress=False, plot=False, threads=1, **kw)


@pytest.mark.parametrize("alignment", ["spans", "position"])
def test_char_student_distills_from_a_bpe_teacher_end_to_end(cross_setup, alignment):
    from curate.distill.run import distill

    root, n_chars = cross_setup
    res = distill(_cfg(root, n_chars, f"run_{alignment}", alignment))
    out = res.output_dir
    rep = json.loads((out / "report.json").read_text())
    ev = rep["eval"]
    assert ev["aligned_groups"] > 0 and ev["student"]["eval_tokens"] > ev["teacher"]["eval_tokens"]
    assert 0 < ev["retention_char_ppl"] < 1  # a 12-step char student is worse than the teacher per character
    assert ev["teacher"]["nll_per_token"] < math.log(300) - 1  # the teacher learned (uniform over its 300 ids: ln 300)
    assert ev["teacher"]["nll_per_char"] < ev["student"]["nll_per_char"]
    assert "Cross-tokenizer KD (ULD)" in (out / "report.md").read_text()
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(s["kd"] for s in steps[-3:]) < sum(s["kd"] for s in steps[:3])  # ULD goes down while training
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(out / "student")) == n_chars  # exported with its own tokenizer


def test_different_tokenizers_without_cross_tokenizer_are_still_refused(cross_setup):
    from curate.distill.run import prepare

    root, n_chars = cross_setup
    cfg = _cfg(root, n_chars, "refused", "spans")
    cfg["loss"] = {"name": "forward_kl"}
    del cfg["cross_tokenizer"]
    with pytest.raises(ConfigError, match="tokenizers differ"):
        prepare(DistillConfig.model_validate(cfg))


def test_uld_and_the_cross_tokenizer_section_go_together():
    base = dict(teacher={"path": "t"}, student={"path": "s"}, data={"train": ["x"]}, output_dir="o")
    with pytest.raises(ValueError, match="go together"):
        DistillConfig.model_validate(base | {"loss": {"name": "uld"}})
    with pytest.raises(ValueError, match="go together"):
        DistillConfig.model_validate(base | {"cross_tokenizer": {}})
    with pytest.raises(ValueError, match="online"):
        DistillConfig.model_validate(base | {"loss": {"name": "uld"}, "cross_tokenizer": {},
                                             "teacher_signal": {"mode": "cache", "dir": "c"}})
    with pytest.raises(ValueError, match="ULD has none"):
        DistillConfig.model_validate(base | {"loss": {"name": "uld", "token_weighting": "teacher_entropy"},
                                             "cross_tokenizer": {}})
    with pytest.raises(ValueError, match="not available with `teachers`"):
        DistillConfig.model_validate(base | {"teachers": [{"path": "t"}, {"path": "u"}],
                                             "hidden_states": {"layers": [[1, 1]]}})


def test_a_truncated_student_cuts_the_teacher_to_the_same_text(shakespeare):
    import polars as pl

    from curate.distill.config import CrossTokenizer

    s_tok, t_tok = _char_tok(shakespeare), _bpe_tok(shakespeare)
    text = shakespeare[:300]
    spec = DataSpec(train=["x"], max_len=50)
    d = tokenize_pairs(pl.DataFrame({"text": [text, "ab"]}), s_tok, t_tok, spec, CrossTokenizer(teacher_max_len=8))
    assert len(d) == 1  # "ab" + eos is shorter than min_tokens: skipped (and counted in the log)
    assert len(d.seqs[0]) == 50 and d.seqs[0][-1] != s_tok.eos_token_id and d.s_ends[0][-1] == 50
    assert len(d.t_seqs[0]) == 8 and d.t_ends[0][-1] <= 50 and t_tok.eos_token_id not in d.t_seqs[0]
    whole = tokenize_pairs(pl.DataFrame({"text": [text[:40]]}), s_tok, t_tok, spec, CrossTokenizer())
    assert whole.seqs[0][-1] == s_tok.eos_token_id and whole.t_seqs[0][-1] == t_tok.eos_token_id
    assert whole.s_ends[0][-1] == whole.t_ends[0][-1] == 40  # both end-of-sequence tokens sit at the text's end
