#!/usr/bin/env bash
# Build every peer environment the benchmarks compare curate against, each in its own venv, with pinned
# versions, so a fresh clone reproduces benchmarks/RESULTS.md.
#
#   benchmarks/setup_peers.sh [DEST] [PEER ...]      # DEST defaults to .peers (gitignored)
#   benchmarks/setup_peers.sh /work/peers datatrove  # one peer only
#
# Peers: datatrove datasketch pydvl trak trl dsir ccnet. Each lands in DEST/<peer>/ and the bench scripts
# find it through one option / environment variable (printed at the end), e.g.
#   CURATE_PEERS=DEST  (all of them)   or   --datatrove-python DEST/datatrove/bin/python
# Shared libraries are pinned to the versions in curate's own venv (numpy, polars, transformers, tokenizers)
# so that "same library versions where shared" holds; torch comes from the local CPU wheel (2.13.0).
# Re-running skips a peer whose venv already has its stamp file (delete DEST/<peer> to rebuild).
set -euo pipefail

DEST=${1:-.peers}
shift || true
PEERS=${*:-datatrove datasketch pydvl trak trl dsir ccnet}
PY=${PYTHON:-python3}

# Versions (checked against PyPI on 2026-12-02; curate's venv holds the shared ones).
NUMPY=2.4.6
POLARS=2.1.0
PYARROW=26.0.1
TORCH=2.13.0
TRANSFORMERS=5.24.0
TOKENIZERS=0.23.3
REGEX=2026.11.19
DATATROVE=0.10.1
SPACY=3.8.18
XXHASH=3.8.2        # datatrove[processing] asks xxhash<4
ORJSON=3.13.0
DATASKETCH=2.0.0
SCIPY=1.17.1
SKLEARN=1.9.1
PYDVL=0.10.0
TRAK=0.3.2
TRL=1.16.0
ACCELERATE=1.15.0
DATASETS=5.2.0
GGUF=0.19.0
SAFETENSORS=0.8.0
DSIR=1.0.3          # PyPI name: data-selection
CCNET_COMMIT=bda555bd  # facebookresearch/cc_net (archived); not on PyPI

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

mkvenv() {  # mkvenv NAME PIP-ARGS... ; skipped when already built
    local name=$1; shift
    local v="$DEST/$name"
    if [[ -f "$v/.built" ]]; then echo "== $name: already built ($v)"; return 0; fi
    echo "== $name -> $v"
    rm -rf "$v"
    "$PY" -m venv "$v"
    "$v/bin/pip" install -q --upgrade pip >/dev/null
    "$v/bin/pip" install -q "$@"
    "$v/bin/pip" freeze > "$v/freeze.txt"
    touch "$v/.built"
}

for peer in $PEERS; do
    case $peer in
    datatrove)
        # DataTrove with its default English word tokeniser (spaCy, blank "en" pipeline: no model download)
        # plus the extras its filters and MinHash blocks import (regex, tokenizers, xxhash, orjson, fasteners,
        # nltk).
        mkvenv datatrove "datatrove==$DATATROVE" "spacy==$SPACY" "regex==$REGEX" "tokenizers==$TOKENIZERS" \
            "xxhash==$XXHASH" "orjson==$ORJSON" "fasteners==0.20" "nltk==3.10.4" "numpy==$NUMPY"
        ;;
    datasketch)
        mkvenv datasketch "datasketch==$DATASKETCH" "numpy==$NUMPY" "scipy==$SCIPY" "polars==$POLARS" \
            "pyarrow==$PYARROW" "regex==$REGEX"
        ;;
    pydvl)
        # pyDVL 0.10.0 requires numpy<2, so this venv cannot share curate's numpy 2.x: the newest 1.x set.
        mkvenv pydvl "pydvl==$PYDVL" "numpy==1.26.4" "scipy==1.13.1" "scikit-learn==1.5.2"
        ;;
    trak)
        # TRAK's CPU projector (BasicProjector); fast_jl (CUDA) is not installed: there is no GPU here.
        mkvenv trak "torch==$TORCH" "traker==$TRAK" "numpy==$NUMPY" "transformers==$TRANSFORMERS" \
            "safetensors==$SAFETENSORS" "gguf==$GGUF"
        ;;
    trl)
        # Same transformers (and torch) as curate's venv, so the KD ratio compares trainers, not libraries.
        mkvenv trl "torch==$TORCH" "trl==$TRL" "transformers==$TRANSFORMERS" "tokenizers==$TOKENIZERS" \
            "accelerate==$ACCELERATE" "datasets==$DATASETS" "gguf==$GGUF" "safetensors==$SAFETENSORS" \
            "numpy==$NUMPY"
        ;;
    dsir)
        mkvenv dsir "data-selection==$DSIR" "numpy==$NUMPY"
        ;;
    ccnet)
        # cc_net is not on PyPI and is archived; its setup.py pins kenlm from GitHub and
        # sentencepiece/fasttext builds of 2020. We install its package from the snapshot named by
        # CCNET_SRC (a checkout of facebookresearch/cc_net) with its text-normalisation deps only, which is
        # all bench_lm uses (cc_net.text_normalizer). Without CCNET_SRC the step says so and is skipped.
        if [[ -z "${CCNET_SRC:-}" ]]; then
            echo "== ccnet: skipped (set CCNET_SRC to a checkout of facebookresearch/cc_net @$CCNET_COMMIT;"
            echo "   cc_net is not on PyPI, so a fresh clone cannot pip-install it by name)"
            continue
        fi
        mkvenv ccnet "numpy==$NUMPY"
        # --no-deps: its setup.py asks for kenlm from a git URL and old sentencepiece/fasttext pins that do
        # not build on Python 3.11; the normaliser imports only the standard library.
        "$DEST/ccnet/bin/pip" install -q --no-deps "$CCNET_SRC"
        "$DEST/ccnet/bin/python" -c "from cc_net import text_normalizer; print('cc_net ok', text_normalizer.normalize('Ab 12'))"
        ;;
    *) echo "unknown peer: $peer" >&2; exit 2 ;;
    esac
done

cat <<EOF
Peers in $DEST. The bench scripts read:
  CURATE_PEERS=$DEST            (every script: DEST/<peer>/bin/python)
  bench_filters.py  --datatrove-python $DEST/datatrove/bin/python
  bench_minhash.py  --datatrove-python $DEST/datatrove/bin/python --datasketch-python $DEST/datasketch/bin/python
  bench_selectors.py --pydvl-python $DEST/pydvl/bin/python
  bench_less.py     --trak-python $DEST/trak/bin/python
  bench_distill.py  --trl-python $DEST/trl/bin/python
  bench_dsir.py     --dsir-python $DEST/dsir/bin/python
  bench_lm.py       --ccnet-python $DEST/ccnet/bin/python
EOF
