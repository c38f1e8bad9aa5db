"""The trainer: builds a run from its config and runs the optimisation loop.

- :mod:`.loop`: :class:`Trainer`, set-up as the pipeline of a run and the loop itself;
- :mod:`.checkpointing`: resume, ``init_from``, save and flush (the checkpoint half);
- :mod:`.run_log`: the step line, progress, MLflow metrics, the loss curve and the summary;
- :mod:`.summary`: :class:`RunSummary`; :mod:`.rng`: the RNG states a resume restores.
"""

from wallwm_pretrain.trainer.loop import Trainer
from wallwm_pretrain.trainer.rng import rng_state, set_rng_state
from wallwm_pretrain.trainer.summary import RunSummary

__all__ = ["RunSummary", "Trainer", "rng_state", "set_rng_state"]
