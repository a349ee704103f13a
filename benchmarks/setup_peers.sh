#!/usr/bin/env bash
# Build every peer environment the benchmarks compare curate against, each in its own venv, with pinned
# versions, so a fresh clone reproduces benchmarks/RESULTS.md.
#
#   benchmarks/setup_peers.sh [DEST] [PEER ...]      # DEST defaults to .peers (gitignored)
#   benchmarks/setup_peers.sh /work/peers datatrove  # one peer only
#
# Peers: datatrove datasketch pydvl trak trl dsir ccnet, and dj (Data-Juicer, only when named: large).
# Each lands in DEST/<peer>/ and the bench scripts
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
CCNET=1.0.0           # PyPI cc_net: not installable from PyPI (see the ccnet step)
CCNET_COMMIT=bda555bd  # facebookresearch/cc_net snapshot for CCNET_SRC
DATA_JUICER=1.6.1   # PyPI py-data-juicer (newest on 2026-12-02)
RAY=2.60.0          # same Ray as curate's ray extra

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
        # cc_net 1.0.0 is on PyPI but cannot be installed from it: its metadata declares
        # "kenlm @ git+https://github.com/kpu/kenlm.git@master", and pip refuses direct-URL dependencies in
        # a PyPI distribution ("Distributions from PyPI cannot declare direct URL dependencies", checked
        # 2026-12-02, even with --no-deps). So the attempt below is expected to fail on a PyPI-only machine;
        # with CCNET_SRC (a checkout of facebookresearch/cc_net @$CCNET_COMMIT) its package goes in with
        # --no-deps (bench_lm uses only cc_net.text_normalizer, which imports the standard library).
        if [[ -f "$DEST/ccnet/.built" ]]; then echo "== ccnet: already built"; continue; fi
        rm -rf "$DEST/ccnet"
        "$PY" -m venv "$DEST/ccnet"
        if "$DEST/ccnet/bin/pip" install -q "cc_net==$CCNET" 2>"$DEST/ccnet/install.err"; then
            touch "$DEST/ccnet/.built"
        elif [[ -n "${CCNET_SRC:-}" ]]; then
            "$DEST/ccnet/bin/pip" install -q --no-deps "$CCNET_SRC" && touch "$DEST/ccnet/.built"
        else
            echo "== ccnet: not installed: $(grep -v WARNING "$DEST/ccnet/install.err" | tail -1)"
            echo "   (set CCNET_SRC to a cc_net checkout to install it from source)"
            continue
        fi
        "$DEST/ccnet/bin/python" -c "from cc_net import text_normalizer as t; print('cc_net ok:', t.normalize('Ab 12'))"
        ;;
    dj)
        # Data-Juicer with Ray Data, for bench_ray.py's ray_bts_minhash_deduplicator row. Opt-in (its
        # dependency set is large): benchmarks/setup_peers.sh DEST dj
        # aiohttp: py-data-juicer 1.6.1 imports it at start-up (data_juicer/utils/file_utils.py) but does
        # not declare it: without it `dj-process` fails with "No module named 'aiohttp'" (2026-12-02).
        mkvenv dj "py-data-juicer==$DATA_JUICER" "ray[data]==$RAY" "numpy==$NUMPY" "pyarrow==$PYARROW" \
            "aiohttp==3.14.5"
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
  bench_dsir.py     (reads CURATE_PEERS: DEST/dsir/bin/python)
  bench_lm.py       cc_net is not pip-installable (see the ccnet step); bench_lm's "CCNet's way" row uses
                    curate's copy of cc_net's normaliser (tests/core/text_reference.py), labelled so
EOF
