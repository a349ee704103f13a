"""The one small error hierarchy. The CLI prints these without a traceback unless ``--debug``."""

from __future__ import annotations

#: the distribution name on the package index: ``curate`` there is an unrelated project (CKAN
#: utilities), so curate is published as ``curate-llm``; ``import curate`` and the ``curate`` command stay.
DISTRIBUTION = "curate-llm"


def pip_hint(extra: str) -> str:
    """The install command for an extra: the distribution's name (never ``curate``, which installs the
    unrelated project), and the form for a source checkout."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (from a source checkout: pip install -e '.[{extra}]')"


class CurateError(Exception):
    """Base class of every error curate raises on purpose."""


class ConfigError(CurateError):
    """A pipeline definition is wrong: unknown operator, bad parameter, missing file.

    ``problems`` holds every problem found (each already names its YAML key and line), so a
    user fixes them all in one go.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


class InputError(CurateError):
    """Bad input data that cannot be skipped (or ``on_error: raise`` was asked for)."""


class MissingDependencyError(CurateError):
    """An operator needs an optional extra that is not installed."""

    def __init__(self, operator: str, module: str, extra: str):
        self.operator, self.module, self.extra = operator, module, extra
        super().__init__(
            f"operator '{operator}' needs the Python module '{module}', which is not installed; "
            f"install it with: {pip_hint(extra)}"
        )


class StepError(CurateError, ValueError):
    """An operator cannot go on: its data lacks a column, or a parameter does not fit the data.

    Names the step and the column or parameter at fault. Also a ``ValueError`` so code that caught the
    bare ``ValueError`` operators raised before keeps working.
    """

    def __init__(self, step: str, message: str, *, column: str | None = None, param: str | None = None):
        self.step, self.column, self.param = step, column, param
        where = f" (column '{column}')" if column else f" (parameter '{param}')" if param else ""
        super().__init__(f"step '{step}'{where}: {message}")


class PreflightError(ConfigError, InputError):
    """What a run would reject, found before any work (:mod:`curate.core.preflight`): config problems and
    input problems (a missing text field, a clashing field name) in one list. Both a ConfigError and an
    InputError, so code that caught the reader's InputError for a missing text field still catches it."""
