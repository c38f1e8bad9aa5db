"""The same video as Wan's own pipeline: the project's Wan video sampler (eval/wan_video.py) on the
tiny Wan of ``convert make-tiny``, converted into the project's tower, against diffusers'
``WanImageToVideoPipeline`` with ``expand_timesteps=True`` (the Wan2.2 TI2V-5B setting) on the
diffusers folders themselves, for the same first frame, prompt, seed, scheduler and steps: final
latents within 1e-4, decoded frames within one uint8 step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wallwm_pretrain.eval.wan_video import make_scheduler, sample_video
from wallwm_pretrain.model.wan import WanTower, convert_tower_state
from wallwm_pretrain.model.wan.frozen import frozen_wan
from wallwm_pretrain.model.wan.text import pad_text_context

PROMPT = "pick up the red block and place it in the bowl"
TEXT_LEN, SIZE, FRAMES, SEED = 64, 16, 9, 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from wallwm_pretrain.convert.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("wan_video") / "models", seed=0)


@pytest.fixture(scope="module")
def first_frame():
    g = np.random.default_rng(3)
    return g.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _pipeline(tiny, scheduler):
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    return WanImageToVideoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(tiny["tokenizer"], local_files_only=True),
        text_encoder=UMT5EncoderModel.from_pretrained(tiny["text_encoder"], local_files_only=True),
        vae=AutoencoderKLWan.from_pretrained(tiny["vae"], local_files_only=True),
        transformer=WanTransformer3DModel.from_pretrained(tiny["transformer"], local_files_only=True),
        scheduler=scheduler, expand_timesteps=True)


def _ours(tiny, first_frame, scheduler, steps, guidance):
    cfg, state, _ = convert_tower_state(tiny["transformer"])
    tower = WanTower(cfg).eval()
    tower.load_state_dict(state)
    frozen = frozen_wan(tiny["vae"], tiny["text_encoder"], tiny["tokenizer"])
    states, valid = frozen.text_batch([PROMPT, ""])
    text, _ = pad_text_context(states, valid, TEXT_LEN)
    return sample_video(tower, frozen, torch.from_numpy(first_frame)[None], text[:1], FRAMES, steps,
                        torch.Generator().manual_seed(SEED), scheduler=scheduler, negative=text[1:],
                        guidance=guidance)


def _theirs(tiny, first_frame, scheduler, steps, guidance, output_type):
    from PIL import Image

    from diffusers import WanPipeline

    pipe = _pipeline(tiny, scheduler)
    # the prompt through diffusers' WanPipeline.encode_prompt: the image-to-video pipeline's own copy
    # calls ftfy unconditionally (diffusers 0.42.1), which this environment does not install
    text = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=None, scheduler=None)
    with torch.no_grad():
        cond, uncond = text.encode_prompt(PROMPT, negative_prompt="", do_classifier_free_guidance=True,
                                          max_sequence_length=TEXT_LEN, device=torch.device("cpu"))
    return pipe(image=Image.fromarray(first_frame), prompt_embeds=cond, negative_prompt_embeds=uncond,
                height=SIZE, width=SIZE,
                num_frames=FRAMES, num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(SEED), max_sequence_length=TEXT_LEN,
                output_type=output_type).frames


@pytest.mark.parametrize("scheduler, steps, guidance", [("euler", 4, 1.0), ("euler", 3, 4.0), ("unipc", 4, 1.0)])
def test_the_video_sampler_reproduces_wan_i2v_pipeline(tiny, first_frame, scheduler, steps, guidance):
    ours = _ours(tiny, first_frame, make_scheduler(scheduler, 5.0), steps, guidance)
    latents = _theirs(tiny, first_frame, make_scheduler(scheduler, 5.0), steps, guidance, "latent")
    assert ours.latents.shape == latents.shape == (1, 4, 3, SIZE // 4, SIZE // 4)
    torch.testing.assert_close(ours.latents, latents, rtol=0, atol=1e-4)
    frames = _theirs(tiny, first_frame, make_scheduler(scheduler, 5.0), steps, guidance, "np")  # [1, T, H, W, 3] in [0, 1]
    want = np.round(np.asarray(frames) * 255).astype(np.int16)
    got = ours.frames.numpy().astype(np.int16)
    assert got.shape == want.shape == (1, FRAMES, SIZE, SIZE, 3)
    assert np.abs(got - want).max() <= 1
    # not a constant video: the denoised frames differ from the first frame and from each other
    assert np.abs(got[0, 1:] - got[0, :1]).max() > 1 and np.abs(got[0, -1] - got[0, 1]).max() > 1


def test_another_prompt_changes_the_video_but_not_the_condition(tiny, first_frame):
    base = _ours(tiny, first_frame, make_scheduler("euler", 5.0), 2, 1.0).latents
    cfg, state, _ = convert_tower_state(tiny["transformer"])
    tower = WanTower(cfg).eval()
    tower.load_state_dict(state)
    frozen = frozen_wan(tiny["vae"], tiny["text_encoder"], tiny["tokenizer"])
    states, valid = frozen.text_batch(["open the drawer"])
    other = sample_video(tower, frozen, torch.from_numpy(first_frame)[None], pad_text_context(states, valid, TEXT_LEN)[0],
                         FRAMES, 2, torch.Generator().manual_seed(SEED), decode=False).latents
    assert (other[:, :, 1:] - base[:, :, 1:]).abs().max() > 1e-3
    assert torch.equal(other[:, :, 0], base[:, :, 0])  # the same first frame: the same condition latent
    with pytest.raises(ValueError, match="1 \\+ 4 k frames"):
        sample_video(tower, frozen, torch.from_numpy(first_frame)[None], states, 6, 2, torch.Generator())
