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


def test_every_command_group_is_registered():
    """`curate synth` was left out of the command list once (its module moved): every module under
    curate/commands must be listed and give its subcommand."""
    import pkgutil

    import curate.commands
    from curate.cli import _COMMAND_MODULES, build_parser

    modules = {f"curate.commands.{m.name}" for m in pkgutil.iter_modules(curate.commands.__path__)}
    assert modules == set(_COMMAND_MODULES)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"run", "validate", "ops", "synth", "report", "distill", "train-lm"} <= set(sub.choices)
