"""Record Meta-World expert demonstrations with event annotations (LeRobot v3.0 + events.jsonl).

Runs Meta-World's scripted experts (metaworld.policies) headless on MuJoCo, renders the chosen
cameras upright, and segments each episode into L1 events from the expert's phases (reach,
descend, grasp, transport, pull, press ...) with L2 subtasks and an L3 task caption. State
(--state proprio): hand x/y/z (m), gripper opening (0 closed .. 1 open), hand velocity (m/s);
--state full: the raw 39-D observation. Action: hand dx/dy/dz (1 = 1 cm per step) and grip
effort (+1 close, -1 open), as executed. 80 frames per second (one per env step). Episodes
whose expert never succeeds are counted and left out unless --keep-failures. Rendering uses
MUJOCO_GL (default: egl, else osmesa); the same arguments give the same files.

example:
  python -m data_tools record-metaworld --out data/metaworld/demo --episodes-per-task 10 --seed 0
  python -m data_tools record-metaworld --out /tmp/mw --tasks pick-place-v3 drawer-open-v3 \\
      button-press-topdown-v3 --episodes-per-task 20 --seed 1 --image-size 96 \\
      --cameras corner corner2 gripperPOV --action-noise 0.1
  python -m data_tools build-shards --src data/metaworld/demo --out data/shards/mw --level L1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_verb_parser

DEFAULT_TASKS = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3"]
# tests/data_tools/test_dt_metaworld.py holds this list equal to sim.metaworld.SPECS.
TASK_NAMES = ["pick-place-v3", "push-v3", "reach-v3", "drawer-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "button-press-v3", "door-open-v3",
              "window-open-v3", "window-close-v3", "button-press-wall-v3",
              "button-press-topdown-wall-v3", "coffee-button-v3", "handle-press-v3",
              "plate-slide-v3", "plate-slide-side-v3", "coffee-push-v3", "push-wall-v3",
              "pick-place-wall-v3", "reach-wall-v3"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _noise(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a noise level in [0, 1]")
    return value


def _image_size(text: str) -> int:
    value = int(text)
    if value < 16 or value % 2:
        raise argparse.ArgumentTypeError(f"{text} must be an even number of pixels, at least 16")
    return value


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "record-metaworld", __doc__)
    p.add_argument("--out", type=Path, required=True,
                   help="output dataset folder (replaced if it already holds a LeRobot dataset)")
    p.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=DEFAULT_TASKS,
                   metavar="TASK",
                   help=f"Meta-World v3 tasks to record, in order (default: "
                        f"{' '.join(DEFAULT_TASKS)}; choices: {', '.join(TASK_NAMES)})")
    p.add_argument("--episodes-per-task", type=_positive, required=True,
                   help="expert episodes to run per task; failed ones are left out unless "
                        "--keep-failures")
    p.add_argument("--seed", type=int, required=True,
                   help="random seed of layouts, noise and captions; same seed, same files")
    p.add_argument("--image-size", type=_image_size, default=64,
                   help="camera image height and width in pixels, even (default 64)")
    p.add_argument("--cameras", nargs="+", default=["corner", "gripperPOV"], metavar="CAMERA",
                   help="Meta-World cameras to record: topview, corner, corner2, corner3, "
                        "corner4, behindGripper, gripperPOV (default: corner gripperPOV)")
    p.add_argument("--action-noise", type=_noise, default=0.0,
                   help="std of Gaussian noise added to the expert's actions (range -1..1) "
                        "before execution; the noisy action is recorded (default 0)")
    p.add_argument("--max-steps", type=_positive, default=200,
                   help="steps before an episode without success is cut off (default 200)")
    p.add_argument("--steps-after-success", type=_non_negative_int, default=10,
                   help="steps recorded after the first success, so the video shows the end "
                        "state (default 10)")
    p.add_argument("--keep-failures", action="store_true",
                   help="also write episodes whose expert did not succeed within --max-steps")
    p.add_argument("--min-event-steps", type=_positive, default=4,
                   help="expert phases shorter than this many steps are merged into their "
                        "neighbour (threshold flicker) (default 4)")
    p.add_argument("--state", choices=("proprio", "full"), default="proprio",
                   help="observation.state: proprio = hand xyz, gripper opening, hand velocity "
                        "(7-D); full = Meta-World's 39-D observation (default proprio)")
    p.add_argument("--antialias", action="store_true",
                   help="4x multisample anti-aliasing: smoother edges, about half the "
                        "rendering speed on a CPU")
    p.add_argument("--vcodec", choices=("h264", "av1"), default="h264",
                   help="video codec: h264 (libx264) or av1 (libsvtav1) (default h264)")
    p.add_argument("--frames-per-file", type=_positive, default=100_000,
                   help="start a new data/video file after this many frames (default 100000)")
    add_progress_flag(p)
    p.set_defaults(run=run)


def looks_like_dataset(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def run(args: argparse.Namespace) -> int:
    from ..fsutil import staged_output
    from ..metaworld import RecordConfig, record_metaworld

    cfg = RecordConfig(
        tasks=list(args.tasks), episodes_per_task=args.episodes_per_task, seed=args.seed,
        image_size=args.image_size, cameras=list(args.cameras), action_noise=args.action_noise,
        max_steps=args.max_steps, steps_after_success=args.steps_after_success,
        keep_failures=args.keep_failures, min_event_steps=args.min_event_steps,
        state=args.state, antialias=args.antialias, vcodec=args.vcodec,
        frames_per_file=args.frames_per_file)
    with staged_output(args.out, looks_like_dataset) as tmp:
        summary = record_metaworld(tmp, cfg, progress=not args.quiet)
    for task, c in summary["per_task"].items():
        failed = c["attempted"] - c["successful"]
        note = "kept" if args.keep_failures else "left out"
        print(f"{task}: {c['successful']}/{c['attempted']} expert episodes succeeded"
              + (f", {failed} failed ({note})" if failed else ""))
    print(f"wrote {summary['episodes']} episodes, {summary['frames']} frames, "
          f"{summary['events']} events to {args.out} in {summary['seconds']:.1f} s "
          f"(MUJOCO_GL={summary['gl_backend']})")
    return 0
