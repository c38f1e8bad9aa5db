"""Shards -> training batches: cookers, caption drop, collate, the loader."""

from wallwm_pretrain.data.badinput import BadInputError
from wallwm_pretrain.data.collate import collate
from wallwm_pretrain.data.cookers import SampleError, TrainSample
from wallwm_pretrain.data.loader import EventLoader, ShardError, read_index

__all__ = ["BadInputError", "EventLoader", "SampleError", "ShardError", "TrainSample", "collate", "read_index"]
