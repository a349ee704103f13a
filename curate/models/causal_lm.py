"""Load transformers causal LMs for every area: a folder, a hub id, a ``pkg:`` path, a GGUF file (through a
disk cache of dequantised models), or a randomly initialised model from a config; and check that a teacher
and a student share a vocabulary.

One entry point, :func:`load_causal_lm`, as TRL's ``create_model_from_path`` settles dtype and device before
loading. It takes a path or a *spec*: any object with the attributes ``path``, ``gguf_file``,
``from_config``, ``tokenizer`` and ``dtype`` (:class:`LMSpec` here, ``curate.distill.config.ModelSpec``).

GGUF: transformers dequantizes a GGUF file on every load (about 25 s for SmolLM2-135M on 2 CPU cores) and
refuses to ``save_pretrained`` the result, so the first load copies the state dict into a plain model built
from the same config and saves that, with the tokenizer, as safetensors under
``<cache_dir>/<file stem>-<sha256 prefix>/`` (logits are identical). Later loads, by any caller (selectors,
synth teachers, distillation), read that folder.

Vocabulary contract (logit KD): different tokenizers are an error naming both vocabularies (cross-tokenizer
KD, ``curate.distill.xtok``, does not call it); the same
tokenizer with padded embedding matrices of different sizes (Qwen2.5 151936 vs 152064) is handled by
slicing logits to the shared vocabulary (never zero-padding), see :func:`shared_vocab`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.core.errors import ConfigError
from curate.models.device import resolve_device, resolve_dtype
from curate.models.packaged import resolve_model_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("CURATE_CACHE_DIR", Path.home() / ".cache" / "curate")) / "models"

#: label id ignored by the losses and metrics (PyTorch ``cross_entropy``'s and transformers' convention)
IGNORE = -100


@dataclass(frozen=True)
class LMSpec:
    """A causal LM to load: ``path`` (folder, hub id or ``pkg:<package>``; with ``gguf_file`` inside it),
    or ``from_config`` (config fields with ``model_type``, or ``base: teacher`` to start from a given
    ``base_config``); ``tokenizer`` overrides the model's own; ``dtype`` a name or ``auto``."""

    path: str | None = None
    gguf_file: str | None = None
    from_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    dtype: str = "auto"


def _file_digest(path: Path) -> str:
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 prefix of a file, computed once per (path, size, mtime) in a process (GGUF files are ~100 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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


def _split_gguf(path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder, gguf file name): ``path`` may be the ``.gguf`` file itself."""
    path = resolve_model_path(path)
    if path.endswith(".gguf") and Path(path).is_file():
        if gguf_file is not None and gguf_file != Path(path).name:
            raise ValueError(f"gguf_file={gguf_file!r} conflicts with the file path {path}")
        return str(Path(path).parent), Path(path).name
    return path, gguf_file


def plain_folder(path: str | Path, gguf_file: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The folder/hub id transformers should load: ``pkg:`` resolved, GGUF converted once through the cache."""
    folder, gguf = _split_gguf(str(path), gguf_file)
    if gguf is not None:
        if not (Path(folder) / gguf).is_file():
            raise FileNotFoundError(f"GGUF file {Path(folder) / gguf} does not exist")
        return str(gguf_to_plain(folder, gguf, cache_dir))
    return folder


def _is_spec(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("path", "gguf_file", "from_config", "tokenizer", "dtype"))


def load_causal_lm(spec_or_path: Any, *, gguf_file: str | None = None, device: str = "auto", dtype: Any = "auto",
                   cache_dir: str | Path | None = None, tokenizer: Any = None, base_config: Any = None,
                   private: bool = False) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for a path or a spec (see the module docstring).

    * A path (folder, hub id, ``pkg:...``, ``.gguf`` file, or folder + ``gguf_file``) loads in eval mode on
      ``device`` in ``dtype`` ('auto': bf16/fp16 on CUDA, fp32 on CPU) and is memoised per process (workers
      load once; do not modify it in place) unless ``private``, which loads a copy the caller owns.
    * A spec always gives a private model (students are trained, LoRA edits modules): ``path`` specs load as
      above, ``from_config`` specs are built randomly initialised (seed torch first) and left in train mode.
      The spec's ``dtype`` wins over ``dtype`` unless it is 'auto'; ``tokenizer`` (an object) is the
      tokenizer of a ``from_config`` model without ``spec.tokenizer``; ``base_config`` is the config that
      ``base: teacher`` starts from.

    A model that cannot be loaded is a ConfigError naming the path.
    """
    dev = resolve_device(device)
    if _is_spec(spec_or_path):
        spec = spec_or_path
        dt = spec.dtype if spec.dtype not in (None, "auto") else dtype
        if spec.from_config is not None:
            model, tok = _from_config(spec, base_config, tokenizer, dev, dt)
            return model, tok, dev
        model, tok = _load_uncached(plain_folder(spec.path, spec.gguf_file, cache_dir), dev, dt, spec.path,
                                    spec.gguf_file)
        if spec.tokenizer:
            tok = _tokenizer(spec.tokenizer)
        return model, tok, dev
    folder = plain_folder(str(spec_or_path), gguf_file, cache_dir)
    if private or not isinstance(dtype, str):
        model, tok = _load_uncached(folder, dev, dtype, str(spec_or_path), gguf_file)
    else:
        model, tok = _load(folder, dev, dtype)
    if tokenizer is not None:
        tok = _tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    return model, tok, dev


def _tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    p = resolve_model_path(str(path))
    return AutoTokenizer.from_pretrained(p, local_files_only=os.path.isdir(p))


def _load_uncached(folder: str, dev: str, dtype: Any, shown: str, gguf_file: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = os.path.isdir(folder)
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=local)
        td = resolve_dtype(dtype, dev)
        kw: dict[str, Any] = {} if td is None else {"dtype": td}  # None: the checkpoint's own dtype
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=local, **kw)
    except OSError as e:
        raise ConfigError(f"cannot load model from '{shown}'"
                          f"{' (gguf_file ' + gguf_file + ')' if gguf_file else ''}: {e}") from None
    return model.to(dev), tok


@functools.lru_cache(maxsize=4)
def _load(folder: str, dev: str, dtype: str) -> tuple[Any, Any]:
    model, tok = _load_uncached(folder, dev, dtype, folder, None)
    return model.eval(), tok


def _from_config(spec: Any, base_config: Any, tokenizer: Any, dev: str, dtype: Any) -> tuple[Any, Any]:
    """A randomly initialised model; ``base: teacher`` copies ``base_config`` and overrides the given fields
    (``head_dim`` is re-derived when the width or head count changes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(spec.from_config or {})
    base = fields.pop("base", None)
    if base == "teacher":
        if base_config is None:
            raise ConfigError("from_config base: teacher needs a teacher model")
        d = base_config.to_dict()
        if ("hidden_size" in fields or "num_attention_heads" in fields) and "head_dim" not in fields:
            d.pop("head_dim", None)
        for k in ("_name_or_path", "architectures", "quantization_config", "torch_dtype", "dtype"):
            d.pop(k, None)
        d.update(fields)
        cfg = type(base_config).from_dict(d)
    elif base is not None:
        raise ConfigError(f"from_config base: '{base}' is not supported (only 'teacher')")
    else:
        if "model_type" not in fields:
            raise ConfigError("from_config needs `model_type` (e.g. llama, gpt2) or `base: teacher`")
        cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(cfg)
    td = resolve_dtype(dtype, dev)
    model = model.to(device=dev) if td is None else model.to(device=dev, dtype=td)
    if spec.tokenizer:
        tokenizer = _tokenizer(spec.tokenizer)
    return model, tokenizer


# ------------------------------------------------------------------------------------------ vocabulary
def vocab_rows(model: Any) -> int:
    """Rows of the output embedding (the logits' last dimension)."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def shared_vocab(teacher_tok: Any, student_tok: Any, teacher_rows: int, student_rows: int,
                 *, override: int | None = None) -> int:
    """The number of logit ids both models share; raises when the tokenizers differ.

    Same tokenizer (identical token->id maps) with different logit widths -> slice to the smaller
    width, provided every real token id fits; ``override`` forces a width (<= both).
    """
    if teacher_tok is not None and student_tok is not None and teacher_tok is not student_tok:
        tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
        if tv != sv:
            only_t = len(set(tv.items()) - set(sv.items()))
            raise ConfigError(
                f"teacher and student tokenizers differ: teacher vocabulary {len(tv)} tokens "
                f"(logits {teacher_rows}), student vocabulary {len(sv)} tokens (logits {student_rows}); "
                f"{only_t} token->id pairs of the teacher are not in the student. Logit distillation needs "
                "the same tokenizer; for different tokenizers use cross-tokenizer KD (loss.name: uld with a "
                "cross_tokenizer section, curate.distill.xtok)")
    n_tok = len(teacher_tok) if teacher_tok is not None else min(teacher_rows, student_rows)
    v = override if override is not None else min(teacher_rows, student_rows)
    if v > min(teacher_rows, student_rows):
        raise ConfigError(f"shared_vocab {v} exceeds a model's logits (teacher {teacher_rows}, student {student_rows})")
    if n_tok > v:
        raise ConfigError(
            f"vocabulary mismatch: the tokenizer has {n_tok} tokens but the logits are sliced to {v} "
            f"(teacher logits {teacher_rows}, student logits {student_rows}); the student's embedding must "
            "cover the tokenizer")
    if teacher_rows != student_rows:
        log.info("teacher logits %d vs student logits %d: slicing both to the shared %d ids",
                 teacher_rows, student_rows, v)
    return v


def lm_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder returning last hidden states, output head) when logits == head(hidden) exactly,
    else None (models with logit soft-capping or scaling go through the full forward)."""
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        v = getattr(cfg, attr, None)
        if v not in (None, 1, 1.0):
            return None
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None or getattr(head, "bias", None) is not None:
        return None
    return base, head


def hidden_states(base: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The decoder's last hidden states ``[B, T, H]`` (no KV cache)."""
    return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
