#!/usr/bin/env bash
# The first GPU figures of the project in one prepared run (make gpu-check; docs/benchmarks.md).
#
#   bench/gpu_check.sh --prepare        here, on the CPU machine: the shards and tiny models of the
#                                       smoke runs, packed into .gpu/data.tar.gz (with make gpu-wheels:
#                                       .gpu/wheels), to travel with the working tree
#   bench/gpu_check.sh                  on the GPU machine (one H100 or H200, no package registry):
#                                       install .gpu/wheels offline, then every part below
#   bench/gpu_check.sh --dry-run        the same parts at tiny sizes on the CPU, in the current
#                                       environment, no wheelhouse (tests/bench/test_gpu_check.py)
#   options: --out DIR (default: $OUT if set, else .gpu/out), --only "part part ..."
#   The device call: carry [".gpu/wheels", ".gpu/data.tar.gz"], command "bench/gpu_check.sh --out $OUT", timeout_s 600; back come
#   gpu_check.json, gpu_check.md and logs.tar.gz (the logs are packed on the GPU).
#
# Parts, each with its own time budget (timeout) so that a slow part cannot eat the others; every
# result is appended to DIR/gpu_check.json (bench/gpu_check.py record/...; a table in
# DIR/gpu_check.md), and each part's output goes to DIR/logs/PART.log:
#   install        the venv (--system-site-packages over the image's CUDA torch) and the wheels
#   smoke-test     make smoke-train on cuda:0 in bf16 (train to SMOKE_STOP, save, resume to the end)
#                  plus a straight run to SMOKE_STOP + 20: losses fall, resume exact, samples/s
#   smoke-wan      make smoke-wan-train on cuda:0 in bf16 (the converted tiny Wan tower)
#   attention      the attention core's SDPA kernel at the training shapes (bench/gpu_check.py attention)
#   mfu-adamw      the 5B preset's Wan path at 10 layers: tokens/s, MFU, memory vs the planner, AdamW
#   mfu-muon       the same with Muon + AdamW: Muon's share of the step
#   inference-*    the Wan tower's denoising forward per chunk at 1/2/4/10 steps: eager, and
#                  torch.compile with CUDA graphs (mode reduce-overhead)
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)

MODE=gpu
PREPARE=0
OUT_DIR=${OUT:-.gpu/out}
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --prepare) PREPARE=1 ;;
    --out) OUT_DIR=$2; shift ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

set -a  # every setting below reaches the parts, which run in their own bash under timeout
PY=${PYTHON:-python3}
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "$MODE" = dry ]; then
  WORK=$OUT_DIR/work
  DEV=cpu; PREC=fp32; SIZE=tiny
  SMOKE_EPISODES=6; WAN_EPISODES=4
  FALL=""; SMOKE_STOP=3; SMOKE_EXTRA="train.steps=6 train.save_every=3 train.log_every=1 data.batch_size=4"
  WAN_STOP=2; WAN_EXTRA="train.steps=4 train.save_every=2 train.log_every=1"
  MFU_ARGS="--layers 2 --steps 2 --warmup 1"
  INF_ARGS="--layers 2 --reps 1 --precision bf16"; ATT_ARGS="--reps 1"
  INF_MODES="eager"
  # the dry run's budgets only stop a hang: a shared 2-core machine under load is slow
  budgets="B_INSTALL=5 B_DATA=900 B_SMOKE=900 B_WAN=900 B_ATT=600 B_MFU=600 B_INF=600 B_INF_GRAPH=600 B_TOTAL=7200"
else
  WORK=.gpu/work
  DEV=cuda; PREC=bf16; SIZE=gpu
  SMOKE_EPISODES=48; WAN_EPISODES=12
  SMOKE_STOP=200; SMOKE_EXTRA=""; FALL=--require-fall
  WAN_STOP=20; WAN_EXTRA=""
  MFU_ARGS="--layers 10 --steps 4 --warmup 2"
  INF_ARGS="--layers 30 --reps 3"; ATT_ARGS="--reps 3"
  INF_MODES="eager cudagraph"
  # seconds. B_TOTAL caps the whole run at 8 minutes on one H100: a part gets what is left of it
  # when that is less than its own budget, and is skipped when under 10 s are left
  budgets="B_INSTALL=60 B_DATA=30 B_SMOKE=100 B_WAN=45 B_ATT=30 B_MFU=85 B_INF=50 B_INF_GRAPH=80 B_TOTAL=480"
fi
for b in $budgets; do  # an environment variable of the same name wins (e.g. B_MFU=120)
  name=${b%%=*}
  [ -n "${!name:-}" ] || eval "$name=${b#*=}"
done
SMOKE_SHARDS=$WORK/shards/smoke
WAN_SHARDS=$WORK/shards/smoke-wan
WAN_INIT=$WORK/models/smoke-wan-init
RUNS=$WORK/runs
DATA_TAR=.gpu/data.tar.gz
set +a

# ------------------------------------------------------------------------------------ prepare
# The smoke runs' shards and the converted tiny Wan tower, made with the full environment (the data
# tools need PyAV and the caption encoder, which do not travel to the GPU machine).
prepare() {
  local synth=$WORK/synth
  make --no-print-directory smoke-data PYTHON="$PY" SMOKE_SYNTH="$synth/smoke" SMOKE_SHARDS="$SMOKE_SHARDS" \
    SMOKE_EPISODES=$SMOKE_EPISODES &&
  make --no-print-directory wan-data PYTHON="$PY" WAN_SYNTH="$synth/smoke-wan" WAN_SHARDS="$WAN_SHARDS" \
    WAN_MODELS="$WORK/models/tiny-wan" WAN_INIT="$WAN_INIT" WAN_EPISODES=$WAN_EPISODES
}

if [ $PREPARE = 1 ]; then
  [ "$MODE" = dry ] && { echo "--prepare builds the GPU run's data; --dry-run prepares its own" >&2; exit 2; }
  rm -rf "$WORK" && mkdir -p .gpu || exit 1
  prepare || { echo "prepare failed" >&2; exit 1; }
  tar -czf "$DATA_TAR" -C "$WORK" shards models/smoke-wan-init || exit 1
  rm -rf "$WORK" .gpu/out  # only the wheels and the packed data travel
  echo "wrote $DATA_TAR ($(du -h "$DATA_TAR" | cut -f1)); with .gpu/wheels: $(du -sh .gpu 2>/dev/null | cut -f1) to carry"
  echo "on the GPU machine: bench/gpu_check.sh --out \$OUT   (carry .gpu/wheels and $DATA_TAR)"
  exit 0
fi

mkdir -p "$OUT_DIR/logs"
export MODE OUT_DIR ONLY JSON=$OUT_DIR/gpu_check.json
rm -f "$JSON"

# ------------------------------------------------------------------------------------ parts
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# part NAME BUDGET_S COMMAND...: run under its budget, output to logs/NAME.log, one status record
part() {
  local name=$1 budget=$2; shift 2
  wanted "$name" || return 0
  local log=$OUT_DIR/logs/$name.log t0 t1 rc status left
  left=$((B_TOTAL - ($(date +%s) - START)))
  if [ "$left" -lt 10 ]; then
    "$PY" bench/gpu_check.py record --json "$JSON" --part "$name" --status skipped --field stage=run \
      --note "the run's total budget (B_TOTAL=${B_TOTAL}s) is spent" >/dev/null
    echo "== $name skipped: total budget spent"
    return 0
  fi
  [ "$left" -lt "$budget" ] && budget=$left
  echo "== $name (budget ${budget}s)"
  t0=$(date +%s.%N)
  timeout -k 10 "$budget" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  "$PY" bench/gpu_check.py record --json "$JSON" --part "$name" --status $status \
    --seconds "$(awk "BEGIN {print $t1 - $t0}")" --field stage=run --field rc=$rc --field budget_s="$budget" \
    --note "$( [ $status = ok ] || tail -n 4 "$log" | tr '\n' ' ' | cut -c1-600)" >/dev/null \
    || echo "could not record $name" >&2
  echo "   $status ($rc) in $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")s"
}

install_env() {
  # The image's python3 is itself a venv (/opt/torch/.venv): a venv made from it with
  # --system-site-packages sees the *base* interpreter's packages, not the image's torch. Where
  # torch is then not importable, a .pth file adds the image's site-packages behind the venv's own.
  local venv=${GPU_VENV:-/tmp/wallwm-gpu-venv} base=$PY
  [ -d .gpu/wheels ] || { echo "no .gpu/wheels: make gpu-wheels here first"; return 1; }
  rm -rf "$venv"
  # without ensurepip in the image, a venv without pip: the image's own pip is seen through it
  "$base" -m venv --system-site-packages "$venv" || "$base" -m venv --system-site-packages --without-pip "$venv" \
    || return 1
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    local site
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$base" -c "import site, sys; print('\n'.join(p for p in sys.path if p.endswith('-packages')))" >"$site/_image_site.pth"
    echo "torch was not visible through --system-site-packages; added $(tr '\n' ' ' <"$site/_image_site.pth")"
  fi
  "$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || return 1
  # only the wheelhouse: no index, no pip configuration of the machine
  local pip=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null
             "$venv/bin/python" -m pip install --disable-pip-version-check --no-index --find-links .gpu/wheels --no-compile)
  if ! "${pip[@]}" -r bench/gpu_wheels.txt; then
    echo "resolution against the image failed; installing the wheels with --no-deps"
    "${pip[@]}" --no-deps .gpu/wheels/*.whl || return 1
  fi
  "$venv/bin/python" -m wallwm_pretrain.envcheck --train
}

unpack_data() {
  if [ -f "$DATA_TAR" ]; then
    rm -rf "$WORK" && mkdir -p "$WORK" && tar -xzf "$DATA_TAR" -C "$WORK"
  else
    echo "no $DATA_TAR (bench/gpu_check.sh --prepare): making the data here"
    prepare
  fi
}

# The smoke runs' training halves: make smoke-train / smoke-wan-train, or, on a machine without
# make, the same two commands that those targets run (the Makefile's smoke_train / wan_train)
smoke_test() {
  local straight=$((SMOKE_STOP + 20)) args=(data.shards="$SMOKE_SHARDS" train.runs_root="$RUNS"
        train.device=$DEV train.precision=$PREC $SMOKE_EXTRA)
  [ "$MODE" = dry ] && straight=$((SMOKE_STOP + 2))
  if command -v make >/dev/null; then
    make --no-print-directory smoke-train PYTHON="$PY" ENVCHECK=--train RUNS="$RUNS" SMOKE_SHARDS="$SMOKE_SHARDS" \
      SMOKE_STOP=$SMOKE_STOP SMOKE_ARGS="train.device=$DEV train.precision=$PREC $SMOKE_EXTRA" || return 1
  else
    echo "no make on this machine: the commands of make smoke-train"
    rm -rf "$RUNS/smoke"
    "$PY" -m wallwm_pretrain.train --config configs/smoke.yaml train.resume=none train.stop_after=$SMOKE_STOP \
      "${args[@]}" && "$PY" -m wallwm_pretrain.train --config configs/smoke.yaml train.resume=auto "${args[@]}" \
      || return 1
  fi
  "$PY" -m wallwm_pretrain.train --config configs/smoke.yaml train.resume=none train.stop_after=$straight \
    train.run_name=smoke-straight "${args[@]}" || return 1
  "$PY" bench/gpu_check.py smoke --json "$JSON" --part smoke-test-result --runs "$RUNS" --run smoke \
    --straight smoke-straight --stop $SMOKE_STOP --log "$OUT_DIR/logs/smoke-test.log" --planner-dims 48 $FALL
}

smoke_wan() {
  local args=(model.init_from="$WAN_INIT" data.shards="$WAN_SHARDS" train.runs_root="$RUNS" train.device=$DEV
        train.precision=$PREC $WAN_EXTRA)
  if command -v make >/dev/null; then
    make --no-print-directory smoke-wan-train PYTHON="$PY" ENVCHECK=--train RUNS="$RUNS" WAN_SHARDS="$WAN_SHARDS" \
      WAN_INIT="$WAN_INIT" WAN_STOP=$WAN_STOP WAN_ARGS="train.device=$DEV train.precision=$PREC $WAN_EXTRA" \
      || return 1
  else
    echo "no make on this machine: the commands of make smoke-wan-train"
    rm -rf "$RUNS/smoke-wan"
    OMP_NUM_THREADS=1 "$PY" -m wallwm_pretrain.train --config "$WAN_INIT/config.yaml" train.resume=none \
      train.stop_after=$WAN_STOP "${args[@]}" && OMP_NUM_THREADS=1 "$PY" -m wallwm_pretrain.train \
      --config "$WAN_INIT/config.yaml" train.resume=auto "${args[@]}" || return 1
  fi
  "$PY" bench/gpu_check.py smoke --json "$JSON" --part smoke-wan-result --runs "$RUNS" --run smoke-wan \
    --stop $WAN_STOP --log "$OUT_DIR/logs/smoke-wan.log" $FALL
}

export -f prepare install_env unpack_data smoke_test smoke_wan
START=$(date +%s)
export START
echo "gpu-check ($MODE) -> $JSON"
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/logs/nvidia-smi.log" 2>&1
  part install $B_INSTALL install_env
  if [ -x "${GPU_VENV:-/tmp/wallwm-gpu-venv}/bin/python" ]; then PY=${GPU_VENV:-/tmp/wallwm-gpu-venv}/bin/python; fi
  part data $B_DATA unpack_data
else
  "$PY" bench/gpu_check.py record --json "$JSON" --part install --status skipped \
    --note "dry run: the current environment, no wheelhouse" >/dev/null
  part data $B_DATA prepare
fi
"$PY" bench/gpu_check.py record --json "$JSON" --part env --status ok --field mode="\"$MODE\"" \
  --field python="\"$("$PY" -c 'import sys; print(sys.version.split()[0])')\"" \
  --field torch="\"$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)\"" \
  --field gpu="\"$(head -n 1 "$OUT_DIR/logs/nvidia-smi.log" 2>/dev/null)\"" >/dev/null

part smoke-test $B_SMOKE smoke_test
part smoke-wan $B_WAN smoke_wan
part attention $B_ATT "$PY" bench/gpu_check.py attention --json "$JSON" --size $SIZE --device $DEV $ATT_ARGS
part mfu-adamw $B_MFU "$PY" bench/gpu_check.py mfu --json "$JSON" --size $SIZE --device $DEV --optimizer adamw $MFU_ARGS
part mfu-muon $B_MFU "$PY" bench/gpu_check.py mfu --json "$JSON" --size $SIZE --device $DEV --optimizer muon $MFU_ARGS
for m in $INF_MODES; do
  b=$B_INF; [ $m = eager ] || b=$B_INF_GRAPH  # compilation comes first
  part inference-$m $b "$PY" bench/gpu_check.py inference --json "$JSON" --size $SIZE --device $DEV --mode $m $INF_ARGS
done

"$PY" bench/gpu_check.py summary --json "$JSON" >/dev/null
"$PY" bench/gpu_check.py record --json "$JSON" --part total --status ok --seconds $(( $(date +%s) - START )) >/dev/null
"$PY" bench/gpu_check.py table --json "$JSON" --md "$OUT_DIR/gpu_check.md"
if [ "$MODE" = gpu ]; then  # three files to bring back: the JSON, the table and the logs packed
  tar -czf "$OUT_DIR/logs.tar.gz" -C "$OUT_DIR" logs && rm -rf "$OUT_DIR/logs"
fi
