"""Train a WALL-WM-style model.

    python -m wallwm_pretrain.train --config configs/smoke.yaml train.steps=50 data.batch_size=4
    torchrun --nproc-per-node 4 -m wallwm_pretrain.train --config configs/smoke.yaml

Every ``key=value`` is checked against the schema in ``wallwm_pretrain/config.py`` before any
work starts; a mistyped key fails naming the nearest valid one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings

from wallwm_pretrain.config import ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.train",
        description="Pretrain a dual-tower world-action model on WebDataset event shards.",
        epilog="Example: python -m wallwm_pretrain.train --config configs/smoke.yaml train.steps=50",
    )
    parser.add_argument("--config", action="append",
                        help="YAML preset in configs/ (default: schema defaults); given again, merged in order "
                             "(e.g. a size preset, then a stage preset of configs/stages/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.01 data.batch_size=4"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGUSR1/SIGTERM only set a flag from here on (their default is to kill the process), so a
    # warning that arrives during the imports and set-up still leads to a save
    from wallwm_pretrain.resilience.stop import StopRequests

    stop_requests = StopRequests()
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("megatron").setLevel(logging.WARNING)
    # megatron-core warns at import about optional GPU-only extensions (apex, TE)
    warnings.filterwarnings("ignore", module="megatron")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from wallwm_pretrain.checkpoint import CheckpointError
    from wallwm_pretrain.data import InputError
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.resilience.exit import stop_exit_code, write_exit_record
    from wallwm_pretrain.resilience.nonfinite import NonFiniteError
    from wallwm_pretrain.resilience.watchdog import PeerFailure
    from wallwm_pretrain.trainer import Trainer

    try:
        summary = Trainer(cfg, stop_requests).train()
    except (ConfigError, InputError, CheckpointError, NonFiniteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if rank == 0:
            write_exit_record("failed", -1, type(exc).__name__)
        return 2
    except PeerFailure as exc:
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)  # the failure as raised
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if rank == 0:
            write_exit_record("failed", -1, "peer failure")
        # no orderly shutdown: its barrier would wait on the peer that failed
        sys.stderr.flush()
        os._exit(1)
    except BaseException:
        if rank == 0:
            write_exit_record("failed", -1, "exception")
        raise
    finally:
        shutdown_parallel()
    if rank == 0:
        print(summary.render(), flush=True)
        # a launcher behind torchrun sees only torchrun's code: it reads this record instead
        write_exit_record("requeue" if summary.stopped else "finished", summary.end_step, summary.stopped)
    # 75 (EX_TEMPFAIL): saved on request (signal, wall time), not finished: run again to continue
    # (0 under torchrun restarts, which would take 75 for a failure: exit.stop_exit_code)
    return stop_exit_code() if summary.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
