"""Run a training recipe: its stages in order, each a resumable ``wallwm_pretrain.train`` run.

    python -m wallwm_pretrain.recipe --recipe configs/recipes/smoke.yaml [key=value ...]

Stages whose final checkpoint is complete are skipped, an interrupted stage resumes, and one
summary table (stage, steps, first/last loss per term, checkpoint) ends the output. Exit code 0:
every stage complete; 75: a stage stopped before its end (run the same command again); else the
failing stage's. ``--plan`` prints the stages still to run, one per line, for
``launch/recipe.sh`` (which submits them to Slurm as a dependency chain).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from wallwm_pretrain.config import ConfigError

PLAN_SEP = "\x1f"  # not whitespace: `read` keeps an empty field (a stage without sbatch options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wallwm_pretrain.recipe", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="a recipe file (configs/recipes/*.yaml)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per stage (torchrun on this machine)")
    parser.add_argument("--plan", action="store_true",
                        help="print the stages still to run, one per line: name, presets, sbatch options, train "
                             "overrides (shell-quoted), separated by the ASCII unit separator (0x1f: a field may be "
                             "empty), and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every stage")
    args = parser.parse_args(argv)

    from wallwm_pretrain.recipe.runner import environment, run_recipe, slurm_plan
    from wallwm_pretrain.recipe.spec import read_recipe
    from wallwm_pretrain.recipe.summary import render_summary

    try:
        recipe = read_recipe(args.recipe)
        if args.plan:
            for stage, overrides in slurm_plan(recipe, args.overrides):
                print(PLAN_SEP.join([stage.name, ",".join(stage.config), shlex.join(stage.slurm), shlex.join(overrides)]))
            return 0
        code, states = run_recipe(recipe, args.overrides, args.nproc, environment())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_summary(recipe.name, states), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
