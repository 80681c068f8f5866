"""FILIP / Wukong token-wise late interaction, its head, its eval path, and LiT's locked image tower."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.api import Aligner
from vlalign.config import ModelConfig, ObjectiveConfig, RunConfig, apply_overrides
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError
from vlalign.eval.late_interaction import PromptScores, token_similarities
from vlalign.eval.retrieval import retrieval_metrics, retrieval_metrics_from_scores
from vlalign.models import build_model
from vlalign.models.dual_encoder import PooledProjection, TokenProjection
from vlalign.models.text import TextFeatures
from vlalign.objectives import build_objective
from vlalign.objectives.filip import filip_loss, late_interaction, paired_late_interaction


def tokens(n, length, dim=8, seed=0, pad_from=None):
    """Unit-norm tokens [n, length, dim] and a mask; row i is padded from ``pad_from[i]`` on."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, length, dim, generator=g), dim=-1)
    mask = torch.ones(n, length, dtype=torch.bool)
    for i, start in enumerate(pad_from or []):
        mask[i, start:] = False
    return x, mask


def loop_similarity(x, x_mask, y, y_mask):
    """FILIP §3.1.1 by hand: (s^I, s^T) for one image and one text."""
    patches = [k for k in range(x.shape[0]) if x_mask[k]]
    words = [r for r in range(y.shape[0]) if y_mask[r]]
    s_image = sum(max(float(x[k] @ y[r]) for r in words) for k in patches) / len(patches)
    s_text = sum(max(float(x[k] @ y[r]) for k in patches) for r in words) / len(words)
    return s_image, s_text


def test_late_interaction_equals_the_double_loop_and_ignores_padding():
    image, image_mask = tokens(5, 6, seed=0, pad_from=[6, 4, 6, 6, 2])  # masked patches too (ChannelViT subsets)
    text, text_mask = tokens(4, 7, seed=1, pad_from=[3, 7, 5, 1])
    i2t, t2i = late_interaction(image, image_mask, text, text_mask, chunk=2)  # chunks of 2, 2, 1 images
    assert i2t.shape == t2i.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            s_image, s_text = loop_similarity(image[i], image_mask[i], text[j], text_mask[j])
            assert i2t[i, j].item() == pytest.approx(s_image, abs=1e-6)
            assert t2i[i, j].item() == pytest.approx(s_text, abs=1e-6)
    # what padding holds never matters: replace it with the best possible match for every patch
    text_garbage = torch.where(text_mask[..., None], text, image[0, :1].expand_as(text))
    assert torch.equal(late_interaction(image, image_mask, text_garbage, text_mask)[0], i2t)


def test_paired_late_interaction_is_the_diagonal():
    image, image_mask = tokens(4, 5, seed=2)
    text, text_mask = tokens(4, 6, seed=3, pad_from=[2, 6, 4, 3])
    full = late_interaction(image, image_mask, text, text_mask)
    paired = paired_late_interaction(image, image_mask, text, text_mask)
    for full_matrix, diagonal in zip(full, paired):
        torch.testing.assert_close(diagonal, full_matrix.diagonal())


def test_filip_loss_is_infonce_on_each_direction_own_matrix():
    image, image_mask = tokens(4, 5, seed=4)
    text, text_mask = tokens(4, 6, seed=5, pad_from=[3, 6, 2, 5])
    scale = 5.0
    sim = [[loop_similarity(image[i], image_mask[i], text[j], text_mask[j]) for j in range(4)] for i in range(4)]
    total = 0.0
    for i in range(4):  # image i against every text, by s^I; text i against every image, by s^T
        row = [scale * sim[i][j][0] for j in range(4)]
        col = [scale * sim[j][i][1] for j in range(4)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    loss = filip_loss(image, image_mask, text, text_mask, torch.tensor(scale))
    assert loss.item() == pytest.approx(total / 8, rel=1e-5)


def test_token_head_projects_every_token_with_the_clip_projection():
    torch.manual_seed(0)
    head, plain = TokenProjection(12, 6), PooledProjection(12, 6)
    assert head.state_dict().keys() == plain.state_dict().keys()  # a CLIP checkpoint loads into it
    plain.load_state_dict(head.state_dict())
    features = TextFeatures(pooled=torch.randn(2, 12), tokens=torch.randn(2, 5, 12),
                            mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool), intermediates=[])
    pooled, extras = head(features)
    torch.testing.assert_close(pooled, plain(features)[0])  # the global embedding is CLIP's
    for b in range(2):
        for t in range(5):
            expected = F.normalize(plain.proj(features.tokens[b, t]), dim=-1)
            torch.testing.assert_close(extras["token_embeds"][b, t], expected)
    assert torch.equal(extras["token_mask"], features.mask)
    out = tiny_model(head="tokens")(*batch())
    assert out.extras["image_token_embeds"].shape == (4, 16, 16) and out.extras["image_token_mask"].all()
    assert torch.equal(out.extras["text_token_mask"], out.text.mask)


def test_filip_needs_the_token_head():
    with pytest.raises(ConfigError, match="model.head=tokens"):
        apply_overrides(RunConfig(), ["objective.name=filip"])
    model = tiny_model(head="projection")
    with pytest.raises(ConfigError, match="model.head=tokens"):
        build_objective(ObjectiveConfig(name="filip"))(model(*batch()), {})


def test_lit_locks_the_image_tower_but_trains_its_head():
    model = tiny_model(head="tokens", locked=True)
    loss, _ = build_objective(ObjectiveConfig(name="filip"))(model(*batch()), {})
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.vision.parameters())
    assert model.image_head.proj.weight.grad is not None
    assert all(p.grad is not None for p in model.text.parameters())


def test_token_wise_eval_scores_as_the_loss_does():
    aligner = tiny_aligner()
    images = torch.randn(3, 3, 16, 16)
    prompts = [["a red circle", "a red square"], ["a blue star"], ["a blue star", "a red circle", "a big star"]]
    scores = PromptScores(aligner, images, [p for ps in prompts for p in ps])
    assert scores.scores.shape == (3, 4)  # each distinct prompt scored once
    image_tokens = aligner.model.image_token_embeds(images)
    for k, class_prompts in enumerate(prompts):
        ids, mask = aligner.tokenizer(class_prompts, 8)
        text_tokens = aligner.model.text_token_embeds(ids, mask)
        per_prompt = late_interaction(*image_tokens, *text_tokens)[0]  # [3, prompts of class k]
        torch.testing.assert_close(scores.class_logits(prompts)[:, k], per_prompt.mean(1), atol=1e-5, rtol=0)
    i2t, t2i = token_similarities(aligner, images, ["a red circle", "a blue star", "a big star"])
    ids, mask = aligner.tokenizer(["a red circle", "a blue star", "a big star"], 8)
    expected = late_interaction(*image_tokens, *aligner.model.text_token_embeds(ids, mask))
    torch.testing.assert_close(i2t, expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(t2i, expected[1], atol=1e-5, rtol=0)


def test_retrieval_from_two_score_matrices_matches_the_embedding_version():
    g = torch.Generator().manual_seed(0)
    image, text = F.normalize(torch.randn(6, 4, generator=g), dim=-1), F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    sim = image @ text.t()
    assert retrieval_metrics_from_scores(sim, sim.t()) == retrieval_metrics(image, text)


def tiny_model(head="tokens", locked=False):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim, cfg.head, cfg.vision.patch_size = "vit-micro", "text-micro", 16, head, 4
    cfg.vision.locked = locked
    torch.manual_seed(0)
    return build_model(cfg, image_size=16, vocab_size=50, context_length=8)


def batch(b=4):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 50, (b, 8), generator=g)
    ids[:, 5:] = 0
    return torch.randn(b, 3, 16, 16, generator=g), ids, ids != 0


def tiny_aligner(image_size: int = 16, data: str = "shapes:n=64,seed=0") -> Aligner:
    cfg = apply_overrides(RunConfig(), ["model.head=tokens", "objective.name=filip", "data.context_length=8",
                                        f"data.image_size={image_size}", f"data.train={data}", f"data.eval={data}"])
    tokenizer = train_tokenizer(["a red circle", "a blue star", "a red square", "a big star"], 64)
    cfg.model.vision.size, cfg.model.text.size, cfg.model.embed_dim = "vit-micro", "text-micro", 16
    cfg.model.vision.patch_size = 4 if image_size == 16 else 8
    torch.manual_seed(0)
    model = build_model(cfg.model, image_size, tokenizer.vocab_size, 8).eval()
    return Aligner(model, tokenizer, ImageTransform(image_size, 3), cfg, run_dir=None, step=0)


def test_retrieval_and_zeroshot_tasks_score_a_filip_run_token_wise():
    from vlalign.data.specs import build_source
    from vlalign.eval.tasks import load_arrays, run_tasks

    aligner = tiny_aligner(image_size=24, data="shapes:n=16,seed=0")
    aligner.config.eval.retrieval_n = aligner.config.eval.zeroshot_n = 12
    results = run_tasks(aligner, ["retrieval", "zeroshot"]).results
    (retrieval,) = [r for r in results if r["task"] == "retrieval"]
    images, captions, _, _ = load_arrays(build_source("shapes:n=16,seed=0"), 12)
    i2t, t2i = token_similarities(aligner, images, captions)
    expected = retrieval_metrics_from_scores(i2t, t2i.t())
    assert retrieval["i2t_mean_rank"] == expected["i2t_mean_rank"]
    assert retrieval["t2i_mean_rank"] == expected["t2i_mean_rank"]
    # the pooled embeddings (which FILIP does not train) rank differently
    assert retrieval_metrics(aligner.encode_image(images), aligner.encode_text(captions)) != expected
    assert {r["labels"] for r in results if r["task"] == "zeroshot"} == {"shape", "colour", "shape+colour"}


def test_lit_filip_run_starts_from_a_clip_run_and_keeps_its_image_tower(tmp_path, tiny_cfg, trained_tiny_run):
    from vlalign.checkpoint import latest_checkpoint, load_checkpoint
    from vlalign.train import run_training

    cfg = apply_overrides(tiny_cfg, ["model.head=tokens", "objective.name=filip", "model.vision.locked=true",
                                     f"model.init_from=[{trained_tiny_run}]", "model.init_modules=[vision]",
                                     "train.steps=2", "model.text.prefix_tokens=1",
                                     "data.train=shapes:n=64,seed=0"])
    run_training(cfg, tmp_path, progress=False)
    clip, _, _ = load_checkpoint(latest_checkpoint(trained_tiny_run / "checkpoints"))
    lit, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    vision = [k for k in clip if k.startswith("vision.")]
    assert vision and all(torch.equal(clip[k], lit[k]) for k in vision)
    assert not torch.equal(clip["image_head.proj.weight"], lit["image_head.proj.weight"])  # the head trains
    # only the image tower came over: the text tower (here of another shape: a prefix position more) is new
    assert lit["text.pos"].shape[1] == clip["text.pos"].shape[1] + 1
