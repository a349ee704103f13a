"""curate: streaming data curation for LLM training sets, and a knowledge-distillation student trainer."""

from curate._version import __version__ as __version__  # set in one place: curate/_version.py
from curate.core.errors import ConfigError, CurateError, InputError, MissingDependencyError
from curate.core.operator import Filter, FitContext, GlobalStage, Mapper, OpParams, Rule, RunContext
from curate.core.pipeline import Pipeline
from curate.core.registry import all_operators, get_operator, register
from curate.io.readers import read, read_jsonl, read_parquet, read_text
from curate.io.writers import RejectsSpec, read_output, write, write_jsonl, write_parquet

__all__ = [
    "ConfigError", "CurateError", "FitContext", "Filter", "GlobalStage", "InputError", "Mapper",
    "MissingDependencyError", "OpParams", "Pipeline", "RejectsSpec", "Rule", "RunContext", "all_operators",
    "get_operator", "read", "read_jsonl", "read_output", "read_parquet", "read_text", "register", "write",
    "write_jsonl", "write_parquet",
]
