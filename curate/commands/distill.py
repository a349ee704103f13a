"""``curate distill config.yaml [--resume]`` and ``curate distill-cache config.yaml`` (teacher top-k cache)."""

from __future__ import annotations

import argparse
import json


def _cmd_distill(args: argparse.Namespace) -> int:
    import logging

    from curate.distill.config import DistillConfig
    from curate.distill.run import build_cache, distill

    logging.getLogger("curate").setLevel(logging.INFO)
    cfg = DistillConfig.from_yaml(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.max_steps:
        cfg.optim.max_steps = args.max_steps
    if args.no_progress:
        cfg.progress = False
    if args.cache_only and cfg.teachers:  # one cache per teacher (curate.distill.multi_teacher)
        from curate.distill.multi_teacher import build_caches

        for cache in build_caches(cfg):
            print(json.dumps({"cache": str(cache.dir), **{k: cache.meta.get(k) for k in
                              ("num_sequences", "num_tokens", "bytes_per_token", "build_seconds")}}))
        return 0
    if args.cache_only:
        cache = build_cache(cfg)
        print(json.dumps({"cache": str(cache.dir), **{k: cache.meta.get(k) for k in
                          ("num_sequences", "num_tokens", "bytes_per_token", "build_seconds")}}))
        return 0
    res = distill(cfg, resume=args.resume)
    if res.report.get("kind") == "dataset_distill":  # a comparison of sets: the table is the result
        print((res.output_dir / "report.md").read_text(encoding="utf-8"))
        print(f"report: {res.output_dir / 'report.md'}  sets: {res.output_dir / 'synthetic'}")
        return 0
    if res.report:
        print((res.output_dir / "report.md").read_text(encoding="utf-8"))
    print(f"student: {res.output_dir / 'student'}  report: {res.output_dir / 'report.md'}  "
          f"metrics: {res.output_dir / 'metrics.jsonl'}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="distill.yaml (see examples/distill/)")
    p.add_argument("--output-dir", default=None, help="override output_dir")
    p.add_argument("--no-progress", action="store_true")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser("distill", help="distill a student from a teacher (config.yaml)")
    _add_common(d)
    d.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint")
    d.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    d.add_argument("--cache-only", action="store_true", help="only build the teacher top-k cache")
    d.set_defaults(fn=_cmd_distill)
    c = subparsers.add_parser("distill-cache", help="precompute the teacher top-k cache of a distill config")
    _add_common(c)
    c.set_defaults(fn=_cmd_distill, cache_only=True, resume=False, max_steps=None)
