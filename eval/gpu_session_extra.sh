#!/usr/bin/env bash
# What does not fit eval/gpu_session.sh's one device call, for a later one (also under 8 minutes
# of step limits; run gpu_session.sh first, since this one assumes its correctness step passed):
#
#     OUT=$OUT bash eval/gpu_session_extra.sh      # on the GPU machine, from the repository root
#
# - the sm_90 compile report with the machine's own Triton (3.6 there; docs/benchmarks.md's table
#   is from Triton 3.9 here): registers and spills of every kernel, fp32 and bf16;
# - the selective scan with the autotuner on (COMPRESSMAMBA_AUTOTUNE=1: up to a dozen configs per
#   kernel and padded N on a first call), N = 4, 16, 64, 128, at chunks of 16, 32, 64 steps;
# - the torch paths on CUDA tensors beside the Triton kernels (selective scan, SSD);
# - the SSD at the Triton chunk of 32 steps against the default (16 above padded N = 32).
# Files under $OUT: session.txt, compile_report.md, bench_scan_tuned.md, bench_ssd_extra.md.
set -uo pipefail
LIM_SETUP=40 LIM_REPORT=120 LIM_TUNED=150 LIM_TORCH=80 LIM_SSD=70
TOTAL=$((LIM_SETUP + LIM_REPORT + LIM_TUNED + LIM_TORCH + LIM_SSD))
if [[ "${1:-}" == --limits ]]; then
    echo "TOTAL $TOTAL"
    exit 0
fi
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore TRITON_INTERPRET=0
LOG="$OUT/session.txt"
: >"$LOG"

step() {  # step NAME LIMIT FILE CMD...: as in gpu_session.sh
    local name=$1 limit=$2 file=$3 t0=$SECONDS rc
    shift 3
    echo "== $name (limit ${limit} s)" | tee -a "$OUT/$file"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$OUT/$file"
    rc=${PIPESTATUS[0]}
    echo "step $name: exit $rc, $((SECONDS - t0)) s of ${limit} s" | tee -a "$LOG"
}

echo "gpu_session_extra.sh: step limits total $TOTAL s" | tee -a "$LOG"
step setup "$LIM_SETUP" session.txt bash -c "$PY -m pip install -q --no-deps --no-build-isolation -e . \
    && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader \
    && $PY -c 'import torch, triton; print(torch.__version__, triton.__version__)'"
step compile_report "$LIM_REPORT" compile_report.md bash -c "
    for dt in fp32 bf16; do
        $PY -m compressmamba.eval.kernel_report --launcher --states 8,16,32,64,128,256 --dtype \$dt
        $PY -m compressmamba.eval.kernel_report --ssd --launcher --states 8,16,32,64,128,256 --dtype \$dt
    done"
SCAN=(--device cuda --batch 8 --dim 1536 --seqlen 2048 --reps 5 --no-conv)
COMPRESSMAMBA_AUTOTUNE=1 step scan_tuned "$LIM_TUNED" bench_scan_tuned.md \
    $PY -m compressmamba.eval.bench_scan "${SCAN[@]}" --states 4,16,64,128 --chunks 16,32,64 \
    --backends triton,mamba_ssm
COMPRESSMAMBA_AUTOTUNE=0 step scan_torch "$LIM_TORCH" bench_scan_tuned.md \
    $PY -m compressmamba.eval.bench_scan "${SCAN[@]}" --states 16,128 --backends cpu
SSD=(--device cuda --batch 8 --seqlen 2048 --d-inner 1536 --headdim 64 --states 128,64,16 --reps 5)
step ssd_chunks "$LIM_SSD" bench_ssd_extra.md bash -c "
    $PY -m compressmamba.eval.bench_ssd ${SSD[*]} --backends triton --chunk-size 32 &&
    $PY -m compressmamba.eval.bench_ssd ${SSD[*]} --backends cpu --chunk-size 256"
echo "done in $SECONDS s" | tee -a "$LOG"
! grep -q "exit [1-9]" "$LOG"
