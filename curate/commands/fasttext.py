"""``curate train-fasttext``: train a fastText quality classifier from positive and negative files."""

from __future__ import annotations

import argparse
import json


def _cmd_train_fasttext(args: argparse.Namespace) -> int:
    from curate.models.fasttext import train_fasttext_classifier

    report = train_fasttext_classifier(
        args.pos, args.neg, args.out, text_field=args.text_field, pos_label=args.pos_label,
        neg_label=args.neg_label, epoch=args.epoch, lr=args.lr, word_ngrams=args.word_ngrams, dim=args.dim,
        bucket=args.bucket, min_count=args.min_count, valid_fraction=args.valid_fraction,
        lowercase=args.lowercase, balance=args.balance, quantize=args.quantize, seed=args.seed,
        threads=args.threads)
    print(json.dumps(report, indent=1))
    print(f"use it with: - fasttext_quality: {{model_path: {args.out}, label: __label__{args.pos_label}}}")
    return 0


def add_commands(subparsers) -> None:
    t = subparsers.add_parser(
        "train-fasttext", help="train a fastText quality classifier (positive vs negative files)",
        description="Train a binary fastText classifier: --pos files (e.g. reference-quality or instruction "
                    "text) vs --neg files (e.g. raw web text); jsonl(.gz/.zst), parquet or text. Prints "
                    "held-out accuracy and AUC.")
    t.add_argument("--pos", nargs="+", required=True, help="files of good (positive) documents")
    t.add_argument("--neg", nargs="+", required=True, help="files of bad (negative) documents")
    t.add_argument("--out", required=True, help="model path to write (.bin, or .ftz with --quantize)")
    t.add_argument("--text-field", default="text")
    t.add_argument("--pos-label", default="hq")
    t.add_argument("--neg-label", default="lq")
    t.add_argument("--epoch", type=int, default=5)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--word-ngrams", type=int, default=2)
    t.add_argument("--dim", type=int, default=100)
    t.add_argument("--bucket", type=int, default=2_000_000, help="hash buckets for n-grams (model size)")
    t.add_argument("--min-count", type=int, default=1)
    t.add_argument("--valid-fraction", type=float, default=0.1)
    t.add_argument("--lowercase", action="store_true")
    t.add_argument("--balance", action="store_true", help="down-sample the larger class")
    t.add_argument("--quantize", action="store_true", help="quantize (smaller .ftz model)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="training threads (1 = reproducible)")
    t.set_defaults(fn=_cmd_train_fasttext)
