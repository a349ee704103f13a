"""``curate train-lm``: estimate an n-gram LM (interpolated modified Kneser-Ney) and write an ARPA file;
``curate binarize-lm``: convert an ARPA file to KenLM's mmap-able binary format (KenLM's ``build_binary``)."""

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
    if args.binary:
        _binarize(rep.path, None, "probing", overwrite=args.force)
    return 0


def _binarize(arpa, out, structure: str, *, overwrite: bool) -> None:
    from curate.models.kenlm import build_binary

    t0 = time.perf_counter()
    dst = build_binary(arpa, out, structure=structure, overwrite=overwrite)
    print(f"{dst}: KenLM binary ({structure}), {dst.stat().st_size / 1e6:.1f} MB; {time.perf_counter() - t0:.1f}s")


def _cmd_binarize_lm(args: argparse.Namespace) -> int:
    _binarize(args.model, args.output, args.structure, overwrite=args.force)
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
    p.add_argument("--binary", action="store_true", help="also write OUTPUT with suffix .binary (KenLM's "
                   "build_binary, probing): loads by mmap, shared by every worker")
    p.add_argument("--force", action="store_true", help="with --binary: replace an existing .binary file")
    p.set_defaults(fn=_cmd_train_lm)

    b = subparsers.add_parser(
        "binarize-lm", help="convert an ARPA model to KenLM's binary format (mmap; shared across workers)",
        description="Runs KenLM's build_binary (build it with `bash scripts/build-kenlm-tools.sh`; found on "
                    "PATH, next to the Python, or in $CURATE_KENLM_BIN). The model's .json tokeniser sidecar "
                    "is copied next to the output. Scores equal the ARPA model's.")
    b.add_argument("model", help="ARPA file, e.g. models/books.arpa")
    b.add_argument("-o", "--output", default=None, help="binary file to write (default: MODEL with suffix .binary)")
    b.add_argument("--structure", choices=["probing", "trie"], default="probing",
                   help="probing: KenLM's default, fastest queries; trie: smaller, slower")
    b.add_argument("--force", action="store_true", help="replace an existing output file")
    b.set_defaults(fn=_cmd_binarize_lm)
