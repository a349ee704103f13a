#!/usr/bin/env bash
# Build KenLM's `build_binary` and `query` (no Boost needed) from the kenlm source package on PyPI.
#
#   bash scripts/build-kenlm-tools.sh [DEST]        # DEST default: the active venv's bin/ (else ~/.local/bin)
#
# The pip `kenlm` wheel queries models but ships no command-line tools. `build_binary` turns an ARPA file
# into KenLM's binary format, which loads by mmap in milliseconds instead of parsing text, and whose pages
# are shared by every worker process (curate's perplexity step with `workers: N`). curate finds the tool on
# PATH, in the venv's bin/, or at $CURATE_KENLM_BIN. This compiles the same sources as the sdist's own
# compile_query_only.sh (util/, util/double-conversion/, lm/*.cc minus tests and mains), in parallel:
# about 1.5 minutes on 2 cores. Needs g++ and zlib headers (Debian: build-essential zlib1g-dev).
set -euo pipefail

DEST="${1:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin}}"
DEST="${DEST:-$HOME/.local/bin}"
KENLM_VERSION="${KENLM_VERSION:-0.3.0}"
PY="${PYTHON:-python3}"
JOBS="$(nproc 2>/dev/null || echo 2)"
CXX="${CXX:-g++}"

# absolute paths: the build runs in a temporary folder
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
[ -z "${KENLM_SDIST:-}" ] || KENLM_SDIST="$(cd "$(dirname "$KENLM_SDIST")" && pwd)/$(basename "$KENLM_SDIST")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if [ -n "${KENLM_SDIST:-}" ]; then
  cp "$KENLM_SDIST" .
else
  # --no-build-isolation: only download the sdist and read its metadata, do not build cmake from source
  "$PY" -m pip download --quiet --no-deps --no-binary kenlm --no-build-isolation "kenlm==$KENLM_VERSION" -d .
fi
tar xzf kenlm-*.tar.gz
cd kenlm-*/

FLAGS=(-I. -O3 -DNDEBUG -DKENLM_MAX_ORDER=6 -DHAVE_ZLIB -std=c++11 -w)
srcs=()
for f in util/double-conversion/*.cc util/*.cc lm/*.cc; do
  case "$f" in *test.cc|*main.cc) ;; *) srcs+=("$f") ;; esac
done
printf '%s\n' "${srcs[@]}" | xargs -P "$JOBS" -I{} sh -c "$CXX ${FLAGS[*]} -c {} -o {}.o"
objs=()
for f in "${srcs[@]}"; do objs+=("$f.o"); done
mkdir -p "$DEST"
"$CXX" "${FLAGS[@]}" lm/build_binary_main.cc "${objs[@]}" -o "$DEST/build_binary" -lz -lrt
"$CXX" "${FLAGS[@]}" lm/query_main.cc "${objs[@]}" -o "$DEST/query" -lz -lrt
echo "built $DEST/build_binary and $DEST/query (kenlm $KENLM_VERSION)"
