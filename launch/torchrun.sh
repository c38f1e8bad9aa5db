#!/usr/bin/env bash
# One-node launch:   launch/torchrun.sh configs/smoke.yaml train.steps=50
# NPROC (default: number of GPUs, or 1 on a CPU-only machine) processes on this node.
set -euo pipefail
CONFIG=${1:?usage: launch/torchrun.sh CONFIG [key=value ...]}
shift
PYTHON=${PYTHON:-python}
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
  -m wallwm_pretrain.train --config "$CONFIG" "$@"
