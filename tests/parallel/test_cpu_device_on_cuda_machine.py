"""``train.device=cpu`` on a machine that has CUDA: megatron-core still gets the CPU patches.

The test process pretends CUDA is present (``torch.cuda.is_available`` answers True, as on a GPU
node) and asks for the CPU; megatron's attention, RNG tracker and causal mask must then run on
CPU tensors exactly as on a CPU-only machine. Runs in its own interpreter, so the pretence and
the patches stay out of the test session.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import torch
torch.cuda.is_available = lambda: True  # a GPU node, as far as the framework can tell
from megatron.core import tensor_parallel
from megatron.core.transformer import utils as tf_utils
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.spec import build_transformer_config, self_attention
from wallwm_pretrain.parallel import cpu_patches, init_parallel, shutdown_parallel

ctx = init_parallel(1, 1, "cpu", seed=0)
assert ctx.device.type == "cpu" and ctx.backend == "gloo", (ctx.device, ctx.backend)
assert cpu_patches.patches_active()
assert isinstance(tensor_parallel.get_cuda_rng_tracker(), cpu_patches.CpuRNGStatesTracker)
attn = self_attention(build_transformer_config(ModelConfig(hidden_size=32, num_heads=4)), 1)
out, _ = attn(torch.randn(6, 2, 32), attention_mask=torch.zeros(2, 1, 1, 6, dtype=torch.bool))
assert out.device.type == "cpu" and torch.isfinite(out).all()
assert tf_utils.get_default_causal_mask(4).device.type == "cpu"
shutdown_parallel()
print("cpu path ok")
"""


def test_cpu_device_is_patched_where_cuda_is_available():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("MASTER_ADDR", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "cpu path ok" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
