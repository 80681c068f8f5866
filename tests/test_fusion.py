"""Fusion on the dual encoder (issue 11): FIBER's gated cross-attention, ManagerTower's managers, ITM
negatives, image-conditioned MLM masking, IPOT optimal transport (UNITER's WRA) and ITM re-ranking."""

import itertools

import pytest
import torch

from vlalign.config import ModelConfig, ObjectiveConfig, apply_overrides
from vlalign.errors import ConfigError
from vlalign.eval.rerank import rerank_scores
from vlalign.models import build_model
from vlalign.models.cross_modal import IGNORE, MASK_ID, NUM_SPECIAL, mask_tokens, sample_negatives
from vlalign.models.fusion import FusedFeatures
from vlalign.objectives import build_objective
from vlalign.objectives.matching import word_region_loss
from vlalign.objectives.ot import cosine_cost, ipot, transport_distance
from vlalign.recipes import get_recipe

VOCAB = 50


def fused_model(kind="fiber", text_pool="eot", seed=0, **fusion):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim, cfg.text.pool = "vit-micro", "text-micro", 16, text_pool
    cfg.fusion.kind = kind
    for key, value in fusion.items():
        setattr(cfg.fusion, key, value)
    torch.manual_seed(seed)
    return build_model(cfg, image_size=16, vocab_size=VOCAB, context_length=8)


def batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, VOCAB, (b, 8), generator=g)
    ids[:, 0], ids[:, 5], ids[:, 6:] = 2, 3, 0  # [BOS] words [EOS] [PAD] [PAD]
    return torch.randn(b, 3, 16, 16, generator=g), ids, ids != 0


def fuse(model, images, ids, mask):
    """The fused features of the aligned rows (image i, text i)."""
    vision, text = model.vision(images), model.text_features(ids, mask)
    return vision, text, model.cross_modal.fusion(model.vision, model.text, vision, text)


# --- FIBER ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text_pool", ["eot", "mean"])
def test_fiber_with_closed_gates_is_exactly_the_plain_dual_encoder(text_pool):
    model = fused_model(text_pool=text_pool).eval()
    images, ids, mask = batch()
    vision, text, fused = fuse(model, images, ids, mask)
    assert all(m.gate.item() == 0 for m in (*model.cross_modal.fusion.image_to_text,
                                             *model.cross_modal.fusion.text_to_image))
    assert torch.equal(fused.image_tokens, vision.tokens) and torch.equal(fused.image_pooled, vision.pooled)
    assert torch.equal(fused.text_tokens, text.tokens) and torch.equal(fused.text_pooled, text.pooled)
    # and the contrastive path is the plain model's: same weights, same embeddings
    plain = fused_model(kind="none", text_pool=text_pool).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("cross_modal.")})
    out, reference = model(images, ids, mask), plain(images, ids, mask)
    assert torch.equal(out.image_embeds, reference.image_embeds) and torch.equal(out.text_embeds, reference.text_embeds)


@pytest.mark.parametrize("kind", ["fiber", "manager"])
def test_each_fused_stream_reads_the_other(kind):
    model = fused_model(kind).eval()
    with torch.no_grad():  # FIBER: open the gates
        for name, param in model.cross_modal.named_parameters():
            if name.endswith("gate"):
                param.fill_(0.5)
    images, ids, mask = batch()
    _, _, fused = fuse(model, images, ids, mask)
    _, _, other_text = fuse(model, images, ids.roll(1, 0), mask.roll(1, 0))
    _, _, other_image = fuse(model, images.roll(1, 0), ids, mask)
    assert not torch.allclose(fused.image_pooled, other_text.image_pooled)  # image features depend on the text
    assert not torch.allclose(fused.text_pooled, other_image.text_pooled)  # and text features on the image
    # the padding of the text is never attended to: garbage there changes no image feature
    garbage = torch.where(mask, ids, 7)
    _, _, padded = fuse(model, images, garbage, mask)
    assert torch.allclose(padded.image_pooled, fused.image_pooled, atol=1e-6)


@pytest.mark.parametrize("kind", ["fiber", "manager"])
def test_trailing_padding_changes_no_fused_feature(kind):
    model = fused_model(kind).eval()
    with torch.no_grad():
        for name, param in model.cross_modal.named_parameters():
            if name.endswith("gate"):
                param.fill_(0.5)
    images, ids, mask = batch()  # the last two columns are padding in every row: the fused pass drops them
    vision, text = model.vision(images), model.text_features(ids, mask)
    cross = model.cross_modal
    full = cross.matching_head(cross.fusion(model.vision, model.text, vision, text))
    assert torch.allclose(cross.match_logits(model.vision, model.text, vision, text), full, atol=1e-6)


# --- ManagerTower -------------------------------------------------------------------------------


def test_manager_one_hot_on_the_last_layer_is_the_last_layer_only_model():
    managed = fused_model("manager", num_layers=2, num_managed_layers=2)
    last_only = fused_model("manager", num_layers=2, num_managed_layers=1, seed=1)
    state = managed.state_dict()
    with torch.no_grad():
        for name, param in last_only.state_dict().items():
            # the last-only managers' norm 0 is the managed model's norm 1 (the top layer)
            source = name.replace(".norms.0.", ".norms.1.") if ".norms." in name else name
            if name.endswith("layer_logits"):
                continue
            param.copy_(state[source])
        for manager in (*managed.cross_modal.fusion.image_managers, *managed.cross_modal.fusion.text_managers):
            assert torch.allclose(manager.weights(), torch.full((2,), 0.5))  # equal weights at start
            manager.layer_logits.copy_(torch.tensor([-1e9, 0.0]))  # one-hot on the last layer
    images, ids, mask = batch()
    a = fuse(managed.eval(), images, ids, mask)[2]
    b = fuse(last_only.eval(), images, ids, mask)[2]
    for field in ("image_tokens", "image_pooled", "text_tokens", "text_pooled"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    with torch.no_grad():  # and with the weights on the lower layer, the output is different
        managed.cross_modal.fusion.image_managers[0].layer_logits.copy_(torch.tensor([0.0, -1e9]))
    assert not torch.allclose(fuse(managed, images, ids, mask)[2].image_pooled, a.image_pooled)


# --- ITM negatives and MLM masking --------------------------------------------------------------


def test_itm_negatives_are_never_the_positive_nor_a_copy_of_its_caption():
    torch.manual_seed(0)
    B = 6
    captions = torch.tensor([0, 1, 1, 2, 3, 3])  # rows 1, 2 and 4, 5 share a caption
    same = captions[:, None] == captions[None, :]
    similarity = torch.randn(B, B) * 5
    for kind in ("hard", "random"):
        for _ in range(50):
            negative_text, negative_image = sample_negatives(similarity, same, kind)
            assert (captions[negative_text] != captions).all() and (captions[negative_image] != captions).all()
    # every caption equal: the only possible negatives are the other rows
    negative_text, negative_image = sample_negatives(similarity, torch.ones(B, B, dtype=torch.bool))
    assert (negative_text != torch.arange(B)).all() and (negative_image != torch.arange(B)).all()
    with pytest.raises(ValueError, match="at least 2"):
        sample_negatives(similarity[:1, :1], same[:1, :1])


def test_hard_negatives_follow_the_contrastive_softmax():
    torch.manual_seed(0)
    similarity = torch.zeros(3, 3)
    similarity[0, 2] = similarity[1, 0] = similarity[2, 1] = 8.0  # text 2 is image 0's likely confusion, ...
    eye = torch.eye(3, dtype=torch.bool)
    draws = torch.stack([sample_negatives(similarity, eye, "hard")[0] for _ in range(400)])  # [400, 3]
    # softmax over the allowed texts: e^8 / (e^8 + 1) = 0.9997 for the confusion
    assert (draws[:, 0] == 2).float().mean() > 0.98 and (draws[:, 1] == 0).float().mean() > 0.98
    uniform = torch.stack([sample_negatives(similarity, eye, "random")[0] for _ in range(400)])
    assert 0.35 < (uniform[:, 0] == 2).float().mean() < 0.65


def test_model_fuses_true_pairs_then_one_negative_text_and_one_negative_image_per_row():
    model = fused_model()
    images, ids, mask = batch(b=5)
    out = model(images, ids, mask)
    assert out.fusion.match_labels.tolist() == [1] * 5 + [0] * 10
    assert out.fusion.match_logits.shape == (15, 2) and out.fusion.fused.text_tokens.shape[0] == 15
    assert out.fusion.mlm_logits is None  # no MLM head unless model.fusion.mlm_probability > 0


def test_mlm_masks_only_real_word_tokens():
    torch.manual_seed(0)
    ids = torch.randint(NUM_SPECIAL, VOCAB, (400, 12))
    lengths = torch.randint(3, 13, (400,))
    mask = torch.arange(12)[None, :] < lengths[:, None]
    ids = torch.where(mask, ids, 0)
    ids[:, 0] = 2  # [BOS]
    ids[torch.arange(400), lengths - 1] = 3  # [EOS]
    words = mask & (ids >= NUM_SPECIAL)
    masked, targets = mask_tokens(ids, mask, 0.15, VOCAB)
    picked = targets != IGNORE
    assert not (picked & ~words).any()  # never padding, [BOS] or [EOS]
    assert torch.equal(masked[~picked], ids[~picked]) and torch.equal(targets[picked], ids[picked])
    assert (picked.any(1) == words.any(1)).all()  # every text with a word has a pick
    assert 0.13 < picked.sum() / words.sum() < 0.25  # 15%, plus the forced pick of short texts
    as_mask = (masked[picked] == MASK_ID).float().mean()
    kept = (masked[picked] == ids[picked]).float().mean()
    assert 0.72 < as_mask < 0.88 and 0.05 < kept < 0.17
    assert (masked[picked] >= NUM_SPECIAL).logical_or(masked[picked] == MASK_ID).all()


def test_mlm_is_conditioned_on_the_image():
    """With the gates open, the predictions at the masked positions change with the image."""
    model = fused_model(mlm_probability=0.3)
    with torch.no_grad():
        for module in model.cross_modal.fusion.text_to_image:
            module.gate.fill_(1.0)
    images, ids, mask = batch()
    torch.manual_seed(3)
    a = model(images, ids, mask).fusion
    torch.manual_seed(3)  # the same masks
    b = model(images.flip(0), ids, mask).fusion
    assert torch.equal(a.mlm_targets, b.mlm_targets) and not torch.allclose(a.mlm_logits, b.mlm_logits)


# --- optimal transport (WRA) --------------------------------------------------------------------


def test_ipot_finds_the_monotone_plan_of_a_one_dimensional_problem():
    # two points {0, 1} against three {0, 0.5, 1}, squared distance: the monotone coupling is optimal
    cost = ((torch.tensor([0.0, 1.0])[:, None] - torch.tensor([0.0, 0.5, 1.0])[None, :]) ** 2)[None]
    plan = ipot(cost, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), iterations=100)
    expected = torch.tensor([[1 / 3, 1 / 6, 0.0], [0.0, 1 / 6, 1 / 3]])
    assert torch.allclose(plan[0], expected, atol=1e-5)
    assert (cost * plan).sum().item() == pytest.approx(1 / 12, abs=1e-6)


def test_ipot_matches_the_best_permutation_and_keeps_the_marginals():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 5, 5, generator=g, dtype=torch.float64) * 2
    # instance 0 has a runner-up permutation 2e-5 above the best: a smaller step (beta) resolves it
    plan = ipot(cost, torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool), beta=0.05,
                iterations=500)
    for b in range(3):  # uniform marginals on n = m: an optimal plan is a permutation / n (Birkhoff)
        best = min(sum(cost[b, i, p[i]].item() for i in range(5)) / 5 for p in itertools.permutations(range(5)))
        assert (cost[b] * plan[b]).sum().item() == pytest.approx(best, abs=1e-6)
    assert torch.allclose(plan.sum(2), torch.full((3, 5), 0.2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(plan.sum(1), torch.full((3, 5), 0.2, dtype=torch.float64), atol=1e-6)


def test_ipot_gives_padding_no_mass():
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(2, 4, 6, generator=g) * 2
    rows = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    cols = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    plan = ipot(cost, rows, cols, iterations=200)  # columns are exact after every iteration, rows converge
    assert (plan[~rows] == 0).all() and (plan.transpose(1, 2)[~cols] == 0).all()
    for b in range(2):
        assert torch.allclose(plan[b].sum(1)[rows[b]], torch.full((int(rows[b].sum()),), 1 / rows[b].sum()), atol=1e-5)
        assert torch.allclose(plan[b].sum(0)[cols[b]], torch.full((int(cols[b].sum()),), 1 / cols[b].sum()), atol=1e-5)


def test_transport_distance_gradient_is_the_derivative_of_the_optimal_cost():
    """Envelope theorem: dW/dx through the detached optimal plan equals a finite difference of W itself."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 6, 8, generator=g, dtype=torch.float64)
    x_mask, y_mask = torch.ones(1, 4, dtype=torch.bool), torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    distance = transport_distance(x, x_mask, y, y_mask, iterations=300)
    (grad,) = torch.autograd.grad(distance.sum(), x)
    direction = torch.randn(1, 4, 8, generator=g, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        up = transport_distance(x + eps * direction, x_mask, y, y_mask, iterations=300)
        down = transport_distance(x - eps * direction, x_mask, y, y_mask, iterations=300)
    assert ((up - down) / (2 * eps)).item() == pytest.approx((grad * direction).sum().item(), rel=1e-3)


def test_word_region_loss_pulls_true_pairs_together_and_pushes_negatives_apart():
    g = torch.Generator().manual_seed(3)
    words = torch.randn(4, 5, 8, generator=g)
    patches = torch.randn(4, 6, 8, generator=g)
    fused = FusedFeatures(patches, patches[:, 0], None, words, words[:, 0], torch.ones(4, 5, dtype=torch.bool))
    labels = torch.tensor([1, 1, 0, 0])
    distance = transport_distance(words, fused.text_mask, patches, torch.ones(4, 6, dtype=torch.bool))
    loss = word_region_loss(fused, labels)
    assert loss.item() == pytest.approx(((distance[:2].sum() - distance[2:].sum()) / 4).item(), abs=1e-6)
    # a true pair whose words are its patches is at distance 0 (cosine cost of identical tokens)
    same = FusedFeatures(words, words[:, 0], None, words, words[:, 0], fused.text_mask)
    assert torch.allclose(transport_distance(words, same.text_mask, words, same.text_mask), torch.zeros(4), atol=1e-5)
    assert cosine_cost(words, words).diagonal(dim1=1, dim2=2).abs().max() < 1e-5


# --- objective, config and evaluation -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["fiber", "manager"])
def test_fusion_objective_trains_every_fusion_parameter(kind):
    model = fused_model(kind, mlm_probability=0.3)
    if kind == "fiber":  # open gates, else the cross-attention weights get zero (but defined) gradients
        with torch.no_grad():
            for module in (*model.cross_modal.fusion.image_to_text, *model.cross_modal.fusion.text_to_image):
                module.gate.fill_(0.3)
    images, ids, mask = batch()
    loss, metrics = build_objective(ObjectiveConfig(name="fusion", wra_weight=0.1))(model(images, ids, mask), {})
    loss.backward()
    assert {"loss/itc", "loss/itm", "loss/mlm", "loss/wra", "itm_accuracy", "mlm_accuracy"} <= set(metrics)
    for name, param in model.named_parameters():
        if name == "logit_bias":
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if name.startswith("cross_modal."):
            assert param.grad.abs().sum() > 0, name


def test_config_pairs_fusion_layers_with_the_fusion_objective():
    base = get_recipe("tiny")
    with pytest.raises(ConfigError, match="objective.name=fusion"):
        apply_overrides(base, ["model.fusion.kind=fiber"])
    with pytest.raises(ConfigError, match="objective.name=fusion"):
        apply_overrides(base, ["objective.name=fusion"])
    with pytest.raises(ConfigError, match="num_layers"):  # vit-micro has 2 blocks: FIBER fuses at most 1
        apply_overrides(base, ["model.fusion.kind=fiber", "objective.name=fusion", "model.fusion.num_layers=2"])
    with pytest.raises(ConfigError, match="prefix_tokens"):
        apply_overrides(base, ["model.fusion.kind=manager", "objective.name=fusion", "model.text.prefix_tokens=1"])
    with pytest.raises(ConfigError, match="not one of"):
        apply_overrides(base, ["model.fusion.kind=fiber", "objective.name=fusion", "model.fusion.itm_negatives=all"])


def test_rerank_puts_scored_candidates_first_and_keeps_the_contrastive_order_after():
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3]])
    candidates = torch.tensor([[0, 3]])  # the contrastive top 2
    scores = rerank_scores(similarity, candidates, torch.tensor([[-2.0, 4.0]]))
    assert scores.argsort(1, descending=True).tolist() == [[3, 0, 2, 4, 1]]


def test_retrieval_itm_task_on_a_tiny_fiber_run(tmp_path):
    from vlalign.api import load
    from vlalign.eval import run_tasks
    from vlalign.train import run_training

    cfg = apply_overrides(get_recipe("tiny"), [
        "model.fusion.kind=fiber", "objective.name=fusion", "model.fusion.mlm_probability=0.15",
        "objective.wra_weight=0.1", "data.batch_size=8", "train.steps=2", "eval.retrieval_n=40", "eval.rerank_k=5"])
    run_training(cfg, tmp_path, progress=False)
    (result,) = run_tasks(load(tmp_path), ["retrieval-itm"]).results
    assert result["n"] == 40 and result["k"] == 5
    for d in ("i2t", "t2i"):
        # re-ranking reorders the top 5 only: the truth is in the top 5 as often as among the candidates,
        # and every rank beyond 5 is the contrastive one
        assert result[f"{d}_R@5"] == pytest.approx(result[f"candidate_recall_{d}"])
        assert result[f"{d}_R@10"] == pytest.approx(result[f"itc_{d}_R@10"])
    metrics = [__import__("json").loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/itm", "loss/mlm", "loss/wra"} <= set(metrics[-1])
