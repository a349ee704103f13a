"""``curate run | validate | ops`` and the subcommands other areas add (train-lm, distill, synth)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from curate._version import __version__
from curate.core.errors import DISTRIBUTION, CurateError
from curate.core.jit import freeze_gc_at_exit

#: modules that add subcommands, each with ``add_commands(subparsers)``; every one must import.
_COMMAND_MODULES = (
    "curate.commands.fasttext", "curate.commands.lm", "curate.commands.distill", "curate.commands.report",
    "curate.commands.synth",
)


def _print_table(table) -> None:
    """Print a rich table whole: on a terminal at its width, to a pipe or file as wide as the table
    needs (never cut at 80 columns) and without colour codes."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        wide = Console(width=100_000, color_system=None, highlight=False)
        console = Console(width=max(80, wide.measure(table).maximum), color_system=None, highlight=False)
    console.print(table)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run unwinds (stopping its workers) like on Ctrl-C; a
    BaseException so no ``except Exception`` on the way swallows it."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _load(args: argparse.Namespace):
    from curate.core.pipeline import Pipeline

    return Pipeline.from_yaml(args.pipeline, allow_code=args.allow_code)


def _cmd_run(args: argparse.Namespace) -> int:
    p = _load(args)
    if args.work_dir:
        p.work_dir = args.work_dir
    if args.limit is not None:
        from curate.core.sample import limited

        p = limited(p, args.limit)
        print(f"trial on the first {args.limit:,} documents: work dir {p.work_dir}, output {p.output.path} "  # type: ignore[union-attr]
              "(a full run's folders are untouched)", file=sys.stderr)
    if args.dry_run:
        for line in _plan_lines(p, args.workers):
            print(line)
        return 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = p.run(workers=args.workers, progress=not args.no_progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_table(result.table())
    print(f"output: {result.output}  rejects: {p.rejects_spec().path}  stats: {result.work_dir / 'stats.json'}")
    return 0


def _plan_lines(p, workers: int | None) -> list[str]:
    """What ``curate run`` would do, read from the work dir's markers; writes nothing."""
    import json

    from curate.core.plan import plan_segments
    from curate.executors.base import detect_device
    from curate.executors.local import LocalExecutor

    shards = p.input.shards()
    files = p.input.files()
    from curate.executors import stage_remote
    from curate.io.storage import stat

    size = sum(stat(f, dict(p.input.storage_options))[0] for f in files)
    n = workers or p.executor.workers or os.cpu_count() or 1
    # a URI output is written to its local stage: the markers (and so what would resume) live there
    spec, _ = stage_remote(p.spec(workers=n))
    ex = LocalExecutor(spec)
    device = detect_device(p.steps)
    lines = [f"plan (dry run, nothing written): {len(files)} input file(s), {size / 1e6:,.1f} MB, "
             f"{len(shards)} shard(s); {p.executor.type} executor, {n} worker(s), device {device}",
             f"work dir: {p.work_dir}   output: {p.output.path}   rejects: {p.rejects_spec().path}"]
    segments = plan_segments(p.input, p.steps, spec.output, p.seed, spec.rejects_spec)
    for seg in segments:
        if seg.stage is not None:
            try:
                done = json.loads((ex._stage_dir(seg) / "_done.json").read_text())
                fitted = done.get("fingerprint") == seg.stage_fingerprint
            except (OSError, ValueError):
                fitted = False
            lines.append(f"  fit {seg.stage.step_name}: " + ("done, resumed" if fitted else "to fit"))
        tasks, done_stats = ex._tasks(seg, shards, spec.rejects_spec, device)
        ops = ", ".join(o.step_name for o in seg.ops) or "read"
        dest = f"writes {p.output.path}" if seg.last else f"spills to {ex.work / 'segments' / f'{seg.index:03d}'}"
        lines.append(f"  segment {seg.index}: {ops} -> {dest}: {len(tasks)} shard(s) to run, "
                     f"{len(done_stats)} done (resumed)")
    return lines


def _cmd_validate(args: argparse.Namespace) -> int:
    from curate.core.config import code_imports

    p = _load(args)
    p.check()  # the preflight a run does before work: input fields, column chain, files, name clashes
    print(f"{args.pipeline}: OK ({len(p.steps)} steps, {len(p.input.shards())} input shards)")  # type: ignore[union-attr]
    for i, name, pname, ref in code_imports(p.steps):
        print(f"imports Python code (allowed by --allow-code): steps[{i}].{name}.{pname}: {ref}")
    if args.show:
        print(p.to_yaml())
    return 0


def _cmd_ops(args: argparse.Namespace) -> int:
    """List operators: parameters (type, default, description) and the columns each needs and adds.

    ``curate ops NAME`` shows the operator of that name, or every operator whose name contains it; a name
    that matches none is an error suggesting close names (rc 2)."""
    from rich.console import Console
    from rich.table import Table

    from curate.core.registry import all_operators, get_operator

    ops = all_operators()
    if args.name:
        if args.name in ops:
            ops = {args.name: ops[args.name]}
        else:
            ops = {k: v for k, v in ops.items() if args.name in k}
            if not ops:
                get_operator(args.name)  # raises ConfigError: unknown operator ... (did you mean ...?)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200, color_system=None)
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
        console.print(_columns_table(cls))
    return 0


def _columns_table(cls):
    """The columns an operator adds (dtype, meaning, null meaning) and needs, at its default parameters."""
    from rich.table import Table

    t = Table(title=f"columns of {cls.name} (default parameters)", title_justify="left")
    for c in ("column", "dtype", "meaning", "null"):
        t.add_column(c)
    try:
        op = cls.for_docs()
        adds, needs = op.adds(), op.needs()
    except Exception:  # noqa: BLE001 - a declaration that depends on a required parameter
        t.add_row("(depends on required parameters)", "", "", "")
        return t
    for cname, col in adds.items():
        t.add_row(cname, col.dtype_name() + (" (rejected rows)" if col.rejects_only else ""), col.doc, col.null)
    for cname in needs:
        t.add_row(cname, "needed", op.need_hint(cname) or "read from the input or an earlier step", "")
    if not adds and not needs:
        t.add_row("(none)", "", "", "")
    return t


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="curate", description="Curate LLM training data and distill students.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--version", action="version", version=f"curate {__version__} (distribution {DISTRIBUTION})")
    sub = ap.add_subparsers(dest="command", required=True)
    code_help = ("let the pipeline import Python code it names (e.g. shapley utility: pkg.mod:fn); "
                 "refused without this flag, so a pipeline file alone never runs code")
    r = sub.add_parser("run", help="run a pipeline.yaml (resumes finished shards and stages)")
    r.add_argument("pipeline")
    r.add_argument("--workers", type=int, default=None)
    r.add_argument("--work-dir", default=None)
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--limit", type=int, default=None, metavar="N",
                   help="try the pipeline on the first N documents; work dir, output and rejects get a "
                        "'.limit-N' suffix so a trial is never mistaken for a full run")
    r.add_argument("--dry-run", action="store_true",
                   help="print the plan (segments, shards, what would resume) and write nothing")
    r.add_argument("--allow-code", action="store_true", help=code_help)
    r.set_defaults(fn=_cmd_run)
    v = sub.add_parser("validate", help="check a pipeline.yaml without running it")
    v.add_argument("pipeline")
    v.add_argument("--show", action="store_true", help="print the resolved config, defaults filled in")
    v.add_argument("--allow-code", action="store_true", help=code_help)
    v.set_defaults(fn=_cmd_validate)
    o = sub.add_parser("ops", help="list operators with their parameters and defaults")
    o.add_argument("name", nargs="?", help="only operators whose name contains this")
    o.set_defaults(fn=_cmd_ops)
    for mod_name in _COMMAND_MODULES:
        importlib.import_module(mod_name).add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `curate` command's own process, not a call from a user's script
        freeze_gc_at_exit()
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
    except _Terminated:
        print("terminated (SIGTERM): finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
