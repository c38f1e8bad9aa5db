#!/usr/bin/env bash
# Multi-node pretraining on Slurm: one torchrun per node (srun), c10d rendezvous on the job's
# first node, one process per GPU (or NPROC_PER_NODE processes on CPU nodes, gloo).
#
#   sbatch launch/pretrain.sh configs/smoke.yaml train.steps=1000
#   sbatch launch/pretrain.sh configs/wallwm_wan22_5b.yaml,configs/stages/1_video.yaml data.shards=...
#   sbatch --nodes 4 --gpus-per-node 8 launch/pretrain.sh configs/NAME.yaml parallel.tp=2 parallel.pp=2
#
# Time limits and preemption: Slurm sends SIGUSR1 to this script WARN_S seconds before the time
# limit (--signal=B:USR1@300 below); the script forwards it to the training processes, which
# agree at the next step boundary, save and exit; the script then requeues the job
# (scontrol requeue), which resumes from that checkpoint (train.resume=auto) and appends to the
# same logs and the same MLflow run. SIGTERM (scancel, preemption) is forwarded too: the run
# saves if it can, and the job is not requeued by this script. A run that reached train.steps
# is never requeued. The trainer's verdict comes back through an exit record
# ($WALLWM_EXIT_FILE, one line: finished | requeue | failed), since torchrun reports any
# failing worker as exit code 1.
#
# A lost rank (a worker killed, or a rank that stops because a peer died: the trainer detects
# it within seconds) makes torchrun start every node's workers again (--max-restarts
# MAX_RESTARTS, default 3, per node), within the allocation: they resume from the newest complete
# checkpoint, and the node log and MLflow say which restart it is and how the previous attempt
# ended. Once the budget is spent the job fails (not requeued).
#
# Logs: runs/slurm/<job name>-<job id>/node-<N>.log (one per node, appended across requeues)
# beside Slurm's own output (%x-%j.out, appended too).
# Environment knobs: PYTHON (interpreter, default python), NPROC_PER_NODE (default: GPUs on
# the node, else 1), MASTER_PORT (default 29500), WALLWM_LOG_ROOT (default runs/slurm),
# SHUTDOWN_TIMEOUT (seconds torchrun waits for the workers to save and exit after a signal
# before it kills them; default 600, keep it below the --signal lead time), MAX_RESTARTS
# (restarts after a lost rank, default 3; 0: a lost rank ends the run).
#SBATCH --job-name=wallwm-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch launch/pretrain.sh CONFIG[,CONFIG...] [key=value ...]}
shift
# several presets, comma-separated, merge in order (a size preset, then a stage preset)
CONFIG_ARGS=""
IFS=',' read -ra CONFIGS <<< "$CONFIG"
for c in "${CONFIGS[@]}"; do CONFIG_ARGS+="--config $(printf '%q' "$c") "; done

: "${SLURM_JOB_ID:?not inside a Slurm job (use launch/torchrun.sh on one node)}"
PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
# the first node's address as Slurm itself reaches it (NodeAddr; the node name where none is set)
FIRST_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$FIRST_NODE" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
MASTER_ADDR=${MASTER_ADDR:-$FIRST_NODE}
MASTER_PORT=${MASTER_PORT:-29500}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-600}
MAX_RESTARTS=${MAX_RESTARTS:-3}
LOG_DIR=${WALLWM_LOG_ROOT:-runs/slurm}/${SLURM_JOB_NAME:-wallwm}-${SLURM_JOB_ID}
mkdir -p "$LOG_DIR"

# NCCL: surface errors instead of hanging; keep CPU threads per process sane.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$NPROC_PER_NODE} / NPROC_PER_NODE ))}
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}
# restarted workers get a fresh store (rank 0's, on a new port each attempt) instead of the agent's
# long-lived one, where keys of the attempt that failed (a dead peer's address) are still found
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
export PYTHONUNBUFFERED=1
# the trainer's verdict (rank 0 writes it); stale from an earlier run of this job: removed
export WALLWM_EXIT_FILE="$LOG_DIR/exit-status"
rm -f "$WALLWM_EXIT_FILE"
# the job's end time, so the trainer saves before it even without the warning signal
END_TIME=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null || true)
if [[ "$END_TIME" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]]; then
  WALLWM_JOB_END_TIME=$(date -d "$END_TIME" +%s)
  export WALLWM_JOB_END_TIME
fi

say() { echo "$(date '+%F %T') job $SLURM_JOB_ID: $*"; }
say "run ${SLURM_RESTART_COUNT:-0} (requeues so far), $NNODES nodes x $NPROC_PER_NODE processes," \
    "rendezvous $MASTER_ADDR:$MASTER_PORT, ends ${END_TIME:-?}, up to $MAX_RESTARTS restart(s) after a lost rank," \
    "logs $LOG_DIR"

# Arguments travel to every node as one quoted string; SLURM_NODEID is set per node by srun.
# torchrun forwards SIGUSR1 and SIGTERM to its workers and gives them SHUTDOWN_TIMEOUT s to exit;
# until it has installed its handlers (rendezvous) it ignores SIGUSR1 rather than dying of it.
ARGS=$(printf '%q ' "$@")
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c "
  trap '' USR1
  exec \"$PYTHON\" -m torch.distributed.run \
    --nnodes $NNODES --nproc-per-node $NPROC_PER_NODE \
    --rdzv-backend c10d --rdzv-endpoint $MASTER_ADDR:$MASTER_PORT --rdzv-id $SLURM_JOB_ID \
    --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout $SHUTDOWN_TIMEOUT \
    --max-restarts $MAX_RESTARTS \
    -m wallwm_pretrain.train $CONFIG_ARGS $ARGS \
    >> \"$LOG_DIR/node-\${SLURM_NODEID:-0}.log\" 2>&1
" &
SRUN_PID=$!

# A trap runs between commands only: srun runs in the background and `wait` is interrupted by
# the signal, so the trap forwards at once; then we wait again for the training to finish.
RECEIVED=""
forward() {
  RECEIVED=$1
  say "received SIG$1: forwarding it to the training processes (they save at the next step boundary)"
  kill -s "$1" "$SRUN_PID" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while :; do
  RC=0
  wait "$SRUN_PID" || RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break  # gone: RC is srun's exit code
done
trap - USR1 TERM

STATUS=$(cat "$WALLWM_EXIT_FILE" 2>/dev/null || echo "none")
say "training ended (srun exit code $RC), trainer says: $STATUS"
case "$STATUS" in
  finished*)
    exit 0 ;;
  requeue*)
    if [ "$RECEIVED" = TERM ]; then
      say "saved after SIGTERM; not requeued (the job was cancelled or preempted)"
      exit 0
    fi
    say "requeueing: the next run resumes from the checkpoint just saved"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0 ;;
  *)
    say "not requeued: the training failed (a lost rank is restarted up to MAX_RESTARTS=$MAX_RESTARTS times first)"
    exit $(( RC == 0 ? 1 : RC )) ;;
esac
