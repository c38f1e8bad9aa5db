"""One gloo rank of the Wan tower's parallel equivalence tests (see test_wan_tower_parallel.py).

``tp``: two tensor-parallel ranks hold the tower's heads and FFN width, loaded from the
canonical (whole-tensor) state through the checkpoint layer's own cut (``local_model_states``);
``pp``: two pipeline ranks hold one block each and pass the packed streams (and their gradient)
with send/recv. Each rank saves its output and its gradients gathered to whole tensors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wan_tiny import inputs  # noqa: E402


def run_rank(rank: int, world: int, mode: str, rdzv: str, out_dir: str, folder: str, views: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from wallwm_pretrain.model.pipeline_slice import PipelineSlice
    from wallwm_pretrain.model.wan import WanConfig, WanTower, load_diffusers_folder
    from wallwm_pretrain.optim.tp_matrices import TensorParallelMatrices
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel
    from wallwm_pretrain.checkpoint.canonical import local_model_states

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    tp, pp = (1, 2) if mode == "pp" else (2, 1)
    ctx = init_parallel(tp, pp, "cpu", seed=0)
    canonical = torch.load(Path(out_dir) / "canonical.pt", weights_only=False)
    cfg = WanConfig.from_diffusers(load_diffusers_folder(folder)[0], num_views=views)
    part = None if pp == 1 else PipelineSlice(ctx.pp_rank, 1, embed=ctx.pp_rank == 0, head=ctx.pp_rank == 1)
    tower = WanTower(cfg, part, pg_collection=ctx.pg_collection, seed=0)
    tower.load_state_dict(local_model_states([tower], canonical, ctx)[0])

    latents, timestep, text, weights = inputs(views=views)
    latents.requires_grad_(True)
    out = None
    if pp == 1:
        out = tower(latents, timestep, text)
        (out * weights).sum().backward()
    else:
        geo = tower.geometry(latents, timestep, text)
        group = ctx.pg_collection.pp
        peer = dist.get_global_rank(group, 1 - ctx.pp_rank)
        if ctx.pp_rank == 0:
            packed = tower(latents, timestep, text)
            dist.send(packed.detach().contiguous(), peer)
            grad = torch.empty_like(packed)
            dist.recv(grad, peer)
            packed.backward(grad)
        else:
            hidden = torch.empty(tower.packed_shape(geo))
            dist.recv(hidden, peer)
            hidden.requires_grad_(True)
            out = tower(latents, timestep, text, hidden=hidden)
            (out * weights).sum().backward()
            dist.send(hidden.grad.contiguous(), peer)
    matrices = TensorParallelMatrices(ctx.pg_collection.tp if tp > 1 else None, ctx.tp_rank, ctx.tp)
    grads = {n: matrices.gather(p, p.grad) for n, p in tower.named_parameters()}
    after = None
    if mode == "tp_step":  # one optimizer step of the run's optimizer set (owner-mode Muon, AdamW)
        from _wan_tiny import OPTIM

        from wallwm_pretrain.optim import build_optimizer
        from wallwm_pretrain.parallel.state import optimizer_groups

        optim = build_optimizer(tower, OPTIM, 10, optimizer_groups(ctx))
        optim.finish_grad_sync()
        optim.clip_grad_norm(OPTIM.grad_clip)
        optim.step()
        after = {n: matrices.gather(p, p.detach()) for n, p in tower.named_parameters()}
    record = {"out": None if out is None else out.detach(), "grads": grads, "after": after,
              "sharded": sorted(n for n, p in tower.named_parameters() if getattr(p, "tensor_model_parallel", False)
                                and getattr(p, "partition_dim", -1) >= 0 and tp > 1),
              "latents_grad": latents.grad}
    torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    shutdown_parallel()
