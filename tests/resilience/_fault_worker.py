"""One rank of a trainer run with a fault injected into its data (for test_nonfinite.py).

``inject = (rank, i)`` puts a NaN into the ``i``-th batch that ``rank`` fetches; ``drop = i``
has every rank fetch its ``i``-th batch and throw it away (a loader that skips that batch).
Batches are counted as fetched, so a skipped update still consumes its batch.
"""

from __future__ import annotations

import os
import warnings

warnings.filterwarnings("ignore")


def run_rank(rank: int, world: int, port: int, out: str, overrides: list[str], inject=None, drop=None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    import torch

    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.parallel.parallelize import unwrap_model
    from wallwm_pretrain.trainer import Trainer

    class FaultyData(Trainer):
        fetched = 0

        def next_batch(self):
            batch = super().next_batch()
            index, self.fetched = self.fetched, self.fetched + 1
            if drop is not None and index == drop:
                batch = super().next_batch()
                self.fetched += 1
            if inject is not None and (rank, index) == tuple(inject):
                batch.actions[0, 0, 0] = float("nan")
            return batch

    trainer = FaultyData(load_config(None, overrides))
    try:
        summary = trainer.train()
        weights = {n: p.detach().clone() for m in trainer.model for n, p in unwrap_model(m).named_parameters()}
        torch.save({"losses": [v for _, v in trainer.history["loss"]], "skips": trainer.skips.state_dict(),
                    "weights": weights, "summary": summary, "fetched": trainer.fetched},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        shutdown_parallel()
