#!/usr/bin/env bash
# Frozen-model preparation of a shard folder across nodes: encode-latents or embed-captions as
# one task per node (srun), each task doing every world-th shard (its SLURM_PROCID of
# SLURM_NTASKS), then one --finalize that checks every shard was done exactly once and writes
# index.json. The folder must be on a file system every node sees.
#
#   sbatch launch/prepare.sh encode-latents --shards /data/shards/l1 \
#       --vae /models/Wan2.2-TI2V-5B-Diffusers/vae --device cuda --batch-size 2
#   sbatch --nodes 8 launch/prepare.sh embed-captions --shards /data/shards/l1 \
#       --text-encoder /models/Wan2.2-TI2V-5B-Diffusers/text_encoder --device cuda
#   sbatch --nodes 4 --ntasks-per-node 8 --gpus-per-task 1 launch/prepare.sh encode-latents ...
#
# Resumable: a job that ends early (time limit, a lost node) is submitted again with the same
# arguments, with the same or another number of tasks; every task skips the shards any task
# recorded. With several tasks on a node give each its GPU (--gpus-per-task=1, which sets
# CUDA_VISIBLE_DEVICES per task). Environment knobs: PYTHON (default python).
#SBATCH --job-name=wallwm-prepare
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

VERB=${1:?usage: sbatch launch/prepare.sh encode-latents|embed-captions --shards DIR MODEL-FLAGS...}
case "$VERB" in
  encode-latents|embed-captions) ;;
  *) echo "launch/prepare.sh: $VERB is not encode-latents or embed-captions" >&2; exit 2 ;;
esac
shift
: "${SLURM_JOB_ID:?not inside a Slurm job (run python -m data_tools $VERB directly on one machine)}"
PYTHON=${PYTHON:-python}
export PYTHONUNBUFFERED=1
say() { echo "$(date '+%F %T') job $SLURM_JOB_ID: $*"; }
say "$VERB on ${SLURM_NTASKS:-1} task(s) over ${SLURM_JOB_NUM_NODES:-1} node(s)"

# every task: its share of the shards (rank and world from SLURM_PROCID / SLURM_NTASKS)
srun --kill-on-bad-exit=1 "$PYTHON" -m data_tools "$VERB" "$@" --quiet
say "all tasks done; finalising"
# once: every shard done exactly once, then index.json (the model flags are not used here)
"$PYTHON" -m data_tools "$VERB" "$@" --finalize
say "finished"
