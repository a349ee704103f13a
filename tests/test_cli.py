"""The ``curate`` command line."""

from __future__ import annotations

from curate.cli import main as cli_main


def test_cli_ops_lists_parameters(capsys):
    assert cli_main(["ops", "gopher_quality"]) == 0
    out = capsys.readouterr().out
    assert "min_doc_words" in out and "50" in out


def test_every_listed_command_module_exists_and_adds_commands():
    import argparse
    import importlib.util

    from curate import cli

    for name in cli._COMMAND_MODULES:
        assert importlib.util.find_spec(name) is not None, f"{name} is listed but does not exist"
    sub = argparse.ArgumentParser().add_subparsers()
    for name in cli._COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    assert {"train-fasttext", "train-lm", "distill", "distill-cache"} <= set(sub.choices)
