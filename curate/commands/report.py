"""``curate report RUN_DIR [--out DIR]``."""

from __future__ import annotations

import argparse


def _cmd_report(args: argparse.Namespace) -> int:
    from curate.report import write_report

    html, md = write_report(args.run_dir, args.out)
    print(f"report: {html}  markdown: {md}")
    return 0


def add_commands(sub) -> None:
    r = sub.add_parser("report", help="HTML + markdown report of a pipeline or distill run, with plots")
    r.add_argument("run_dir", help="a pipeline work dir or a distill output dir")
    r.add_argument("--out", default=None, help="folder for report.html/report.md (default: the run dir)")
    r.set_defaults(fn=_cmd_report)
