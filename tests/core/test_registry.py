"""The operator registry: extras named in errors."""

from __future__ import annotations

import pytest
from pipeline_corpus import EXAMPLE

from curate import Pipeline, read, write


def test_missing_extra_names_pip_command():
    from curate.core.operator import Filter
    from curate.core.registry import register

    @register("needs_missing_module_for_test")
    class NeedsMissing(Filter):
        requires = ("a_module_that_is_not_installed",)
        extra = "embed"

    with pytest.raises(Exception, match=r"pip install 'curate-llm\[embed\]'"):
        Pipeline(read(str(EXAMPLE)), NeedsMissing(), write("unused"))
