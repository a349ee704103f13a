"""curate: streaming data curation for LLM training sets, and a knowledge-distillation student trainer."""

from typing import Any

from curate._version import __version__ as __version__  # set in one place: curate/_version.py
from curate.core.errors import ConfigError, CurateError, InputError, MissingDependencyError

# The rest loads on first use (PEP 562): `import curate.distill` (a KD run, a cache build) then never pays
# for polars and the pipeline stack it does not use (~0.4 CPU s of a KD process's start-up).
_LAZY = {
    "Filter": "curate.core.operator", "FitContext": "curate.core.operator", "GlobalStage": "curate.core.operator",
    "Mapper": "curate.core.operator", "OpParams": "curate.core.operator", "Rule": "curate.core.operator",
    "RunContext": "curate.core.operator", "Pipeline": "curate.core.pipeline",
    "all_operators": "curate.core.registry", "get_operator": "curate.core.registry", "register": "curate.core.registry",
    "read": "curate.io.readers", "read_jsonl": "curate.io.readers", "read_parquet": "curate.io.readers",
    "read_text": "curate.io.readers", "RejectsSpec": "curate.io.writers", "read_output": "curate.io.writers",
    "write": "curate.io.writers", "write_jsonl": "curate.io.writers", "write_parquet": "curate.io.writers",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'curate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ConfigError", "CurateError", "FitContext", "Filter", "GlobalStage", "InputError", "Mapper",
    "MissingDependencyError", "OpParams", "Pipeline", "RejectsSpec", "Rule", "RunContext", "all_operators",
    "get_operator", "read", "read_jsonl", "read_output", "read_parquet", "read_text", "register", "write",
    "write_jsonl", "write_parquet",
]
