"""Video-text alignment (issue 13 item 8): moving-shapes clips, frame sampling, temporal and PLLaVA pooling,
Slow-Fast routing, the VQ tokenizer and the masked-video-modelling objective."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlalign.config import RunConfig, apply_overrides
from vlalign.data.loader import collate
from vlalign.data.moving_shapes import (
    DIRECTIONS,
    Clip,
    MovingShapes,
    MovingShapesConfig,
    caption_of,
    counterfactual_captions,
    render_clip,
)
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError, DataError
from vlalign.eval.video import motion_accuracies
from vlalign.models import build_model
from vlalign.models.video import FrameSampler, SlowFastRouter, adaptive_token_pool, patch_similarity
from vlalign.models.positions import resample_positions
from vlalign.models.vq import PatchVQTokenizer, patchify, straight_through
from vlalign.objectives import build_objective
from vlalign.objectives.contrastive import clip_loss
from vlalign.objectives.video import masked_code_loss, vq_vae_loss

# ---------------------------------------------------------------------------------------------
# The clip generator


def test_clips_are_a_pure_function_of_seed_and_index():
    a, b = MovingShapes(20, seed=3), MovingShapes(20, seed=3)
    for i in (7, 0, 19, 7):  # any access order
        x, y = a[i], b[i]
        assert x.caption == y.caption and np.array_equal(x.image, y.image)
    assert a[5].image.shape == (8, 3, 32, 32) and a[5].image.dtype == np.uint8
    other = MovingShapes(20, seed=4)
    assert [a[i].caption for i in range(20)] != [other[i].caption for i in range(20)]


def _centroid(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(frame.sum(0))
    return ys.mean(), xs.mean()


def test_captions_and_labels_match_the_pixels():
    source = MovingShapes(150, seed=11, cfg=MovingShapesConfig(image_size=48))
    kinds = set()
    for i in range(len(source)):
        clip = source.clip(i)
        assert source[i].caption == caption_of(clip.events) == clip.caption
        frames = render_clip(clip, source.cfg)
        # objects never overlap: the clip is the pixel-wise max of its objects drawn alone
        alone = [render_clip(Clip((track,), ()), source.cfg) for track in clip.tracks]
        assert np.array_equal(frames, np.maximum.reduce(alone))
        for event in clip.events:
            kinds.add(event.kind)
            # the event's object: its shape, with the event's colour at the event's first frame
            (k,) = [k for k, t in enumerate(clip.tracks)
                    if t.shape == event.shape and t.colours[event.start] == event.colour]
            track, pixels = clip.tracks[k], alone[k]
            first, last = event.start, event.end - 1
            if event.kind == "move":
                (y0, x0), (y1, x1) = _centroid(pixels[first]), _centroid(pixels[last])
                dy, dx = DIRECTIONS[event.detail]
                cell = 48 / 3
                assert abs((y1 - y0) - dy * cell) < 2 and abs((x1 - x0) - dx * cell) < 2
            elif event.kind == "appear":
                assert not pixels[first].any() and pixels[last].any() and not track.visible[first]
            elif event.kind == "disappear":
                assert pixels[first].any() and not pixels[last].any()
            else:  # change: same place and shape, the new colour
                assert track.colours[last] == event.detail != event.colour
                assert np.array_equal(pixels[first].astype(bool).any(0), pixels[last].astype(bool).any(0))
        # one (colour, shape) per object at every frame, so "a red circle" names one object
        for t in range(source.cfg.num_frames):
            names = [(tr.colours[t], tr.shape) for tr in clip.tracks]
            assert len(set(names)) == len(names)
    assert kinds == {"move", "appear", "disappear", "change"}


def test_counterfactuals_flip_exactly_what_needs_the_order():
    clip = next(c for c in (MovingShapes(200, seed=2).clip(i) for i in range(200))
                if len(c.events) == 2 and {e.kind for e in c.events} >= {"move"}
                and any(e.kind in ("appear", "disappear") for e in c.events))
    flips = counterfactual_captions(clip.events)
    move = next(e for e in clip.events if e.kind == "move")
    assert f"moves {move.detail}" not in flips["direction"].split(", then ")[clip.events.index(move)]
    assert flips["order"] == ", then ".join(reversed(clip.caption.split(", then ")))
    assert set(flips.values()).isdisjoint({clip.caption})
    reversed_twice = counterfactual_captions(tuple(replace(e, detail={"left": "right", "right": "left", "up": "down",
                                                                      "down": "up"}.get(e.detail, e.detail))
                                                   for e in clip.events))["direction"]
    assert reversed_twice == clip.caption


def test_spec_builds_and_bad_specs_say_why():
    source = build_source("moving-shapes:n=5,seed=2,frames=6,events=1-1,objects=2,size=40")
    assert len(source) == 5 and source[0].image.shape == (6, 3, 40, 40)
    assert all(len(source.clip(i).events) == 1 for i in range(5))
    with pytest.raises(DataError, match="num_frames"):
        build_source("moving-shapes:n=5,frames=3,events=2")
    with pytest.raises(DataError, match="unknown option"):
        build_source("moving-shapes:n=5,colour=red")


# ---------------------------------------------------------------------------------------------
# Frame sampling and pooling


def test_uniform_sampling_takes_segment_centres_and_random_one_frame_per_segment():
    sampler = FrameSampler(4, "random").eval()
    assert sampler.indices(8, 2).tolist() == [[1, 3, 5, 7]] * 2  # floor((k + 0.5) * 8 / 4)
    assert sampler.indices(10, 1).tolist() == [[1, 3, 6, 8]]
    sampler.train()
    torch.manual_seed(0)
    drawn = sampler.indices(10, 500)  # [500, 4]
    bounds = [(math.floor(k * 10 / 4), math.floor((k + 1) * 10 / 4)) for k in range(4)]
    for k, (lo, hi) in enumerate(bounds):
        assert set(drawn[:, k].tolist()) == set(range(lo, hi))  # every frame of its segment, nothing else
    videos = torch.arange(10.0).view(1, 10, 1, 1, 1).expand(3, -1, 1, 2, 2)
    picked = sampler(videos)  # [3, 4, 1, 2, 2]
    assert picked.shape == (3, 4, 1, 2, 2) and (picked[..., 0, 0, 0].diff(dim=1) > 0).all()


def _adaptive_bins(n_in: int, n_out: int) -> list[range]:
    return [range(math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out)) for i in range(n_out)]


def test_pllava_pooling_equals_bin_means():
    torch.manual_seed(0)
    grids = torch.randn(2, 5, 4, 6, 3)  # [B, T, h, w, D], uneven bins on purpose
    out = adaptive_token_pool(grids, (2, 3, 4))
    assert out.shape == (2, 2, 3, 4, 3)
    for t, tb in enumerate(_adaptive_bins(5, 2)):
        for i, ib in enumerate(_adaptive_bins(4, 3)):
            for j, jb in enumerate(_adaptive_bins(6, 4)):
                ref = grids[:, list(tb)][:, :, list(ib)][:, :, :, list(jb)].mean((1, 2, 3))
                torch.testing.assert_close(out[:, t, i, j], ref)


def _video_model(vocab_size: int = 64, **video) -> torch.nn.Module:
    cfg = RunConfig()
    cfg.model.vision.size, cfg.model.text.size, cfg.model.vision.patch_size = "vit-micro", "text-micro", 8
    cfg.model.embed_dim = 16
    cfg.model.video = replace(cfg.model.video, frames=4, **video)
    torch.manual_seed(0)
    return build_model(cfg.model, 32, vocab_size, 16).eval()


def test_video_tower_tokens_match_a_plain_vit_pass():
    model = _video_model(tokens="pllava", pool_grid=[2, 2, 2])
    vision = model.vision
    videos = torch.randn(2, 8, 3, 32, 32)
    out = vision(videos)
    assert out.pooled.shape == (2, 64) and out.tokens.shape == (2, 8, 64)  # T'h'w' = 8 tokens
    frames = videos[:, [1, 3, 5, 7]].flatten(0, 1)  # uniform sampling of 4 of 8
    patches = super(type(vision), vision).forward(frames).tokens.view(2, 4, 4, 4, 64)  # [B, T, 4, 4, D]
    torch.testing.assert_close(out.tokens, adaptive_token_pool(patches, (2, 2, 2)).flatten(1, 3))
    assert out.patch_tokens == 2 * 4 * 16


def test_mean_pool_ignores_frame_order_and_attention_pool_does_not():
    videos = torch.randn(3, 4, 3, 32, 32)
    backwards = videos.flip(1)
    mean = _video_model(pool="mean").vision
    torch.testing.assert_close(mean(videos).pooled, mean(backwards).pooled, rtol=1e-5, atol=1e-5)
    attention = _video_model(pool="attention").vision
    with torch.no_grad():  # it starts near the mean pool (small weights); trained weights see the order
        for p in attention.temporal_pool.parameters():
            p.normal_()
    assert (attention(videos).pooled - attention(backwards).pooled).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------
# Slow-Fast routing


def _reference_routes(frames: torch.Tensor, patch: int, threshold: float, tolerance: float) -> list[list[bool]]:
    routes = []
    for clip in frames:
        slow, reference = [True], clip[0]
        for frame in clip[1:]:
            diffs = [(frame[:, y:y + patch, x:x + patch] - reference[:, y:y + patch, x:x + patch]).abs().mean()
                     for y in range(0, frame.shape[1], patch) for x in range(0, frame.shape[2], patch)]
            unchanged = sum(float(d) <= tolerance for d in diffs) / len(diffs)
            slow.append(unchanged <= threshold)
            if slow[-1]:
                reference = frame
        routes.append(slow)
    return routes


def test_slow_fast_routing_follows_the_rule_against_the_last_slow_frame():
    torch.manual_seed(0)
    frames = torch.zeros(2, 6, 3, 16, 16)  # 16 patches of 4x4
    # clip 0: one patch changes a little per frame; against the previous frame it never changes, but against
    # the last slow frame it drifts past the tolerance at frame 3
    for t in range(6):
        frames[0, t, :, :4, :4] = 0.03 * t
    # clip 1: one patch of 16 (6% > 5%) jumps at frame 2, then stays
    frames[1, 2:, :, 4:8, 4:8] = 1.0
    router = SlowFastRouter(4, threshold=0.95, tolerance=0.05)
    slow = router(frames)
    assert slow.tolist() == _reference_routes(frames, 4, 0.95, 0.05)
    assert slow.tolist() == [[True, False, True, False, True, False], [True, False, True, False, False, False]]
    noisy = torch.randn(3, 5, 3, 16, 16) * 0.05
    assert router(noisy).tolist() == _reference_routes(noisy, 4, 0.95, 0.05)
    assert patch_similarity(frames[1, 2:3], frames[1, 0:1], 4, 0.05).tolist() == [15 / 16]


def test_fast_frames_are_encoded_at_low_resolution():
    model = _video_model(slow_fast=True, fast_scale=2)
    videos = torch.zeros(2, 8, 3, 32, 32)
    videos[0, 4:, :, :8, :8] = 1.0  # clip 0 changes once (sampled frames 1, 3 | 5, 7): slow, fast, slow, fast
    out = model.vision(videos)
    assert out.slow.tolist() == [[True, False, True, False], [True, False, False, False]]
    assert out.patch_tokens == 3 * 16 + 5 * 4  # 16 patches at 32 px, 4 at 16 px


def test_positions_resample_to_the_fast_pathway_grid():
    pos = torch.randn(1, 16, 5)  # a 4x4 grid
    assert resample_positions(pos, 4) is pos
    assert resample_positions(pos, 2).shape == (1, 4, 5)
    constant = torch.ones(1, 16, 5)  # a constant table stays constant at any grid
    torch.testing.assert_close(resample_positions(constant, 2), torch.ones(1, 4, 5))


# ---------------------------------------------------------------------------------------------
# VQ tokenizer and masked video modelling


def test_straight_through_passes_the_gradient_to_the_latents_and_the_value_of_the_code():
    z = torch.randn(4, 3, requires_grad=True)
    q = torch.randn(4, 3, requires_grad=True)
    out = straight_through(z, q)
    torch.testing.assert_close(out, q)
    upstream = torch.randn(4, 3)
    out.backward(upstream)
    torch.testing.assert_close(z.grad, upstream)
    assert q.grad is None


def test_vq_tokenizer_picks_nearest_codes_and_its_loss_matches_the_formula():
    torch.manual_seed(0)
    vq = PatchVQTokenizer(4, 3, num_codes=8, code_dim=5)
    images = torch.randn(2, 3, 8, 8)
    out = vq(images)
    brute = torch.cdist(out.latents.reshape(-1, 5), vq.codebook).argmin(1).view(2, 4)
    assert torch.equal(out.codes, brute) and torch.equal(vq.encode(images), brute)
    torch.testing.assert_close(out.patches, patchify(images, 4))
    loss, _ = vq_vae_loss(out, commitment=0.25)
    z, e = out.latents, vq.codebook[brute]
    expected = ((out.reconstruction - out.patches) ** 2).mean() + 1.25 * ((z - e) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vq.parameters())  # encoder via straight-through


def test_masked_code_loss_and_the_video_mvm_objective_match_references():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5), torch.randint(0, 5, (6,))
    manual = -torch.stack([logits[i].exp().div(logits[i].exp().sum()).log()[targets[i]] for i in range(6)]).mean()
    torch.testing.assert_close(masked_code_loss(logits, targets), manual)

    source = MovingShapes(4, seed=0)
    tokenizer = train_tokenizer(source.captions(), 64)
    model = _video_model(tokenizer.vocab_size, mvm_codes=8, pool="attention").train()
    mvm = model.vision.mvm
    frames = torch.randn(3, 3, 32, 32)
    masked, mask = mvm.mask(frames)
    assert mask.sum(1).tolist() == [round(0.4 * 16)] * 3  # the ratio, per frame
    pixel_mask = mask.view(3, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand_as(frames)
    assert (masked[pixel_mask] == 0).all() and torch.equal(masked[~pixel_mask], frames[~pixel_mask])

    batch = collate(source, [0, 1, 2, 3], tokenizer, 16, ImageTransform(32, 3))
    assert batch["images"].shape == (4, 8, 3, 32, 32) and batch["channel_ids"].shape == (4, 3)
    cfg = apply_overrides(RunConfig(), ["model.video.frames=4", "model.video.mvm_codes=8",
                                        "objective.name=video-mvm", "objective.mvm_weight=0.5"])
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
    loss, metrics = build_objective(cfg.objective)(out, batch)
    assert set(metrics) == {"loss/clip", "loss/mvm", "mvm_accuracy"}
    expected = (clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
                + 0.5 * F.cross_entropy(out.vision.mvm_logits, out.vision.mvm_targets))
    torch.testing.assert_close(loss, expected)
    assert out.vision.mvm_logits.shape == (4 * 4 * round(0.4 * 16), 8)
    loss.backward()
    for name, p in model.named_parameters():
        if "mvm.tokenizer" in name or "logit_bias" in name:
            assert p.grad is None  # frozen tokenizer; the bias is SigLIP's
        else:
            assert p.grad is not None, name


def test_motion_accuracy_counts_strict_wins():
    clips = F.normalize(torch.randn(4, 3), dim=1)
    true = clips.clone()
    flipped = {"direction": (torch.tensor([0, 2]), -clips[[0, 2]]), "order": (torch.tensor([1]), clips[[1]])}
    out = motion_accuracies(clips, true, flipped)
    assert out == {"direction_accuracy": 1.0, "direction_n": 2, "order_accuracy": 0.0, "order_n": 1}


@pytest.mark.parametrize("overrides, match", [
    (["objective.name=video-mvm"], "mvm_codes"),
    (["model.video.mvm_codes=16"], "video-mvm"),
    (["model.video.slow_fast=true"], "act on clips"),
    (["model.video.frames=4", "model.video.slow_fast=true", "model.video.fast_scale=3"], "multiple"),
    (["model.video.frames=4", "model.fusion.kind=fiber", "objective.name=fusion"], "fusion"),
    (["model.video.frames=4", "model.video.pool_grid=[2,2]"], "pool_grid"),
])
def test_bad_video_configs_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(RunConfig(), overrides)
