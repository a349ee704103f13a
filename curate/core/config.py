"""Pipeline YAML: safe loading, pydantic validation, and errors that name the key and its line.

Everything is checked before any work starts and every problem is reported at once: unknown keys and
operators, wrong parameter types, missing input files, missing optional extras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curate.core.errors import ConfigError, CurateError
from curate.io.readers import InputSpec
from curate.io.writers import OutputSpec, RejectsSpec


class ExecutorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, gt=0, description="worker processes; default: number of cores")
    address: str | None = Field(None, description="ray: cluster address ('auto' to join one)")


class PipelineConfig(BaseModel):
    """The schema of ``pipeline.yaml``."""

    model_config = ConfigDict(extra="forbid")

    input: InputSpec
    steps: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    output: OutputSpec
    rejects: RejectsSpec | None = None
    work_dir: str = ".curate/run"
    executor: ExecutorSpec = ExecutorSpec()
    seed: int = 0


def _line_index(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map every key path (as pydantic reports it) to its 1-based line in the YAML text."""
    out = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            out.update({p: ln for p, ln in _line_index(v, path + (key,)).items() if p != path + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_line_index(v, path + (i,)))
    return out


def _where(loc: tuple, lines: dict[tuple, int]) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"line {lines[loc[:n]]}"
    return "line ?"


def _fmt_loc(loc: tuple) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def load_yaml(path: str | Path, what: str = "pipeline file",
              top_level: str = "input, steps and output") -> tuple[dict[str, Any], dict[tuple, int]]:
    """Safe-load a YAML mapping and index the line of every key (for errors that name their line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: '{p}'")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping with {top_level}")
    return data, (_line_index(node) if node is not None else {})


def parse_config(data: dict[str, Any], lines: dict[tuple, int] | None = None, source: str = "pipeline"):
    """Validate a config dict; returns (PipelineConfig, [Operator]). Raises one ConfigError listing all problems."""
    from curate.core.registry import get_operator

    lines = lines or {}
    problems: list[str] = []
    cfg: PipelineConfig | None = None
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            if loc[:1] == ("steps",) and len(loc) > 2:
                continue  # step bodies are validated below, against each operator's Params
            problems.append(f"{source} {_where(loc, lines)}: {_fmt_loc(loc)}: {err['msg']}")
    ops = []
    for i, step in enumerate(data.get("steps") or []):
        loc: tuple = ("steps", i)
        if not isinstance(step, dict) or len(step) != 1:
            problems.append(f"{source} {_where(loc, lines)}: steps[{i}]: each step is a mapping with one key, "
                            "the operator name, e.g. '- gopher_quality: {min_doc_words: 50}'")
            continue
        (name, params), = step.items()
        loc = loc + (name,)
        try:
            cls = get_operator(name)
        except ConfigError as e:
            problems.append(f"{source} {_where(loc, lines)}: steps[{i}]: {e.problems[0]}")
            continue
        try:
            cls.check_dependencies()
        except CurateError as e:
            problems.append(f"{source} {_where(loc, lines)}: steps[{i}]: {e}")
        if params is not None and not isinstance(params, dict):
            problems.append(f"{source} {_where(loc, lines)}: steps[{i}].{name}: parameters must be a mapping")
            continue
        try:
            ops.append(cls(cls.Params.model_validate(params or {})))
        except ValidationError as e:
            for err in e.errors():
                ploc = loc + tuple(err["loc"])
                problems.append(f"{source} {_where(ploc, lines)}: steps[{i}].{name}.{_fmt_loc(tuple(err['loc']))}: "
                                f"{err['msg']}")
        except CurateError as e:
            problems.append(f"{source} {_where(loc, lines)}: steps[{i}].{name}: {e}")
    try:  # input files are checked even when other keys are wrong, so every problem shows at once
        InputSpec.model_validate(data.get("input")).files()
    except ConfigError as e:
        problems.append(f"{source} {_where(('input', 'path'), lines)}: {e.problems[0]}")
    except ValidationError:
        pass  # already reported above
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    return cfg, ops
