#!/usr/bin/env bash
# One GPU check, ready to run: the GPU-marked tests and the speed benchmarks on CUDA, one report.
#
#   benchmarks/gpu_check.sh            # on a machine with one CUDA GPU (sized for an H100, < 8 min)
#   benchmarks/gpu_check.sh --dry-run  # the same steps on CPU at tiny sizes (CI runs this)
#
# Steps, each under its own time limit (seconds, real run; 475 s in all, the preflight aside):
#   1. pytest -m gpu on the test files that hold GPU-marked tests                    (90)
#   2. merge_speed.py --cuda --layers 8: linear, TIES, DARE-TIES vs mergekit-yaml     (110)
#   3. kinship_speed.py --device cuda -n 4                                           (60)
#   4. benchmarks/synthetic.py: a random 0.5B Llama and 4 random LoRA experts, made
#      here (nothing downloaded or carried)                                          (40)
#   5. search_speed.py --device cuda on that synthetic zoo, TIES/DARE-TIES rows too   (130)
#   6. dam_speed.py --device cuda on the same zoo: DAM steps per second              (45)
#
# Writes one report, $OUT/gpu_check_report.md ($OUT: a new temporary folder when unset), with
# each step's command, exit status, seconds and the tail of its output. Exit status: 1 when a
# GPU test fails, 2 when only a benchmark step fails, 3 when the environment is unusable
# (no CUDA in a real run, or hub_merge / mergekit / transformers / peft not importable), else 0.
#
# Python: $PYTHON (default python3), with this repository on PYTHONPATH. On a bare machine,
# install the project and its extras first (mergekit, peft, transformers), e.g. from wheels.
set -u

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t gpu-check-XXXXXX)}
mkdir -p "$OUT"
REPORT="$OUT/gpu_check_report.md"
WORK=$(mktemp -d -t gpu-check-work-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT" || exit 3

if [ "$DRY" = 1 ]; then
  MODE="dry run (CPU, tiny sizes)"; DEV=cpu; SIZE=tiny
  MERGE_ARGS=(--small --methods ties)
  KIN_ARGS=(--small -n 3 --device cpu)
  SEARCH_ARGS=(--limit 2 --candidates 2 --naive 0)
  DAM_ARGS=(--steps 2 --rows 4 --batch 2)
  LIMITS=(300 300 300 300 300 300)
else
  MODE="real (CUDA)"; DEV=cuda; SIZE=0.5b
  MERGE_ARGS=(--cuda --layers 8)
  KIN_ARGS=(-n 4 --device cuda)
  SEARCH_ARGS=(--limit 8 --candidates 4 --naive 1)
  DAM_ARGS=(--steps 5 --rows 16 --batch 8)
  LIMITS=(90 110 60 130 45 40)
fi

{
  echo "# GPU check: $MODE"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- python: $PY"
} >"$REPORT"

# Preflight: the packages, and CUDA for a real run.
if ! "$PY" - >"$WORK/env.txt" 2>&1 <<EOF; then
import torch, transformers, peft, mergekit, hub_merge
print(f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
if torch.cuda.is_available():
    print(f"- device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
else:
    print("- device: CPU only")
    if "$DEV" == "cuda":
        raise SystemExit("no CUDA device: run with --dry-run, or on a GPU machine")
EOF
  { echo; echo "**environment unusable:**"; echo '```'; tail -n 20 "$WORK/env.txt"; echo '```'; } >>"$REPORT"
  echo "gpu_check.sh: environment unusable; see $REPORT" >&2
  tail -n 5 "$WORK/env.txt" >&2
  exit 3
fi
cat "$WORK/env.txt" >>"$REPORT"
echo >>"$REPORT"
echo "| step | status | seconds |" >>"$WORK/summary.md"
echo "|---|---|---:|" >>"$WORK/summary.md"

STEP_FAILED=0
# step NAME LIMIT CMD...: run CMD under LIMIT seconds, append its section to the report.
step() {
  local name=$1 limit=$2
  shift 2
  local log="$WORK/step.log" t0 t1 rc status
  echo "== $name (limit ${limit}s): $*" >&2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  t1=$(date +%s)
  status=ok
  [ "$rc" = 0 ] || status="FAILED (exit $rc)"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="TIMED OUT after ${limit}s"
  [ "$rc" = 0 ] || STEP_FAILED=1
  echo "| $name | $status | $((t1 - t0)) |" >>"$WORK/summary.md"
  {
    echo "## $name: $status, $((t1 - t0)) s"
    echo
    echo "\`$*\`"
    echo
    echo '```'
    grep -v -e 'it/s\]' -e 's/it\]' "$log" | tail -n 60
    echo '```'
    echo
  } >>"$WORK/steps.md"
  echo "   $status in $((t1 - t0)) s" >&2
  return "$rc"
}

GPU_TEST_FILES=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
TESTS_RC=0
# shellcheck disable=SC2086
step "GPU-marked tests" "${LIMITS[0]}" "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs \
  $GPU_TEST_FILES || TESTS_RC=1
step "merge speed" "${LIMITS[1]}" "$PY" benchmarks/merge_speed.py "${MERGE_ARGS[@]}" \
  --workdir "$WORK/merge"
rm -rf "$WORK/merge"
step "kinship speed" "${LIMITS[2]}" "$PY" benchmarks/kinship_speed.py "${KIN_ARGS[@]}"
ZOO="$WORK/zoo"
if step "synthetic zoo ($SIZE)" "${LIMITS[5]}" "$PY" benchmarks/synthetic.py "$ZOO" --size "$SIZE"; then
  step "search speed" "${LIMITS[3]}" "$PY" benchmarks/search_speed.py --zoo "$ZOO" \
    --device "$DEV" "${SEARCH_ARGS[@]}"
  step "DAM steps" "${LIMITS[4]}" "$PY" benchmarks/dam_speed.py --zoo "$ZOO" --device "$DEV" \
    "${DAM_ARGS[@]}"
fi

{
  echo "## Summary"
  echo
  cat "$WORK/summary.md"
  echo
  cat "$WORK/steps.md"
} >>"$REPORT"

echo "report: $REPORT" >&2
if [ "$TESTS_RC" != 0 ]; then exit 1; fi
if [ "$STEP_FAILED" != 0 ]; then exit 2; fi
exit 0
