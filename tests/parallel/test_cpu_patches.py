"""The CPU patches for megatron-core: they apply, they work, and they fail loudly if stale."""

import inspect

import pytest
import torch

from wallwm_pretrain.parallel import cpu_patches



def test_patch_targets_still_look_as_expected():
    # If megatron-core moves or fixes one of these, this fails and the patch needs a look.
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mp_random
    from megatron.core.transformer import utils as tf_utils

    assert hasattr(mp_random, "_CUDA_RNG_STATE_TRACKER")
    assert "_CUDA_RNG_STATE_TRACKER_INITIALIZED" in inspect.getsource(mp_random.initialize_rng_tracker)
    assert 'torch.zeros([], dtype=torch.int, device="cuda")' in inspect.getsource(schedules)
    assert "torch.cuda.current_device()" in inspect.getsource(
        __import__("megatron.core.utils", fromlist=["GlobalMemoryBuffer"]).GlobalMemoryBuffer
    )
    # megatron DDP allocates its gradient buffers on torch.cuda.current_device() (patch 1)
    from megatron.core.distributed import param_and_grad_buffer

    assert "device=torch.cuda.current_device()" in inspect.getsource(param_and_grad_buffer._ParamAndGradBuffer)
    if not cpu_patches.patches_active():
        assert 'device="cuda"' in inspect.getsource(tf_utils.get_default_causal_mask)


def test_pipeline_p2p_cuda_assumptions_are_what_we_work_around():
    """The pipeline schedules' p2p allocates receive buffers on torch.cuda.current_device()
    (patch 1), and its batched p2p ends in torch.cuda.synchronize(), which a CPU build lacks;
    cpu_patches.pipeline_config_overrides therefore turns batch_p2p_comm off on CPU. If megatron
    drops the synchronize, batched p2p could be used on CPU too."""
    from megatron.core.pipeline_parallel import p2p_communication

    source = inspect.getsource(p2p_communication.P2PCommunicator._communicate)
    assert "device=torch.cuda.current_device()" in source
    assert "if config.batch_p2p_comm and config.batch_p2p_sync:" in source
    assert "torch.cuda.synchronize()" in source.split("if config.batch_p2p_comm and config.batch_p2p_sync:")[1]
    # and our config does turn it off on CPU
    from wallwm_pretrain.config import ModelConfig
    from wallwm_pretrain.parallel.pipeline import pipeline_config
    from wallwm_pretrain.parallel.state import ParallelContext

    ctx = ParallelContext(0, 2, 0, 1, 2, 1, 0, 0, 0, torch.device("cpu"), "gloo")
    config = pipeline_config(ModelConfig(num_layers=2), ctx)
    assert cpu_patches.pipeline_config_overrides("cuda") == {}
    assert not config.batch_p2p_comm and config.pipeline_dtype == torch.float32
    assert config.calculate_per_token_loss and config.pipeline_model_parallel_size == 2


def test_stale_target_is_reported():
    def no_marker():
        return None

    with pytest.raises(cpu_patches.MegatronPatchError, match="may be stale"):
        cpu_patches._require_source(no_marker, 'device="cuda"')


def test_megatron_attention_runs_on_cpu(single_process):
    from megatron.core.transformer import utils as tf_utils

    from wallwm_pretrain.config import ModelConfig
    from wallwm_pretrain.model.spec import build_transformer_config, self_attention

    assert cpu_patches.patches_active()
    config = build_transformer_config(ModelConfig(hidden_size=32, num_heads=4))
    attn = self_attention(config, 1, pg_collection=single_process.pg_collection)
    x = torch.randn(6, 2, 32)
    mask = torch.zeros(2, 1, 1, 6, dtype=torch.bool)
    out, _ = attn(x, attention_mask=mask)
    assert out.shape == (6, 2, 32) and torch.isfinite(out).all()
    causal = tf_utils.get_default_causal_mask(4)
    assert causal.device.type == "cpu" and causal[0, 1] and not causal[1, 0]


def test_rng_tracker_forks_named_cpu_streams(single_process):
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    assert isinstance(tracker, cpu_patches.CpuRNGStatesTracker)
    outer = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outer), "fork must restore the default stream"
    with tracker.fork():
        b = torch.rand(3)
    assert not torch.equal(a, b), "the forked stream advances"
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        c = torch.rand(3)
    assert torch.equal(a, c), "same seed -> same model-parallel stream"


def test_schedule_zeros_redirected(single_process):
    from megatron.core.pipeline_parallel import schedules

    z = schedules.torch.zeros([], dtype=torch.int, device="cuda")
    assert z.device.type == "cpu"
    assert schedules.torch.ones is torch.ones
