#!/usr/bin/env bash
# Submit a training recipe's stages to Slurm as a dependency chain: one launch/pretrain.sh job
# per stage, each starting once the one before it ended well (--dependency=afterok), so stage
# N+1 reads stage N's final checkpoint (its run folder's newest) as model.init_from.
#
#   launch/recipe.sh configs/recipes/wallwm_wan22_5b.yaml [key=value ...]      (on a login node)
#
# Stages already complete are not submitted; a stage with an earlier checkpoint resumes from it.
# A job that pretrain.sh requeues (time limit) stays pending for its dependants until it
# finishes; a failed stage cancels the rest of the chain (--kill-on-invalid-dep=yes).
# Per-stage sbatch options come from the recipe (a stage's `slurm:` list); SBATCH_ARGS adds
# options to every job (e.g. SBATCH_ARGS="--partition=gpu --account=me"). Environment knobs of
# pretrain.sh (PYTHON, NPROC_PER_NODE, ...) pass through (sbatch exports the environment).
set -euo pipefail
RECIPE=${1:?usage: launch/recipe.sh RECIPE [key=value ...]}
shift
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=$(basename "$RECIPE" .yaml)

# one line per stage still to run: name, presets (comma-separated), sbatch options, train overrides,
# separated by 0x1f
PLAN=$("$PYTHON" -m wallwm_pretrain.recipe --recipe "$RECIPE" --plan "$@")
if [ -z "$PLAN" ]; then
  echo "every stage of $RECIPE is complete: nothing to submit"
  exit 0
fi
read -ra EXTRA <<< "${SBATCH_ARGS:-}"
PREV=""
while IFS=$'\x1f' read -r NAME CONFIGS SLURM_OPTS TRAIN_ARGS; do
  eval "OPTS=($SLURM_OPTS)"
  eval "ARGS=($TRAIN_ARGS)"
  DEP=()
  if [ -n "$PREV" ]; then DEP=(--dependency="afterok:$PREV" --kill-on-invalid-dep=yes); fi
  JOB=$(sbatch --parsable "${DEP[@]}" --job-name "$PREFIX-$NAME" "${OPTS[@]}" "${EXTRA[@]}" \
        "$HERE/pretrain.sh" "$CONFIGS" "${ARGS[@]}")
  JOB=${JOB%%;*}
  echo "stage $NAME: job $JOB${PREV:+ (after job $PREV)}"
  PREV=$JOB
done <<< "$PLAN"
