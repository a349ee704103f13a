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
    start_method: Literal["auto", "forkserver", "spawn"] = Field(
        "auto", description="local: how worker processes start (curate.core.pool). 'forkserver': forks of one "
        "server that has imported polars, numpy and curate once (Linux); 'spawn': each worker a fresh "
        "interpreter; 'auto' (default): $CURATE_START_METHOD if set, else forkserver on Linux, spawn elsewhere")
    address: str | None = Field(None, description="ray: cluster address ('auto' to join one)")
    mode: Literal["data", "actors"] = Field(
        "data", description="ray: 'data' runs each segment of map/filter steps as a Ray Data map_batches "
        "(operators that load a model in an actor pool); 'actors' runs the local executor's shard tasks in "
        "Ray actors. Both give the local executor's output, rejects and stats; default 'data'")


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


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of ``loc`` (walking fields, Optional and lists)."""
    import typing

    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        todo, found = [field.annotation], None
        while todo and found is None:
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                found = t
            else:
                todo.extend(typing.get_args(t))
        if found is None:
            return None
        model = found
    return model


def did_you_mean(key: str, choices: list[str] | tuple[str, ...] | Any) -> str:
    """' (did you mean a, b?)' for close names, else ' (known keys: ...)'; as for operator names."""
    import difflib

    choices = list(choices)
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.6)
    if close:
        return f" (did you mean {', '.join(close)}?)"
    return f" (known keys: {', '.join(choices)})" if choices else ""


def describe_error(model: type[BaseModel], err: Any) -> str:
    """pydantic's message for one error, with a "did you mean" for unknown keys."""
    loc = tuple(err["loc"])
    if err.get("type") == "extra_forbidden" and loc and isinstance(loc[-1], str):
        holder = _model_at(model, loc[:-1])
        if holder is not None:
            return f"unknown key '{loc[-1]}'" + did_you_mean(loc[-1], holder.model_fields)
    return str(err["msg"])


def _fmt_loc(loc: tuple) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


#: most YAML nodes a document may expand to once aliases are followed. A pipeline is a few hundred
#: nodes; a 422-byte "billion laughs" document expands to ~10^9 (45 s and 3.3 GB before this bound).
MAX_EXPANDED_NODES = 100_000
#: most alias references (``*name``) in one document; real configs use a handful.
MAX_ALIASES = 1_000


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that bounds alias expansion while composing (before anything is expanded) and
    refuses duplicate mapping keys (PyYAML keeps the last silently, e.g. a second ``steps:``)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to, aliases followed
        self._aliases = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"line {mark.line + 1}: more than {MAX_ALIASES} YAML aliases (*name); "
                                  "refusing to expand them")
        node = super().compose_node(parent, index)
        if id(node) not in self._sizes:
            if isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes.get(id(v), 1) for v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        size = self._sizes[id(node)]
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and size > MAX_EXPANDED_NODES:
            raise ConfigError(f"line {node.start_mark.line + 1}: YAML aliases expand this value to {size:,} "
                              f"nodes (more than {MAX_EXPANDED_NODES:,}); refusing to expand it "
                              "(an alias bomb?)")
        return node

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, _ in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding a key is what merge keys are for
                key = self.construct_object(k, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable keys fail in PyYAML's own check below
                line = k.start_mark.line + 1
                if first is not None:
                    raise ConfigError(f"line {line}: duplicate key '{key}' (first at line {first}); "
                                      "YAML would silently keep only the last one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML like ``yaml.safe_load``, with bounded aliases and no duplicate keys; returns
    (data, the composed node tree for line numbers). Raises ConfigError / yaml.YAMLError."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


def load_yaml(path: str | Path, what: str = "pipeline file",
              top_level: str = "input, steps and output") -> tuple[dict[str, Any], dict[tuple, int]]:
    """Safe-load a YAML mapping and index the line of every key (for errors that name their line).

    Every YAML file curate reads goes through here (pipelines, distill configs): aliases are bounded
    (:data:`MAX_EXPANDED_NODES`) and duplicate keys are errors naming both lines.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: '{p}'")
    text = p.read_text(encoding="utf-8")
    try:
        data, node = safe_load(text)
    except ConfigError as e:
        raise ConfigError([f"{p} {m}" for m in e.problems]) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping with {top_level}")
    return data, (_line_index(node) if node is not None else {})


def code_imports(ops: list) -> list[tuple[int, str, str, str]]:
    """Operator parameters that name Python code to import and call (``package.module:function``, e.g.
    ``shapley``'s ``utility``): [(step index, operator name, parameter, reference)]. A parameter is such
    a reference when its field carries ``json_schema_extra={"imports_code": True}``."""
    found = []
    for i, op in enumerate(ops):
        for pname, field in type(op.params).model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get("imports_code"):
                value = getattr(op.params, pname)
                if isinstance(value, str) and ":" in value:
                    found.append((i, op.name, pname, value))
    return found


ALLOW_CODE_HINT = "pass --allow-code to `curate run` / `curate validate` (Python: allow_code=True) to allow it"


def parse_config(data: dict[str, Any], lines: dict[tuple, int] | None = None, source: str = "pipeline", *,
                 allow_code: bool = False):
    """Validate a config dict; returns (PipelineConfig, [Operator]). Raises one ConfigError listing all problems.

    A pipeline file never makes curate import Python code unless ``allow_code`` (the user who runs it
    opts in with ``--allow-code``; the file itself cannot): see :func:`code_imports`.
    """
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
            problems.append(f"{source} {_where(loc, lines)}: {_fmt_loc(loc)}: {describe_error(PipelineConfig, err)}")
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
                                f"{describe_error(cls.Params, err)}")
        except CurateError as e:
            problems.append(f"{source} {_where(loc, lines)}: steps[{i}].{name}: {e}")
    if not allow_code:
        for i, name, pname, ref in code_imports(ops):
            where = _where(("steps", i, name, pname), lines)
            problems.append(f"{source} {where}: steps[{i}].{name}.{pname}: '{ref}' would import and run Python "
                            f"code named in this file; {ALLOW_CODE_HINT}")
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
