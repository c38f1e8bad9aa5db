#!/usr/bin/env bash
# Multi-node pretraining on Slurm: one torchrun per node (srun), c10d rendezvous on the job's
# first node, one process per GPU (or NPROC_PER_NODE processes on CPU nodes, gloo).
#
#   sbatch launch/pretrain.sh configs/smoke.yaml train.steps=1000
#   sbatch --nodes 4 --gpus-per-node 8 launch/pretrain.sh configs/NAME.yaml parallel.tp=2 parallel.pp=2
#
# Logs: runs/slurm/<job name>-<job id>/node-<N>.log (one per node) beside Slurm's own output.
# Environment knobs: PYTHON (interpreter, default python), NPROC_PER_NODE (default: GPUs on
# the node, else 1), MASTER_PORT (default 29500), WALLWM_LOG_ROOT (default runs/slurm).
#SBATCH --job-name=wallwm-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch launch/pretrain.sh CONFIG [key=value ...]}
shift

: "${SLURM_JOB_ID:?not inside a Slurm job (use launch/torchrun.sh on one node)}"
PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if command -v scontrol >/dev/null 2>&1; then
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else  # a plain comma-separated node list
  MASTER_ADDR=${SLURM_JOB_NODELIST%%,*}
fi
MASTER_PORT=${MASTER_PORT:-29500}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
LOG_DIR=${WALLWM_LOG_ROOT:-runs/slurm}/${SLURM_JOB_NAME:-wallwm}-${SLURM_JOB_ID}
mkdir -p "$LOG_DIR"

# NCCL: surface errors instead of hanging; keep CPU threads per process sane.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$NPROC_PER_NODE} / NPROC_PER_NODE ))}
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}
export PYTHONUNBUFFERED=1

echo "job $SLURM_JOB_ID: $NNODES nodes x $NPROC_PER_NODE processes, rendezvous $MASTER_ADDR:$MASTER_PORT, logs $LOG_DIR"
# Arguments travel to every node as one quoted string; SLURM_NODEID is set per node by srun.
ARGS=$(printf '%q ' "$@")
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c "
  exec \"$PYTHON\" -m torch.distributed.run \
    --nnodes $NNODES --nproc-per-node $NPROC_PER_NODE \
    --rdzv-backend c10d --rdzv-endpoint $MASTER_ADDR:$MASTER_PORT --rdzv-id $SLURM_JOB_ID \
    -m wallwm_pretrain.train --config \"$CONFIG\" $ARGS \
    > \"$LOG_DIR/node-\${SLURM_NODEID:-0}.log\" 2>&1
"
