"""The pruned CPU student of ``examples/distill/smollm2_cpu.yaml`` trains in its teacher's own chat template.

The example used a plain ``Question: ... Answer: ...`` template; SmolLM2-135M-Instruct was tuned on its chat
template (system turn, user turn, assistant turn ended by ``<|im_end|>``), and under the plain template the
teacher itself answers in loops or not at all (greedy distinct-2 0.66 vs 0.93 in its chat template on the
same 8 curated Dolly prompts, measured here), so the student learned a degenerate target. ``data.template:
chat`` tokenises exactly what ``tokenizer.apply_chat_template`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def tiny_chat_teacher(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer random Llama with SmolLM2's real tokenizer and chat template, and 24 prompt/response pairs."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("chat_teacher")
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(str(root / "teacher"))
    tok.save_pretrained(str(root / "teacher"))
    words = "the cat sat on a mat and then it ran to see what was there in the house".split()
    g = torch.Generator().manual_seed(3)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(24):
            q = " ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=g))
            a = " ".join(words[int(i)] for i in torch.randint(0, len(words), (8,), generator=g))
            f.write(json.dumps({"q": q.capitalize() + "?", "a": a.capitalize() + "."}) + "\n")
    return root


def test_chat_template_tokenises_what_the_teachers_chat_template_writes(smollm2_dir):
    import polars as pl
    from transformers import AutoTokenizer

    from curate.distill.config import DataSpec
    from curate.distill.data import tokenize_records

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    rows = [("What is the capital of France?", "Paris is the capital of France."),
            ("Name three primary colours.", "Red, yellow and blue.\nThose three.")]
    df = pl.DataFrame({"instruction": [r[0] for r in rows], "response": [r[1] for r in rows]})
    spec = DataSpec(train=["x"], prompt_field="instruction", response_field="response", template="chat", max_len=256)
    data = tokenize_records(df, tok, spec)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end  # SmolLM2-Instruct: EOS is the end-of-turn token
    for (q, a), seq, n_p in zip(rows, data.seqs, data.n_prompt, strict=True):
        user = [{"role": "user", "content": q}]
        prompt_ids = list(tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)
                          ["input_ids"])
        full_ids = list(tok.apply_chat_template(user + [{"role": "assistant", "content": a}], tokenize=True,
                                                return_dict=True)["input_ids"])
        assert n_p == len(prompt_ids) and seq[:n_p] == prompt_ids
        # the template ends the turn with "<|im_end|>\n"; the sequence ends at the EOS the student must learn
        assert full_ids[-2] == im_end and seq == full_ids[:-1]
        assert tok.decode(seq[n_p:-1]) == a


def test_chat_template_is_a_valid_template_and_needs_a_chat_tokenizer(tmp_path):
    import polars as pl
    from transformers import AutoTokenizer

    from curate.core.errors import ConfigError
    from curate.distill.config import DataSpec
    from curate.distill.data import tokenize_records
    from tests.conftest import make_tiny_teacher

    DataSpec(train=["x"], prompt_field="q", response_field="a", template="chat")
    with pytest.raises(ValueError, match="prompt"):
        DataSpec(train=["x"], prompt_field="q", response_field="a", template="chatty {response}")
    make_tiny_teacher(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "teacher"))  # a word-level tokenizer, no chat template
    with pytest.raises(ConfigError, match="no chat template"):
        tokenize_records(pl.DataFrame({"q": ["w1"], "a": ["w2 w3"]}), tok,
                         DataSpec(train=["x"], prompt_field="q", response_field="a", template="chat"))


def test_distill_in_chat_template_end_to_end(tiny_chat_teacher, one_thread):
    from curate.distill import DistillConfig, distill

    root = tiny_chat_teacher
    cfg = DistillConfig.model_validate(dict(
        teacher={"path": str(root / "teacher")},
        student={"from_teacher": {"keep_layers": 2, "calibration_examples": 8}},
        data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a", "template": "chat",
              "max_len": 96, "eval_fraction": 0.25},
        teacher_signal={"mode": "online", "dtype": "bfloat16"}, loss={"alpha": 0.1},
        optim={"batch_size": 4, "max_steps": 3, "lr": 3e-4}, eval={"samples": 3, "sample_tokens": 5},
        output_dir=str(root / "run"), progress=False, plot=False, threads=1))
    res = distill(cfg)
    rows = [json.loads(x) for x in (res.output_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    # the held-out prompts are chat turns (special tokens are dropped when decoding): system, user, assistant
    assert all(r["prompt"].startswith("system\n") and r["prompt"].endswith("assistant") for r in rows)
    assert all(r["reference"].endswith(".") for r in rows)  # the response without the EOS
    ev = res.report["eval"]
    assert ev["student"]["ppl"] > 0 and 0 <= ev["top1_agreement"] <= 1
    assert (res.output_dir / "report.md").is_file()


def test_cpu_example_uses_the_chat_template_and_a_bf16_teacher():
    import yaml

    from curate.distill import DistillConfig

    # validated raw: from_yaml would also demand the curated data folder of step 1
    raw = yaml.safe_load((REPO / "examples" / "distill" / "smollm2_cpu.yaml").read_text())
    c = DistillConfig.model_validate(raw)
    assert c.data.template == "chat" and c.teacher_signal.dtype == "bfloat16"
    assert c.student.from_teacher is not None and c.student.from_teacher.keep_layers
