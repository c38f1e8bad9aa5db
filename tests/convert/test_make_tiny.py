"""make-tiny writes loadable, consistent, deterministic tiny Wan/VAE/UMT5/Qwen3.5-VLM/Qwen3-LM folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wallwm_pretrain.convert.errors import ConvertError
from wallwm_pretrain.convert.tiny import FOLDERS, make_tiny

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "wan"
    res = subprocess.run([sys.executable, "-m", "wallwm_pretrain.convert", "make-tiny", "--out",
                          str(out), "--seed", "3"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def test_folders_load_with_their_own_libraries_and_fit_together(tiny):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    assert sorted(p.name for p in tiny.iterdir()) == sorted(FOLDERS)
    vae = AutoencoderKLWan.from_pretrained(tiny / "vae")
    enc = UMT5EncoderModel.from_pretrained(tiny / "text_encoder")
    tok = AutoTokenizer.from_pretrained(tiny / "tokenizer")
    # WanTransformer3DModel.from_pretrained needs `accelerate` (its fp32-kept modules force
    # low_cpu_mem_usage); config + safetensors read the same files without it.
    dit = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(tiny / "transformer"))
    missing, unexpected = dit.load_state_dict(
        load_file(tiny / "transformer" / "diffusion_pytorch_model.safetensors"), strict=True)
    assert not missing and not unexpected
    z = vae.config.z_dim
    assert dit.config.in_channels == dit.config.out_channels == z
    assert dit.config.text_dim == enc.config.d_model
    assert dit.config.image_dim is None
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == z
    assert enc.config.vocab_size == len(tok)
    # 1 + 4k frames -> 1 + k latents; spatial compression as the config says
    with torch.no_grad():
        lat = vae.encode(torch.zeros(1, 3, 9, 16, 16)).latent_dist.mode()
    s = vae.config.scale_factor_spatial
    assert tuple(lat.shape) == (1, z, 3, 16 // s, 16 // s)
    assert vae.config.scale_factor_temporal == 4
    ids = tok("pick up the red block")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and tok.unk_token_id not in ids
    with torch.no_grad():
        states = enc(input_ids=torch.tensor([ids])).last_hidden_state
        out = dit(torch.randn(1, z, 3, 4, 4), timestep=torch.tensor([10]),
                  encoder_hidden_states=states).sample
    assert out.shape == (1, z, 3, 4, 4) and torch.isfinite(out).all()


def test_vlm_folder_loads_and_reads_a_camera_view(tiny):
    import numpy as np
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3_5ForConditionalGeneration

    folder = tiny / "vlm"
    model = Qwen3_5ForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    cfg = model.config
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    pix = proc(images=[np.zeros((32, 32, 3), np.uint8)], return_tensors="pt")
    assert pix["image_grid_thw"].tolist() == [[1, 4, 4]]  # 32x32 kept: 4x4 patches -> 4 tokens
    turn = tok.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "open the drawer"}]}], tokenize=False)
    ids = torch.tensor([tok(turn.replace("<|image_pad|>", "<|image_pad|>" * 4),
                            add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pix["pixel_values"],
                    image_grid_thw=pix["image_grid_thw"],
                    mm_token_type_ids=(ids == cfg.image_token_id).int())
    assert out.logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(out.logits).all()


def test_small_lm_folder_loads_and_continues_a_trace(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

    folder = tiny / "small_lm"
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id
    trace = "Task: open the drawer. Done: nothing. Now: reach the handle. Next: pull it. Why: to open the drawer."
    ids = tok(trace, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == trace
    assert len(ids) < 40  # the trace words are whole tokens, not bytes
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits
    assert out.shape == (1, len(ids), len(tok)) and torch.isfinite(out).all()
    # not near uniform: the random LM is confident enough for a soft prefix to steer it
    assert out.softmax(-1).max(-1).values.mean() > 0.2


def test_same_seed_same_bytes_other_seed_other_weights(tiny, tmp_path):
    again = make_tiny(tmp_path / "again", seed=3)["vae"].parent
    other = make_tiny(tmp_path / "other", seed=4)["vae"].parent
    a, b, c = _files(tiny), _files(again), _files(other)
    assert a == b
    weights = [k for k in a if k.endswith(".safetensors")]
    assert len(weights) == 5 and {"vlm/model.safetensors", "small_lm/model.safetensors"} <= set(weights)
    assert all(a[k] != c[k] for k in weights)
    # the tokenizers are trained on the built-in corpus, not drawn from the seed
    assert a["vlm/tokenizer.json"] == c["vlm/tokenizer.json"]
    assert a["small_lm/tokenizer.json"] == c["small_lm/tokenizer.json"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConvertError, match="mine"):
        make_tiny(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_help_names_every_folder():
    res = subprocess.run([sys.executable, "-m", "wallwm_pretrain.convert", "make-tiny", "--help"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for name in FOLDERS:
        assert f"{name}/" in res.stdout
