#!/usr/bin/env bash
# Meta-World closed loop with the next event chosen by the task's script vs by a trained text
# conditioner, for the same event-mode checkpoint, episodes and seeds (docs/conditioner.md).
#
#   bash bench/conditioner_metaworld.sh [WORK]        (default WORK=runs/cond_mw; ~25 min on 2 CPU cores)
#
# Every step is the command a user runs: record expert demonstrations, L1 event shards, the
# event-mode towers (configs/metaworld.yaml), conditioner shards of the same events with the
# tiny UMT5's caption states, the conditioner's heads on make-tiny's frozen random Qwen3.5 VLM,
# then `python -m wallwm_pretrain.eval --events script predicted`.
set -euo pipefail
WORK=${1:-runs/cond_mw}
PY=${PYTHON:-python}
TASKS="pick-place-v3 drawer-open-v3 button-press-topdown-v3"
mkdir -p "$WORK"
[ -d "$WORK/rec" ] || $PY -m data_tools record-metaworld --out "$WORK/rec" --tasks $TASKS --episodes-per-task 40 \
  --seed 0 --state full --action-noise 0.1 --quiet
[ -f "$WORK/L1/index.json" ] || $PY -m data_tools build-shards --src "$WORK/rec" --out "$WORK/L1" --level L1 \
  --samples-per-shard 32 --quiet
$PY -m wallwm_pretrain.convert make-tiny --out "$WORK/models" --seed 0
$PY -m data_tools build-conditioner --src "$WORK/L1" --out "$WORK/cond" --per-event 3 --samples-per-shard 128 --quiet
OMP_NUM_THREADS=1 $PY -m data_tools embed-captions --shards "$WORK/cond" --text-encoder "$WORK/models/text_encoder"
$PY -m wallwm_pretrain.train --config configs/metaworld.yaml data.shards="$WORK/L1" train.runs_root="$WORK/runs" \
  train.run_name=event train.resume=auto tracking.enabled=false
$PY -m wallwm_pretrain.train --config configs/smoke_conditioner.yaml data.shards="$WORK/cond" \
  model.conditioner.vlm="$WORK/models/vlm" model.conditioner.caption_tokens=32 model.conditioner.align_tokens=32 \
  train.runs_root="$WORK/runs" train.run_name=conditioner train.resume=auto tracking.enabled=false
$PY -m wallwm_pretrain.eval --ckpt "$WORK/runs/event" --env metaworld --tasks $TASKS --episodes 20 --seed 0 \
  --events script predicted --conditioner "$WORK/runs/conditioner" --out "$WORK/eval" --no-tracking --quiet
cat "$WORK/eval/results.md"
