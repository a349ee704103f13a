"""teacher_student selector (issue 17 item 2): teacher-student KL and student NLL equal a dense float64
computation with tiny real models (exactly at k = V, a lower bound below), the cache path gives the same
scores without a teacher forward, KPOD difficulty equals its loop definition, and as a pipeline step it
keeps the right rows."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate import Pipeline, read, read_output, write  # noqa: E402
from curate.selectors.teacher_signal import tokenize_pairs  # noqa: E402
from curate.selectors.teacher_student import TeacherStudentSelector  # noqa: E402

TMPL = "{prompt} {response}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny teacher of the distill tests and a smaller, differently seeded student (same tokenizer)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    root = make_tiny_teacher(tmp_path_factory.mktemp("ts"), examples=8, max_response=10)
    torch.manual_seed(5)
    s = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, eos_token_id=1, pad_token_id=2))
    s.save_pretrained(root / "student")
    AutoTokenizer.from_pretrained(root / "teacher").save_pretrained(root / "student")
    rows = [json.loads(x) for x in (root / "train.jsonl").read_text().splitlines()]
    pl.DataFrame({"id": [str(i) for i in range(len(rows))], "instruction": [r["q"] for r in rows],
                  "text": [r["a"] for r in rows]}).write_ndjson(root / "docs.jsonl")
    return root, rows


def _dense_reference(root, rows, step_ends=None):
    """Per document, in float64 loops over the scored positions: mean KL(p_T || p_S), mean student NLL, and
    (with ``step_ends``) KPOD's mean step difficulty = mean over steps of the summed teacher NLL."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "teacher")
    t = AutoModelForCausalLM.from_pretrained(root / "teacher").double().eval()
    s = AutoModelForCausalLM.from_pretrained(root / "student").double().eval()
    seqs, n_prompt = tokenize_pairs(tok, [r["q"] for r in rows], [r["a"] for r in rows], template=TMPL, max_len=128)
    kl, nll, kpod = [], [], []
    for seq, n_p in zip(seqs, n_prompt, strict=True):
        with torch.no_grad():
            pt = torch.softmax(t(input_ids=torch.tensor([seq])).logits[0], -1).numpy()
            ps = torch.softmax(s(input_ids=torch.tensor([seq])).logits[0], -1).numpy()
        ks, ns, steps, cur, open_step = [], [], [], 0.0, False
        for j in range(max(1, n_p), len(seq)):
            p, q = pt[j - 1], ps[j - 1]
            ks.append(sum(p[v] * math.log(p[v] / q[v]) for v in range(len(p))))
            ns.append(-math.log(q[seq[j]]))
            cur, open_step = cur - math.log(p[seq[j]]), True
            if step_ends is not None and tok.decode([seq[j]]) in step_ends:  # this token closes its step
                steps.append(cur)
                cur, open_step = 0.0, False
        if open_step:
            steps.append(cur)
        kl.append(float(np.mean(ks)))
        nll.append(float(np.mean(ns)))
        kpod.append(float(np.mean(steps)))
    return kl, nll, kpod, seqs


def _run(root, tmp, **kw):
    kw = dict(model=str(root / "teacher"), prompt_field="instruction", template=TMPL, k=32) | kw
    sel = TeacherStudentSelector(**kw)
    Pipeline(read(str(root / "docs.jsonl")), sel, write(str(tmp / "out"))).run(work_dir=str(tmp / "wd"), workers=1,
                                                                              progress=False)
    out = read_output(tmp / "out")
    return sel, dict(zip(out["id"].to_list(), out["teacher_student"].to_list(), strict=True))


def test_kl_and_student_nll_match_dense_float64(models, tmp_path):
    root, rows = models
    kl, nll, _, _ = _dense_reference(root, rows)
    _, got = _run(root, tmp_path / "a", student=str(root / "student"), signal="teacher_student_kl")
    assert len(got) == len(rows)  # no selection mode: every row kept, scored
    for i in range(len(rows)):
        assert got[str(i)] == pytest.approx(kl[i], rel=1e-4)
    _, got = _run(root, tmp_path / "b", student=str(root / "student"), signal="student_nll")
    for i in range(len(rows)):
        assert got[str(i)] == pytest.approx(nll[i], rel=1e-4)


def test_pipeline_keeps_the_highest_kl_and_cache_gives_the_same(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from curate.distill.cache import build_teacher_cache
    from curate.models.teacher import LocalHFTeacher

    root, rows = models
    kl, _, _, seqs = _dense_reference(root, rows)
    _, got = _run(root, tmp_path / "a", student=str(root / "student"), top_k=3)
    best = sorted(range(len(rows)), key=lambda i: -kl[i])[:3]
    assert sorted(got) == sorted(str(i) for i in best)
    rej = pl.concat([pl.read_ndjson(p) for p in (tmp_path / "a" / "wd" / "rejects").rglob("*.jsonl")])
    assert sorted(rej["id"].to_list() + list(got)) == sorted(str(i) for i in range(len(rows)))  # in = kept + rejected
    assert set(rej["reason"]) == {"not_selected"}
    # the same scores from a k = V cache (no teacher forward for the cached rows)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    build_teacher_cache(LocalHFTeacher(teacher, device="cpu", name="tiny"), [seqs], tmp_path / "cache", k=32)
    sel, got2 = _run(root, tmp_path / "b", student=str(root / "student"), top_k=3, cache_dir=str(tmp_path / "cache"))
    assert sel.cache_hits == len(rows)
    assert sorted(got2) == sorted(got)
    for i in got:
        assert got2[i] == pytest.approx(got[i], rel=1e-5)


def test_bucket_kl_is_dense_kl_at_k_eq_v_and_a_lower_bound_below():
    from curate.models.teacher_student import bucket_kl
    from curate.models.topk import TopK

    g = torch.Generator().manual_seed(0)
    t = torch.randn(20, 9, generator=g, dtype=torch.float64) * 2
    s = torch.randn(20, 9, generator=g, dtype=torch.float64)
    ls = torch.log_softmax(s, -1)
    for k in (9, 3):
        got = bucket_kl(ls, TopK.from_logits(t, k))
        for i in range(20):
            p, q = torch.softmax(t[i], -1).tolist(), ls[i].exp().tolist()
            ids = sorted(range(9), key=lambda v: -p[v])[:k]
            rest_p, rest_q = 1 - sum(p[v] for v in ids), 1 - sum(q[v] for v in ids)
            want = sum(p[v] * math.log(p[v] / q[v]) for v in ids) + (rest_p * math.log(rest_p / rest_q) if k < 9 else 0)
            dense = sum(p[v] * math.log(p[v] / q[v]) for v in range(9))
            assert float(got[i]) == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert float(got[i]) <= dense + 1e-12


def test_kpod_difficulty_selector_matches_loops_and_keeps_the_easiest(models, tmp_path):
    root, rows = models
    ends = {f"w{i}" for i in range(6)}
    _, _, kpod, _ = _dense_reference(root, rows, step_ends=ends)
    _, got = _run(root, tmp_path / "a", signal="kpod_difficulty", step_pattern="^w[0-5]$")
    for i in range(len(rows)):
        assert got[str(i)] == pytest.approx(kpod[i], rel=1e-4)
    _, kept = _run(root, tmp_path / "b", signal="kpod_difficulty", step_pattern="^w[0-5]$", top_k=2)
    assert sorted(kept) == sorted(str(i) for i in sorted(range(len(rows)), key=lambda i: kpod[i])[:2])


def test_student_signals_need_a_student():
    with pytest.raises(ValueError, match="needs `student`"):
        TeacherStudentSelector(model="x", signal="student_nll")
