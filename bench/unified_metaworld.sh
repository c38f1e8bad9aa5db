#!/usr/bin/env bash
# Meta-World closed loop in unified mode with each of the three text-context sources (atomic,
# global, staircase) and in event mode (script and predicted events) for one unified-mode
# checkpoint, next to the event-mode checkpoint it started from, on the same tasks, episodes and
# seeds (docs/unified.md).
#
#   bash bench/unified_metaworld.sh [WORK]        (default WORK=runs/cond_mw)
#
# It continues bench/conditioner_metaworld.sh's WORK folder (recordings, L1 event shards, the
# event-mode towers, the conditioner and its event-mode results) and adds, with the commands a
# user runs: conditioner shards with reasoning traces and the Staircase branch (stage 4) on them,
# episode shards (build-episodes), the unified-mode towers started from the event-mode ones with
# the conditioner's heads and the Staircase branch as context sources, then
# `python -m wallwm_pretrain.eval --context atomic global staircase` and, on the same checkpoint,
# `--mode event --events script predicted`.
set -euo pipefail
WORK=${1:-runs/cond_mw}
PY=${PYTHON:-python}
TASKS="pick-place-v3 drawer-open-v3 button-press-topdown-v3"
[ -f "$WORK/eval/results.json" ] || bash bench/conditioner_metaworld.sh "$WORK"
$PY -m wallwm_pretrain.convert make-tiny --out "$WORK/models" --seed 0
$PY -m data_tools build-conditioner --src "$WORK/L1" --out "$WORK/cond2" --per-event 3 --samples-per-shard 128 --quiet
OMP_NUM_THREADS=1 $PY -m data_tools embed-captions --shards "$WORK/cond2" --text-encoder "$WORK/models/text_encoder"
OMP_NUM_THREADS=1 $PY -m wallwm_pretrain.train --config configs/smoke_staircase.yaml data.shards="$WORK/cond2" \
  model.conditioner.vlm="$WORK/models/vlm" model.staircase.small_lm="$WORK/models/small_lm" train.steps=300 \
  train.runs_root="$WORK/runs" train.run_name=staircase train.resume=auto tracking.enabled=false
$PY -m data_tools build-episodes --shards "$WORK/L1" --out "$WORK/episodes" --quiet
OMP_NUM_THREADS=1 $PY -m wallwm_pretrain.train --config configs/metaworld.yaml --config configs/smoke_unified.yaml \
  data.shards="$WORK/episodes" data.length_buckets=[16] data.balance.alpha_vl=1 data.balance.alpha_action=1 \
  model.init_from="$WORK/runs/event" \
  model.conditioner.vlm="$WORK/models/vlm" model.conditioner.caption_tokens=32 model.conditioner.align_tokens=32 \
  model.context.conditioner_from="$WORK/runs/conditioner" model.context.staircase_from="$WORK/runs/staircase" \
  train.steps=1000 train.log_every=100 train.save_every=500 \
  train.runs_root="$WORK/runs" train.run_name=unified train.resume=auto tracking.enabled=false
$PY -m wallwm_pretrain.eval --ckpt "$WORK/runs/unified" --mode unified --env metaworld --tasks $TASKS --episodes 20 \
  --seed 0 --context atomic global staircase --out "$WORK/eval_unified" --no-tracking --quiet --threads 1
$PY -m wallwm_pretrain.eval --ckpt "$WORK/runs/unified" --mode event --env metaworld --tasks $TASKS --episodes 20 \
  --seed 0 --events script predicted --conditioner "$WORK/runs/conditioner" --out "$WORK/eval_unified_event" \
  --no-tracking --quiet --threads 1
cat "$WORK/eval/results.md" "$WORK/eval_unified/results.md" "$WORK/eval_unified_event/results.md"
