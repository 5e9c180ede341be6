#!/usr/bin/env bash
# Everything issue 3 needs from a GPU, in one command (one device call: few, full calls cost less
# than many small ones). Run from the repository root on a machine with an NVIDIA GPU:
#
#     OUT=gpu_out bash eval/gpu_session.sh            # logs and tables land in $OUT
#
# Installs compressmamba without dependencies (the device image already has torch, triton,
# transformers, accelerate, pytest, pyyaml, tqdm; no internet), then: the kernel tests natively
# (TRITON_INTERPRET=0), the scan/conv benchmark in fp32 (the Triton scan at chunk 16, 32, 64) and
# bf16 with the target checks, the SSD (Mamba-2) benchmark, and the whole-model benchmark. Each
# step has its own time limit so one slow step cannot eat the rest. The first call per (padded N,
# dtype) autotunes the scan (up to a dozen configs each for forward and backward: a few minutes in
# all, cached on disk after).
# Copy the tables into docs/benchmarks.md with the device line from $OUT/device.txt.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_session.sh: torch sees no CUDA device here; run it on a GPU machine (CPU tests: pytest -q)" >&2
    exit 2
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import sys, torch, triton, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__)"
    git log -1 --format='commit %h %s' 2>/dev/null
} | tee "$OUT/device.txt"

step() {  # step NAME SECONDS CMD...: run CMD with a limit, tee its output to $OUT/NAME
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name"
}

step tests_kernels.log 300 $PY -m pytest -q -p no:cacheprovider tests/kernels
step bench_scan_fp32.md 420 $PY -m compressmamba.eval.bench_scan --dtype fp32 --chunks 16,32,64
step bench_scan_bf16.md 240 $PY -m compressmamba.eval.bench_scan --dtype bf16 --states 16,128 --no-conv
# Mamba-2's SSD scan at the mamba2-130m layer (24 heads x 64, one group), Triton and the chunked
# torch path on CUDA tensors
step bench_ssd_fp32.md 240 $PY -m compressmamba.eval.bench_ssd --batch 8 --seqlen 2048 --backends triton,cpu
# transformers' torch path keeps every step's (batch, 1536, N) state for its backward: at batch 8,
# L 2048, N 128 that is ~77 GB over 24 layers, so the model comparison runs at batch 4, L 1024
step bench_model.md 300 $PY -m compressmamba.eval.bench_model --device cuda --batch 4 --seqlen 1024 \
    --d-model 768 --layers 24 --states 128,16 --gen-tokens 64
