#!/usr/bin/env bash
# One prepared run of every GPU check, for a GPU machine lent for minutes (issue: GPU fast path).
#
#   bench/gpu_check.sh OUT [cuda|cpu] [small]      (ONLY="embed_vit_b_32 index ..." runs those checks alone)
#
# Installs the wheels in .whl/ (what the machine's Python lacks: open_clip_torch, faiss-cpu, flask, ...;
# see "GPU checks" in bench/RESULTS.md for how to fetch them), makes this checkout importable as
# `emoreact`, then runs each check under its own timeout, writing its JSON (or log) into OUT:
#   pytest -m gpu; bench embed for ViT-B-32 and ViT-L-14 (ours, the PIL DataLoader baseline, model only,
#   fast-path stages); bench head; bench api; bench index (with exact search on the GPU).
# `cpu small` runs the same steps on the CPU with tiny sizes: try the script here before spending GPU time.
# A check that fails or times out is recorded in OUT/summary.txt and the rest still run.
set -u
out=${1:?usage: bench/gpu_check.sh OUT [cuda|cpu] [small]}
device=${2:-cuda}
small=${3:-}
py=${PYTHON:-python3}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

site=$(mktemp -d)
if ! "$py" -c "import open_clip, faiss, flask_openapi3, waitress, emoji" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site/lib" .whl/*.whl \
        >"$out/install.log" 2>&1 || { echo "wheel install failed: see install.log" >>"$out/summary.txt"; exit 1; }
fi
mkdir -p "$site/pkg" && ln -s "$PWD" "$site/pkg/emoreact"
export PYTHONPATH="$site/pkg:$site/lib${PYTHONPATH:+:$PYTHONPATH}"

check() {  # check NAME SECONDS COMMAND...: runs COMMAND, stdout to OUT/NAME.json, stderr to OUT/NAME.log
    local name=$1 seconds=$2 start rc
    shift 2
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
    start=$(date +%s)
    timeout -k 10 "$seconds" "$@" >"$out/$name.json" 2>"$out/$name.log"
    rc=$?
    echo "$name: exit $rc in $(($(date +%s) - start)) s" | tee -a "$out/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch, torchvision, sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__)"
  git rev-parse --short HEAD 2>/dev/null; nproc; } >"$out/machine.txt" 2>&1

if [ -n "$small" ]; then
    b32=(--size 96 --rounds 1 --batch-size 32) l14=(--size 32 --rounds 1 --batch-size 16 --model ViT-B-32)
    head=(--size 2000) api=(--size 1) index=(--size 20000)
else
    b32=(--size 16384 --rounds 2) l14=(--size 4096 --rounds 2 --batch-size 256 --model ViT-L-14)
    head=(--size 100000) api=(--size 5) index=(--size 200000)
fi
check pytest_gpu 60 "$py" -m pytest -q -p no:cacheprovider -m gpu tests
check embed_vit_b_32 130 "$py" cli.py bench embed --device "$device" --model ViT-B-32 "${b32[@]}"
check embed_vit_l_14 100 "$py" cli.py bench embed --device "$device" "${l14[@]}"
check api 90 "$py" cli.py bench api --device "$device" "${api[@]}"
check index 60 "$py" cli.py bench index --device "$device" "${index[@]}"
check head 150 "$py" cli.py bench head --device "$device" "${head[@]}"
rm -rf "$site"
# The device tool brings back few files: everything travels as one archive beside the summary.
tar -czf "$site.tar.gz" -C "$out" --exclude summary.txt . && mv "$site.tar.gz" "$out/gpu_check.tar.gz"
