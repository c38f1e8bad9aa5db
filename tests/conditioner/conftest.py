"""Fixtures for the text conditioner: a tiny synthetic world, its event and conditioner shards
(with the tiny UMT5's caption states) and make-tiny's models (the tiny random Qwen3.5 VLM in
``vlm/``), all built once per session with the commands' own functions."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cond_world(tmp_path_factory) -> dict[str, Path]:
    """models/ (make-tiny), events/ (L1 event shards), cond/ (conditioner shards + text states),
    heldout/ (conditioner shards of other episodes)."""
    import torch

    from data_tools.conditioner import build_conditioner
    from data_tools.shards import build_shards
    from data_tools.synthworld import synthesize
    from data_tools.textstates import embed_captions
    from wallwm_pretrain.convert.tiny import make_tiny

    base = tmp_path_factory.mktemp("cond")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = make_tiny(base / "models", seed=0)["vae"].parent
        out = {"models": models}
        for name, episodes, seed in (("", 6, 7), ("heldout_", 3, 8)):
            synthesize(base / f"{name}synth", episodes, seed, progress=False)
            build_shards(base / f"{name}synth", base / f"{name}events", level="L1", seed=0, image_size=32,
                         samples_per_shard=8, progress=False)
            build_conditioner(base / f"{name}events", base / f"{name}cond", per_event=2, samples_per_shard=16,
                              progress=False)
            out[f"{name}events"], out[f"{name}cond"] = base / f"{name}events", base / f"{name}cond"
        embed_captions(out["cond"], models / "text_encoder", progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
