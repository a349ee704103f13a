"""``curate train-lm``: estimate an n-gram LM (interpolated modified Kneser-Ney) and write an ARPA file."""

from __future__ import annotations

import argparse
import time


def _cmd_train_lm(args: argparse.Namespace) -> int:
    from curate.io.readers import read_texts
    from curate.models.kenlm import train_lm

    t0 = time.perf_counter()
    texts = read_texts(args.inputs, args.text_field, args.max_docs)
    rep = train_lm(texts, args.output, order=args.order, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   sp_model=args.sp_model, normalize=not args.no_normalize, use_lmplz=args.lmplz)
    counts = " ".join(f"{n}-grams={c}" for n, c in enumerate(rep.ngram_counts, 1))
    print(f"{rep.path}: order {rep.order} ({rep.backend}), {texts.len()} documents, {rep.lines} lines, "
          f"{rep.tokens} tokens, {counts}; {time.perf_counter() - t0:.1f}s")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "train-lm", help="train an n-gram LM (modified Kneser-Ney, ARPA) for perplexity / moore_lewis",
        description="Each line of each document is a sentence. Text is CCNet-normalised, then split on "
                    "whitespace or into SentencePiece pieces. Writes OUTPUT (ARPA), OUTPUT.json (tokeniser) "
                    "and, for SentencePiece, <OUTPUT stem>.sp.model. Uses lmplz when it is on PATH.")
    p.add_argument("inputs", nargs="+", help="jsonl(.gz/.zst), parquet or .txt files, folders or globs")
    p.add_argument("-o", "--output", required=True, help="ARPA file to write, e.g. models/books.arpa")
    p.add_argument("--order", type=int, default=5, help="n-gram order (default 5, as CCNet)")
    p.add_argument("--tokenizer", choices=["whitespace", "sentencepiece"], default="whitespace")
    p.add_argument("--vocab-size", type=int, default=32_000, help="SentencePiece vocabulary (soft limit)")
    p.add_argument("--sp-model", default=None, help="reuse this SentencePiece model instead of training one")
    p.add_argument("--text-field", default="text", help="jsonl/parquet field holding the text")
    p.add_argument("--max-docs", type=int, default=None, help="read at most this many documents")
    p.add_argument("--no-normalize", action="store_true", help="skip CCNet normalisation")
    p.add_argument("--lmplz", choices=["auto", "never", "always"], default="auto",
                   help="use KenLM's lmplz when on PATH (auto), never, or require it")
    p.set_defaults(fn=_cmd_train_lm)
