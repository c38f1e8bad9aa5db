"""The transfers of distributed Muon: one uneven all-to-all over a TP x DP group, started
asynchronously, and a pending transfer with what to do once it has arrived (so the optimizer
can keep one bucket's transfer in flight while it computes on the previous one)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


class Pending:
    """An in-flight transfer and what to do with its result."""

    def __init__(self, work, finish: Callable[[], dict]) -> None:
        self.work, self._finish = work, finish

    def result(self) -> dict:
        if self.work is not None:
            self.work.wait()
        return self._finish()


def start_all_to_all(chunks_by_dst: list[list[Tensor]], recv_sizes: list[int], dtype: torch.dtype, device,
                     group) -> tuple:
    """Start one ``all_to_all_single`` over ``group``: rank r is sent ``chunks_by_dst[r]`` flattened
    and cast to ``dtype``, and ``recv_sizes[r]`` elements come from rank r.

    Returns:
        ``(work, out)``: the async work handle and the flat receive buffer (valid after ``work.wait()``).
    """
    send_sizes = [sum(c.numel() for c in chunks) for chunks in chunks_by_dst]
    flat = [c.reshape(-1).to(dtype) for chunks in chunks_by_dst for c in chunks]
    inp = torch.cat(flat) if flat else torch.empty(0, dtype=dtype, device=device)
    out = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
    work = dist.all_to_all_single(out, inp, recv_sizes, send_sizes, group=group, async_op=True)
    return work, out
