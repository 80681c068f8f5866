"""Catalogue items 8-11 (GPT4Image, MeDSLIP, VELVET-Med, PS3): the losses against explicit loops and known
answers, the extra views built from the shapes world, and every new objective training what it should."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ModelConfig, ObjectiveConfig, RunConfig, apply_overrides
from vlalign.data.loader import collate
from vlalign.data.regions import grid_crop, grid_crops, sample_region
from vlalign.data.shapes import COLOURS, GRID, ShapesConfig, ShapesWorld
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.data.views import AttributeView, ClauseView, DescriptionView, RegionView, attribute_text, split_clauses
from vlalign.errors import ConfigError, DataError
from vlalign.models import build_model
from vlalign.objectives import build_objective
from vlalign.objectives.contrastive import clip_loss
from vlalign.objectives.hierarchical import clause_loss, clause_positives
from vlalign.objectives.multi_positive import grouped_clip_loss, multi_positive_infonce
from vlalign.objectives.prototypes import concentration, proto_nce_loss, spherical_kmeans
from vlalign.objectives.streams import stream_separation_loss


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------------------------------------
# losses


def reference_multi_positive(logits, positives, valid):
    """Row and column terms written as loops over the matrix: -log of the positives' summed probability."""
    rows, cols = [], []
    n, m = len(logits), len(logits[0])
    for i in range(n):
        cand = [j for j in range(m) if valid[j]]
        pos = [j for j in cand if positives[i][j]]
        if pos:
            inside = sum(math.exp(logits[i][j]) for j in pos)
            rows.append(-math.log(inside / sum(math.exp(logits[i][j]) for j in cand)))
    for j in range(m):
        pos = [i for i in range(n) if positives[i][j]]
        if valid[j] and pos:
            inside = sum(math.exp(logits[i][j]) for i in pos)
            cols.append(-math.log(inside / sum(math.exp(logits[i][j]) for i in range(n))))
    return 0.5 * (sum(rows) / len(rows) + sum(cols) / len(cols))


def test_multi_positive_infonce_matches_the_loop_and_is_clip_with_distinct_texts():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g) * 3
    positives = torch.rand(5, 7, generator=g) < 0.3
    positives[2] = False  # a row with no positive is left out
    valid = torch.tensor([True, True, False, True, True, False, True])
    expected = reference_multi_positive(logits.tolist(), positives.tolist(), valid.tolist())
    logits.requires_grad_()
    loss = multi_positive_infonce(logits, positives, valid)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # Invalid columns get a zero gradient, and the row without a positive (still a negative of every column) no NaN.
    assert torch.isfinite(logits.grad).all() and not logits.grad[:, ~valid].any()
    image, text, scale = unit(6, 8), unit(6, 8, seed=1), torch.tensor(5.0)
    keys = torch.arange(6)  # every text its own
    assert grouped_clip_loss(image, text, keys, scale).item() == pytest.approx(clip_loss(image, text, scale).item(),
                                                                               rel=1e-6)


def test_shared_texts_are_positives_not_negatives():
    """k identical texts among n. Each of their rows has k equal positive columns, so its term is CLIP's minus
    log k exactly; each of their columns sums the probability q of the k images, and -log Σq <= -(1/k) Σ log q
    - log k (Jensen), so it too drops by at least log k. The loss is below CLIP's by at least (k / n) log k
    (CLIP's, for which shared texts are negatives, is what a mean of the positives' log-probabilities gives)."""
    n, k, scale = 7, 3, torch.tensor(10.0)
    image, text = unit(n, 8), unit(n, 8, seed=1)
    text[:k] = text[0]  # the first k pairs share one text
    ids = torch.tensor([[5, 6]] * k + [[7 + i, 0] for i in range(n - k)])  # token rows: the first k are one text
    drop = clip_loss(image, text, scale).item() - grouped_clip_loss(image, text, ids, scale).item()
    assert drop >= k / n * math.log(k) - 1e-5  # 1e-5: float32 rounding of two O(1) losses


def test_spherical_kmeans_recovers_separated_clusters_and_prototypes_are_member_means():
    g = torch.Generator().manual_seed(0)
    axes = torch.eye(6)[:3]  # three orthogonal directions
    truth = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    x = F.normalize(axes[truth] + 0.05 * torch.randn(10, 6, generator=g), dim=-1)
    prototypes, assign = spherical_kmeans(x, 3)
    same_truth = truth[:, None] == truth[None, :]
    assert torch.equal(assign[:, None] == assign[None, :], same_truth)  # the partition, up to the labels
    for j in range(3):
        members = x[assign == j]
        assert torch.allclose(prototypes[j], F.normalize(members.mean(0), dim=0), atol=1e-6)
    assert spherical_kmeans(x[:2], 5)[0].shape[0] == 2  # k is capped at the number of points


def reference_concentration(x, prototypes, assign, alpha=10.0):
    k = prototypes.shape[0]
    phi = []
    for j in range(k):
        d = [float((x[i] - prototypes[j]).norm()) for i in range(len(x)) if assign[i] == j]
        phi.append(sum(d) / len(d) / math.log(len(d) + alpha) if len(d) > 1 else None)
    big = max(p for p in phi if p is not None)
    phi = torch.tensor([big if p is None else p for p in phi])
    phi = phi.clamp(torch.quantile(phi, 0.1), torch.quantile(phi, 0.9))
    return phi / phi.mean()


def test_proto_nce_matches_the_pcl_formula_and_trains_only_the_images():
    image = unit(12, 8).requires_grad_()
    text = unit(12, 8, seed=3).requires_grad_()
    scale = torch.tensor(7.0)
    loss = proto_nce_loss(image, text, scale, [3, 5])
    expected = []
    for k in (3, 5):
        prototypes, assign = spherical_kmeans(text.detach(), k)
        phi = reference_concentration(text.detach(), prototypes, assign)
        assert torch.allclose(concentration(text.detach(), prototypes, assign), phi, atol=1e-6)
        terms = []
        for i in range(12):
            logits = [7.0 * float(image[i].detach() @ prototypes[j]) / float(phi[j]) for j in range(len(prototypes))]
            terms.append(-(logits[assign[i]] - math.log(sum(math.exp(v) for v in logits))))
        expected.append(sum(terms) / 12)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    loss.backward()
    assert image.grad is not None and text.grad is None  # prototypes are fixed targets


def test_stream_separation_is_the_mean_squared_cosine_of_one_images_streams():
    a = unit(5, 8)
    axes = torch.eye(8)
    assert stream_separation_loss([axes[:4], axes[4:]]).item() == 0.0  # orthogonal streams: nothing to push
    assert stream_separation_loss([a, a]).item() == pytest.approx(1.0, rel=1e-6)
    b, c = unit(5, 8, seed=1), unit(5, 8, seed=2)
    pairs = [(a, b), (a, c), (b, c)]
    expected = sum(sum(float(x[i] @ y[i]) ** 2 for i in range(5)) / 5 for x, y in pairs) / 3
    assert stream_separation_loss([a, b, c]).item() == pytest.approx(expected, rel=1e-5)


def test_clause_loss_positives_are_own_and_identical_clauses():
    ids = torch.tensor([[[1, 2], [3, 0], [0, 0]],  # image 0: clauses "1 2", "3"
                        [[1, 2], [0, 0], [0, 0]],  # image 1: "1 2" (shared with image 0)
                        [[4, 0], [3, 0], [0, 0]]])  # image 2: "4", "3" (shared with image 0)
    valid = (ids != 0).any(-1)
    positives = clause_positives(ids, valid)  # [3, 9]
    for i in range(3):
        for j in range(3):
            for m in range(3):
                mine = {tuple(ids[i, n].tolist()) for n in range(3) if valid[i, n]}
                expected = bool(valid[j, m]) and tuple(ids[j, m].tolist()) in mine
                assert bool(positives[i, j * 3 + m]) == expected
    image, clauses, scale = unit(3, 8), unit(3, 3, 8, seed=4), torch.tensor(6.0)
    logits = (scale * image @ clauses.reshape(9, 8).t()).tolist()
    expected = reference_multi_positive(logits, positives.tolist(), valid.reshape(9).tolist())
    assert clause_loss(image, clauses, ids, valid, scale).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# views of the shapes world


def test_split_clauses_and_attribute_texts():
    assert split_clauses("three shapes: a small red circle above a large blue square, and a small green star at "
                         "the top") == ["three shapes", "a small red circle above a large blue square",
                                        "a small green star at the top"]
    assert split_clauses("a black and white photo of the coat") == ["a black and white photo of the coat"]
    world = ShapesWorld(40, seed=0)
    for i in range(40):
        scene, caption = world.scene(i), world.caption(i)
        pieces = split_clauses(caption)
        assert all(piece in caption for piece in pieces) and len(pieces) <= 3
        assert sum(o.phrase in piece for o in scene.objects for piece in pieces) == len(scene.objects)
        assert attribute_text(scene, "colour") == " and ".join(o.colour for o in scene.objects)


def test_region_crop_shows_exactly_its_object_and_grid_crops_tile_the_image():
    world = ShapesWorld(60, seed=5, cfg=ShapesConfig(image_size=48))
    for i in range(60):
        sample = world[i]
        crop, caption, block = sample_region(sample, seed=3)
        obj = next(o for o in sample.meta["scene"].objects if o.row * GRID + o.col == block)
        assert caption == f"a {obj.phrase}"
        colours = {tuple(c) for c in crop.reshape(3, -1).T.tolist()}
        assert tuple(COLOURS[obj.colour]) in colours  # the object's fill colour is in its crop
        others = [o for o in sample.meta["scene"].objects if o is not obj and o.colour != obj.colour]
        assert not any(tuple(COLOURS[o.colour]) in colours for o in others)  # and no other object's
        assert sample_region(sample, seed=3)[2] == block  # drawn from (seed, key)
    image = world[0].image
    crops = grid_crops(image)
    rows = [np.concatenate(crops[r * GRID:(r + 1) * GRID], axis=2) for r in range(GRID)]
    assert np.array_equal(np.concatenate(rows, axis=1), image)
    with pytest.raises(ValueError, match="outside"):
        grid_crop(image, 9)


@pytest.fixture(scope="module")
def world_and_tokenizer():
    world = ShapesWorld(8, seed=1, cfg=ShapesConfig(image_size=32))
    return world, train_tokenizer(world.captions(), 300)


def test_collate_views_build_the_entries_objectives_read(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    transform = ImageTransform(32, 3)
    table = torch.randn(8, 5)
    views = (ClauseView(4), AttributeView(("shape", "colour")), RegionView(seed=2),
             DescriptionView(world.captions(), table))
    batch = collate(world, list(range(8)), tokenizer, 40, transform, views=views)
    clauses = [split_clauses(c) for c in world.captions()]
    assert batch["clause_valid"].tolist() == [[m < len(c) for m in range(4)] for c in clauses]
    for b, pieces in enumerate(clauses):
        for m, piece in enumerate(pieces):
            assert torch.equal(batch["extra_texts"]["clauses"][b, m], tokenizer([piece], 40)[0][0])
    assert not batch["extra_texts"]["clauses"][~batch["clause_valid"]].any()  # empty slots are all padding
    shapes_text = [attribute_text(world.scene(i), "shape") for i in range(8)]
    assert torch.equal(batch["extra_texts"]["attribute_shape"], tokenizer(shapes_text, 40)[0])
    crops = [sample_region(world[i], 2) for i in range(8)]
    assert torch.equal(batch["extra_images"]["region"], transform([c for c, _, _ in crops]))
    assert torch.equal(batch["description_embeds"], table) and batch["description_ids"].tolist() == list(range(8))
    with pytest.raises(DataError, match="no cached description"):
        DescriptionView(["another caption"], torch.zeros(1, 5))(list(world), tokenizer, 40, transform)


# ---------------------------------------------------------------------------------------------
# the objectives on the dual encoder


def tiny_model(**model):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 16
    for k, v in model.items():
        setattr(cfg, k, v)
    return build_model(cfg, image_size=32, vocab_size=300, context_length=40)


def test_extra_texts_skip_empty_rows_and_match_encode_text(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    model = tiny_model().eval()
    batch = collate(world, list(range(8)), tokenizer, 40, ImageTransform(32, 3), views=(ClauseView(4),))
    ids = batch["extra_texts"]["clauses"]  # [8, 4, 40]
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], extra_texts={"clauses": ids})
    embeds = out.extra_text_embeds["clauses"]  # [8, 4, 16]
    for b in range(8):
        for m in range(4):
            if batch["clause_valid"][b, m]:
                assert torch.allclose(embeds[b, m], model.encode_text(ids[b, m][None])[0], atol=1e-5)
            else:
                assert not embeds[b, m].any()


# Parameters each objective does not train: the text side of the supervised GPT4Image, SigLIP's bias everywhere.
UNUSED = {"gpt4image": ("text.", "text_head.", "image_head.", "logit_bias"), "medslip": ("logit_bias", "classifier."),
          "velvet": ("logit_bias", "classifier."), "ps3": ("logit_bias", "classifier.")}
SETUP = {
    "gpt4image": ({"num_classes": 56, "description_dim": 5}, ()),
    "medslip": ({"attribute_streams": ["shape", "colour"]}, (AttributeView(("shape", "colour")),)),
    "velvet": ({"head": "tokens"}, (ClauseView(3),)),
    "ps3": ({}, (RegionView(seed=0),)),
}


@pytest.mark.parametrize("name", sorted(SETUP))
def test_every_new_objective_trains_every_parameter(name, world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    torch.manual_seed(0)
    model_options, views = SETUP[name]
    model = tiny_model(**model_options)
    if name == "gpt4image":
        views = (DescriptionView(world.captions(), unit(8, 5)),)
    batch = collate(world, list(range(8)), tokenizer, 40, ImageTransform(32, 3), views=views)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"],
                **{k: batch[k] for k in ("extra_texts", "extra_images") if k in batch})
    loss, metrics = build_objective(ObjectiveConfig(name=name))(out, batch)
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    for pname, p in model.named_parameters():
        if not pname.startswith(UNUSED[name]):
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_objectives_add_their_weighted_terms(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    model = tiny_model(attribute_streams=["shape", "colour"]).eval()
    batch = collate(world, list(range(8)), tokenizer, 40, ImageTransform(32, 3),
                    views=(AttributeView(("shape", "colour")), RegionView(seed=0)))
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], extra_texts=batch["extra_texts"],
                extra_images=batch["extra_images"])
    cfg = ObjectiveConfig(name="medslip")
    cfg.medslip.proto_weight, cfg.medslip.stream_weight, cfg.medslip.separation_weight = 0.5, 2.0, 3.0
    loss, m = build_objective(cfg)(out, batch)
    assert loss.item() == pytest.approx(m["loss/clip"] + 0.5 * m["loss/proto"] + 2 * m["loss/streams"]
                                        + 3 * m["loss/separation"], rel=1e-5)
    assert m["loss/separation"] == pytest.approx(
        stream_separation_loss([out.extras["stream_shape"], out.extras["stream_colour"]]).item(), rel=1e-6)
    cfg.medslip.proto_warmup_steps = 10
    loss, early = build_objective(cfg)(out, batch | {"step": 9})  # ProtoNCE waits for step 10 (PCL's warm-up)
    assert "loss/proto" not in early
    assert loss.item() == pytest.approx(m["loss/clip"] + 2 * m["loss/streams"] + 3 * m["loss/separation"], rel=1e-5)
    assert build_objective(cfg)(out, batch | {"step": 10})[1]["loss/proto"] == pytest.approx(m["loss/proto"])
    cfg = ObjectiveConfig(name="ps3")
    cfg.ps3.region_weight = 0.25
    loss, m = build_objective(cfg)(out, batch)
    region = grouped_clip_loss(out.extra_image_embeds["region"], out.extra_text_embeds["region"],
                               batch["extra_texts"]["region"], out.logit_scale)
    assert m["loss/region"] == pytest.approx(region.item(), rel=1e-6)
    assert loss.item() == pytest.approx(m["loss/global"] + 0.25 * m["loss/region"], rel=1e-6)


def test_gpt4image_refuses_a_head_of_the_wrong_width(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    model = tiny_model(num_classes=56, description_dim=5)
    batch = collate(world, list(range(8)), tokenizer, 40, ImageTransform(32, 3),
                    views=(DescriptionView(world.captions(), unit(8, 7)),))
    with pytest.raises(ConfigError, match="description_dim=7"):
        build_objective(ObjectiveConfig(name="gpt4image"))(model(batch["images"], batch["text_ids"],
                                                                  batch["text_mask"]), batch)


@pytest.mark.parametrize("overrides, message", [
    (["objective.name=gpt4image", "model.num_classes=10"], "description_dim"),
    (["objective.name=medslip"], "attribute_streams"),
    (["objective.name=medslip", "model.attribute_streams=[shape]"], "separates two streams"),
    (["objective.name=medslip", "model.attribute_streams=[shape,hue]"], "name each"),
    (["model.attribute_streams=[shape,colour]"], "only the"),
    (["objective.name=velvet"], "model.head=tokens"),
    (["objective.name=ps3", "data.cache_dir=/tmp/x"], "cache_dir"),
    (["model.text.lock_projection=true"], "locked=true"),
    (["objective.medslip.proto_weight=-1"], ">= 0"),
])
def test_bad_settings_are_refused_with_the_key_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)
