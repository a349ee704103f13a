"""The operator registry: extras named in errors, retired names resolving to their successor with a warning."""

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


def test_retired_name_resolves_to_successor_with_a_warning(tmp_path):
    import warnings

    import polars as pl

    from curate.core.operator import Filter, Rule
    from curate.core.registry import get_operator, register, retired_names

    @register("short_doc_filter_v2_for_test", retired={"short_doc_filter_for_test": "0.2"})
    class ShortDocs(Filter):
        """Drops documents under 3 characters (test operator)."""

        def score(self, batch: pl.DataFrame) -> pl.DataFrame:
            return batch.with_columns(pl.col("text").str.len_chars().alias("n_chars"))

        def rules(self) -> list[Rule]:
            return [Rule("too_short", "n_chars", "<", 3)]

    with pytest.warns(FutureWarning, match=r"'short_doc_filter_for_test' was retired in curate 0\.2: "
                                           r"use 'short_doc_filter_v2_for_test'"):
        assert get_operator("short_doc_filter_for_test") is ShortDocs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current name does not warn
        assert get_operator("short_doc_filter_v2_for_test") is ShortDocs
    assert retired_names()["short_doc_filter_for_test"] == ("short_doc_filter_v2_for_test", "0.2")

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "ok text"}\n{"id": "b", "text": "x"}\n')
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"input: {{path: '{src}'}}\nsteps:\n  - short_doc_filter_for_test: {{}}\n"
                   f"output: {{path: '{tmp_path / 'out'}'}}\nwork_dir: '{tmp_path / 'w'}'\n")
    with pytest.warns(FutureWarning, match="short_doc_filter_v2_for_test"):
        p = Pipeline.from_yaml(cfg)
    res = p.run(workers=1, progress=False)
    assert res.docs_out == 1 and [s.step for s in res.steps][-1] == "short_doc_filter_v2_for_test"


def test_retiring_a_current_or_taken_name_is_refused():
    from curate.core.operator import Filter
    from curate.core.registry import register

    @register("retire_target_a_for_test", retired={"retire_old_for_test": "0.3"})
    class A(Filter):
        pass

    with pytest.raises(ValueError, match="already retired in favour of 'retire_target_a_for_test'"):
        @register("retire_target_b_for_test", retired={"retire_old_for_test": "0.3"})
        class B(Filter):
            pass

    with pytest.raises(ValueError, match="is a current operator name"):
        @register("retire_target_c_for_test", retired={"retire_target_a_for_test": "0.3"})
        class C(Filter):
            pass

    with pytest.raises(ValueError, match="was retired in favour of"):
        @register("retire_old_for_test")
        class D(Filter):
            pass
