"""Which part of the dual-tower model one pipeline rank holds, and how its weights are drawn.

(A *pipeline* stage: the word "stage" alone names the training stages of the recipe.)

A pipeline rank holds consecutive *coupled layers* (video block i and action block i together, so the
coupling never crosses a pipeline boundary), plus the input side (patchify, embeddings, caption encoder,
timestep embedders) when it is the first pipeline rank and the output side (final layers, losses)
when it is the last. :class:`PipelineSlice` only says which; deciding the split over ranks is the
business of ``wallwm_pretrain.parallel`` (the model creates no process group; it only passes
the ones it is given to its megatron layers).

Initial weights must not depend on the split, or a pipelined run would start from another
model than the single-process run. Each part (the input side, each coupled layer, the output
side) is therefore drawn from its own generator state, derived from one base seed and the
part's name; a pipeline rank that builds only some parts draws exactly the weights those parts have in
the whole model. Trade-off: the model's initial weights differ from a plain sequential draw
from the global RNG, and one int is drawn from it to derive the base seed.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PipelineSlice:
    """The part of the model one pipeline rank (or virtual-pipeline chunk) holds.

    Args:
        first_layer: index of its first coupled layer (0-based, in the whole model).
        num_layers: how many consecutive coupled layers it holds.
        embed: it holds the input side (it is the first pipeline rank).
        head: it holds the output side and computes the losses (it is the last pipeline rank).
    """

    first_layer: int
    num_layers: int
    embed: bool
    head: bool

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)

    @classmethod
    def whole(cls, num_layers: int) -> "PipelineSlice":
        """The whole model in one pipeline rank (no pipeline)."""
        return cls(0, num_layers, embed=True, head=True)

    @classmethod
    def of(cls, part: "PipelineSlice | None", num_layers: int) -> "PipelineSlice":
        """``part`` (None = the whole model), checked to lie inside ``num_layers`` coupled layers.

        Raises:
            ValueError: the slice reaches outside the model's layers, naming both.
        """
        part = part or cls.whole(num_layers)
        if part.first_layer < 0 or part.num_layers < 1 or part.layers.stop > num_layers:
            raise ValueError(
                f"pipeline slice layers {part.first_layer}..{part.layers.stop - 1} are not inside the model's "
                f"{num_layers} coupled layers (0..{num_layers - 1})"
            )
        return part


def draw_base_seed() -> int:
    """One draw from torch's global (CPU) RNG: the seed every part's weights derive from.

    Drawn on the CPU explicitly, so a model built under ``torch.device("meta")`` (the memory
    plan) draws the same seed and consumes the same RNG state as one built on the CPU.
    """
    return int(torch.randint(0, 2**62, (1,), device="cpu").item())


@contextlib.contextmanager
def part_rng(base_seed: int, part: str):
    """Run the block with the global CPU RNG seeded for ``part`` only, then restore it.

    Weights are drawn on CPU (megatron's ``use_cpu_initialization``, torch's default init), so
    the CPU generator is the only one that matters.
    """
    digest = hashlib.sha256(f"{base_seed}/{part}".encode()).digest()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        yield
