"""``curate run | validate | ops`` and the subcommands other areas add (train-lm, distill, synth)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from curate.core.errors import CurateError

#: modules that add subcommands: each has ``add_commands(subparsers)``; a missing module is skipped.
_COMMAND_MODULES = (
    "curate.filters.cli", "curate.selectors.lm_cli", "curate.selectors.cli", "curate.distill.cli", "curate.synth.cli",
)


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from curate.core.pipeline import Pipeline

    p = Pipeline.from_yaml(args.pipeline)
    if args.work_dir:
        p.work_dir = args.work_dir
    result = p.run(workers=args.workers, progress=not args.no_progress)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(result.table())
    print(f"output: {result.output}  rejects: {p.rejects_spec().path}  stats: {result.work_dir / 'stats.json'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from curate.core.pipeline import Pipeline

    p = Pipeline.from_yaml(args.pipeline)
    print(f"{args.pipeline}: OK ({len(p.steps)} steps, {len(p.input.shards())} input shards)")  # type: ignore[union-attr]
    if args.show:
        print(p.to_yaml())
    return 0


def _cmd_ops(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from curate.core.registry import all_operators

    ops = all_operators()
    if args.name:
        ops = {k: v for k, v in ops.items() if args.name in k}
    console = Console()
    for name, cls in ops.items():
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        t = Table(title=f"[bold]{name}[/] ({cls.kind}{', extra: ' + cls.extra if cls.extra else ''})",
                  caption=doc, title_justify="left", caption_justify="left")
        t.add_column("parameter")
        t.add_column("type")
        t.add_column("default")
        t.add_column("description")
        for pname, field in cls.Params.model_fields.items():
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            t.add_row(pname, ann, default, field.description or "")
        console.print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="curate", description="Curate LLM training data and distill students.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a pipeline.yaml (resumes finished shards and stages)")
    r.add_argument("pipeline")
    r.add_argument("--workers", type=int, default=None)
    r.add_argument("--work-dir", default=None)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=_cmd_run)
    v = sub.add_parser("validate", help="check a pipeline.yaml without running it")
    v.add_argument("pipeline")
    v.add_argument("--show", action="store_true", help="print the resolved config, defaults filled in")
    v.set_defaults(fn=_cmd_validate)
    o = sub.add_parser("ops", help="list operators with their parameters and defaults")
    o.add_argument("name", nargs="?", help="only operators whose name contains this")
    o.set_defaults(fn=_cmd_ops)
    for mod_name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue
            raise
        mod.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except CurateError as e:
        if args.debug:
            raise
        print(f"error: {e}" if "\n" not in str(e) else f"error:\n{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
