"""Subcommands beyond ``run | validate | ops``: one module per command group, each with ``add_commands(subparsers)``.

``curate.cli`` lists these modules; an import error in one is a real error, not a skipped command.
"""
