"""The ``curate`` command line."""

from __future__ import annotations

from curate.cli import main as cli_main


def test_cli_ops_lists_parameters(capsys):
    assert cli_main(["ops", "gopher_quality"]) == 0
    out = capsys.readouterr().out
    assert "min_doc_words" in out and "50" in out
