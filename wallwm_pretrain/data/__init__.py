"""Shards -> training batches: cookers, caption drop, collate, the loader; the data modes
(``modes/``) say which of them a run uses."""

from wallwm_pretrain.data.badinput import BadInputError
from wallwm_pretrain.data.collate import collate
from wallwm_pretrain.data.cookers import SampleError, TrainSample
from wallwm_pretrain.data.errors import InputError, ShardError
from wallwm_pretrain.data.index import read_index
from wallwm_pretrain.data.loader import EventLoader

__all__ = ["BadInputError", "InputError", "EventLoader", "SampleError", "ShardError", "TrainSample", "collate", "read_index"]
