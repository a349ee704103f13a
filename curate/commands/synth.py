"""``curate synth config.yaml``: run a generation pipeline and write its report beside the output."""

from __future__ import annotations

import argparse


def _cmd_synth(args: argparse.Namespace) -> int:
    from curate.synth.api import synthesize

    result, paths = synthesize(args.config, work_dir=args.work_dir, workers=args.workers,
                               progress=not args.no_progress, report=not args.no_report,
                               embeddings=not args.no_embeddings)
    from rich.console import Console

    Console(width=160).print(result.table())
    print(f"output: {result.output}  stats: {result.work_dir / 'stats.json'}")
    if paths:
        print(f"report: {paths[0]}  {paths[1]}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("synth", help="generate data with a teacher (pipeline YAML with generator steps) + report")
    s.add_argument("config", help="pipeline YAML whose steps include generators (self_instruct, rationale, ...)")
    s.add_argument("--work-dir", default=None)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--no-report", action="store_true", help="skip <output>.report.json/.md")
    s.add_argument("--no-embeddings", action="store_true", help="report without the MiniLM embedding diversity")
    s.set_defaults(fn=_cmd_synth)
