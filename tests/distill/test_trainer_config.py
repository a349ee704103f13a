"""distill.yaml validation, model building from config, and the vocabulary contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.core.errors import ConfigError
from curate.distill.config import DistillConfig, resolve_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "distill"


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "d.jsonl").write_text('{"text": "hello world"}\n')
    p = tmp_path / "distill.yaml"
    p.write_text(text)
    return p


def test_yaml_loads_and_resolves_relative_paths(tmp_path):
    p = _write(tmp_path, "teacher: {path: t}\nstudent: {from_config: {base: teacher, num_hidden_layers: 2}}\n"
                         "data: {train: [d.jsonl]}\noutput_dir: out\nloss: {name: reverse_kl, temperature: 2}\n")
    cfg = DistillConfig.from_yaml(p)
    assert cfg.data.train == [str(tmp_path / "d.jsonl")]
    assert cfg.output_dir == str(tmp_path / "out") and cfg.teacher.path == str(tmp_path / "t")
    assert cfg.loss.name == "reverse_kl" and cfg.loss.temperature == 2
    assert DistillConfig.model_validate(__import__("yaml").safe_load(cfg.to_yaml())) == cfg


def test_yaml_errors_name_key_and_line(tmp_path):
    p = _write(tmp_path, "teacher: {path: t}\nstudent: {path: s, from_config: {a: 1}}\ndata: {train: [d.jsonl]}\n"
                         "output_dir: out\nloss:\n  name: kl_typo\n  alpha: 2\noptim: {lr: -1, bogus: 3}\n")
    with pytest.raises(ConfigError) as e:
        DistillConfig.from_yaml(p)
    msg = str(e.value)
    assert "line 6" in msg and "loss.name" in msg
    assert "loss.alpha" in msg and "line 7" in msg
    assert "optim.bogus" in msg and "optim.lr" in msg
    assert "exactly one of `path` or `from_config`" in msg
    assert len(e.value.problems) >= 5


def test_missing_data_file_and_bad_combinations(tmp_path):
    p = _write(tmp_path, "teacher: {path: t}\nstudent: {path: s}\ndata: {train: [nope.jsonl]}\noutput_dir: o\n")
    with pytest.raises(ConfigError, match="data file not found"):
        DistillConfig.from_yaml(p)
    base = dict(teacher={"path": "t"}, student={"path": "s"}, data={"train": ["x"]}, output_dir="o")
    with pytest.raises(ValueError, match="needs `dir`"):
        DistillConfig.model_validate(base | {"teacher_signal": {"mode": "cache"}})
    with pytest.raises(ValueError, match="prompt_field"):
        DistillConfig.model_validate(base | {"data": {"train": ["x"], "prompt_field": "q"}})
    with pytest.raises(ValueError, match="on_policy_fraction"):
        DistillConfig.model_validate(base | {"loss": {"name": "ce"}, "on_policy_fraction": 0.5})


def test_example_configs_validate():
    for f in sorted(EXAMPLES.glob("smollm2_*.yaml")):
        data = __import__("yaml").safe_load(f.read_text())
        cfg = DistillConfig.model_validate(data)
        # the student derives from the teacher: its config (base: teacher) or a pruned copy of its weights
        assert cfg.teacher.gguf_file and (cfg.student.from_teacher is not None
                                          or cfg.student.from_config["base"] == "teacher")


def test_pkg_path_resolution():
    assert Path(resolve_path("pkg:curate")).name == "curate"
    with pytest.raises(ConfigError, match="not installed"):
        resolve_path("pkg:no_such_package_xyz")


torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _tok(words: list[str]):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    t.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token=words[0], eos_token=words[1])


def test_student_from_teacher_config_keeps_vocab_and_rederives_head_dim():
    from transformers import LlamaConfig, LlamaForCausalLM

    from curate.distill.config import ModelSpec
    from curate.distill.models import lm_parts, load_model

    tcfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    teacher = LlamaForCausalLM(tcfg)
    spec = ModelSpec(from_config={"base": "teacher", "num_hidden_layers": 1, "hidden_size": 32,
                                  "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64})
    student, _ = load_model(spec, base_config=teacher.config)
    assert student.config.vocab_size == 100 and student.config.num_hidden_layers == 1
    assert student.config.head_dim == 16 and student.config.tie_word_embeddings
    out = student(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 100)
    base, head = lm_parts(student)
    h = base(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    assert torch.allclose(head(h), out, atol=1e-5)


def test_vocab_contract():
    from curate.distill.models import shared_vocab

    a = _tok(["<unk>", "</s>", "the", "cat", "sat"])
    b = _tok(["<unk>", "</s>", "the", "dog", "sat", "on"])
    with pytest.raises(ConfigError, match=r"teacher vocabulary 5 tokens.*student vocabulary 6 tokens"):
        shared_vocab(a, b, 5, 6)
    same = _tok(["<unk>", "</s>", "the", "cat", "sat"])
    assert shared_vocab(a, same, 8, 5) == 5  # padded teacher logits: slice to the shared 5
    with pytest.raises(ConfigError, match="tokenizer has 5 tokens"):
        shared_vocab(a, same, 8, 4)
