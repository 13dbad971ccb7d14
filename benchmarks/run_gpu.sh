#!/usr/bin/env bash
# One command for the GPU figures: DPO and GRPO side by side (rlfoundry vs TRL) and the
# per-token scaling curves, written to one results table.
#
#   benchmarks/run_gpu.sh                          # CUDA, bf16, full runs
#   benchmarks/run_gpu.sh --device cpu --quick     # the CI smoke run (tens of seconds)
#   benchmarks/run_gpu.sh --out DIR --libraries rlfoundry
#
# CUDA runs use bf16 autocast in both libraries and TRL's fastest GPU settings
# (common.trl_device_args: padding-free DPO batches, Liger kernels when liger_kernel is
# installed, flash-attention 2 when flash_attn is installed, colocated vLLM generation when
# vllm is installed); rlfoundry then generates with its vLLM backend as well. TRL is a
# benchmark dependency only (pip install -e ".[bench]").
set -euo pipefail

DEVICE=cuda
QUICK=""
OUT=""
LIBRARIES=trl,rlfoundry
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --libraries) LIBRARIES="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run_gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "run_gpu.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$HERE/../src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
OUT="${OUT:-$HERE/results_$DEVICE}"
mkdir -p "$OUT"
DTYPE=float32
if [ "$DEVICE" = cuda ]; then
  DTYPE=bfloat16
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "run_gpu.sh: no CUDA device visible; use --device cpu" >&2; exit 1; }
fi
RLF=()
if [ "$DEVICE" = cuda ] && "$PY" -c "import vllm" 2>/dev/null; then
  RLF=(--rlf rollout.backend=vllm)
fi
SIDE=(--device "$DEVICE" --dtype "$DTYPE" --libraries "$LIBRARIES" --workdir "$OUT/work")
if [ -n "$QUICK" ]; then
  SIDE+=(--quick --check-steps 0 --repeats 1)
fi

{
  echo "# rlfoundry vs TRL on $DEVICE ($DTYPE)"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'), load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
  echo
} > "$OUT/results.md"

run() {  # run NAME CMD...: stdout to OUT/NAME.txt, appended to results.md as a section
  local name="$1"; shift
  echo "== $name: $*" >&2
  "$@" | tee "$OUT/$name.txt"
  { echo "## $name"; echo; echo '```'; cat "$OUT/$name.txt"; echo '```'; echo; } >> "$OUT/results.md"
}

run dpo "$PY" "$HERE/bench_dpo.py" "${SIDE[@]}" --json "$OUT/dpo.json"
GRPO=()
if [ -n "$QUICK" ]; then GRPO=(--betas 0); fi
run grpo "$PY" "$HERE/bench_grpo.py" "${SIDE[@]}" ${GRPO[@]+"${GRPO[@]}"} ${RLF[@]+"${RLF[@]}"} --json "$OUT/grpo.json"
SCALING=(--device "$DEVICE" --dtype "$DTYPE" --out "$OUT")
if [ -n "$QUICK" ]; then SCALING+=(--quick); fi
if [ "$DEVICE" = cuda ] && [ -z "$QUICK" ]; then SCALING+=(--lengths 256,512,1024,2048,4096,8192 --repeats 5); fi
run scaling "$PY" "$HERE/bench_scaling.py" "${SCALING[@]}"
echo "results: $OUT/results.md" >&2
