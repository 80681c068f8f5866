"""ChannelViT, Hierarchical Channel Sampling and the channel-subset evaluation (METHODS.md §1.9)."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ModelConfig, apply_overrides
from vlalign.errors import ConfigError, DataError
from vlalign.eval.channels import (
    SAMPLED_PER_SIZE,
    channel_subsets,
    subset_accuracies,
    summarise,
)
from vlalign.models import build_model
from vlalign.models.channel_sampling import (
    MISSING,
    HierarchicalChannelSampling,
    fill_missing_channels,
)
from vlalign.models.channel_vit import ChannelPatchEmbed
from vlalign.models.vit import PatchEmbed
from vlalign.objectives.supervised import classification_loss

C, SIZE, P = 4, 16, 4
N = (SIZE // P) ** 2


@pytest.fixture(autouse=True)
def one_thread():
    """Micro towers: one thread is many times faster than two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vision(patch_embed="channel", sampling="none", per="batch"):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 16
    cfg.vision.patch_size, cfg.vision.in_channels, cfg.vision.patch_embed = P, C, patch_embed
    cfg.vision.channel_sampling, cfg.vision.channel_sampling_per = sampling, per
    torch.manual_seed(0)
    return build_model(cfg, image_size=SIZE, vocab_size=50, context_length=8).vision


def images(b=3, c=C):
    return torch.randn(b, c, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def ids_for(columns, b=3):
    return torch.tensor(columns).expand(b, -1)


def test_permuting_channels_with_their_ids_leaves_the_output_unchanged():
    vision = tiny_vision().eval()
    x = images()
    perm = [2, 0, 3, 1]
    ref = vision(x, ids_for(range(C))).pooled
    assert torch.allclose(vision(x[:, perm], ids_for(perm)).pooled, ref, atol=1e-5)
    # Control: the same permutation without its ids is a different input (channel identity matters).
    assert not torch.allclose(vision(x[:, perm], ids_for(range(C))).pooled, ref, atol=1e-3)


@pytest.mark.parametrize("m", range(1, C + 1))
def test_sequence_length_is_m_times_patches_plus_cls(m):
    vision = tiny_vision().eval()
    out = vision(images()[:, :m], ids_for(range(m)))
    assert out.tokens.shape[1] == m * N
    assert all(h.shape[1] == m * N + 1 for h in out.intermediates)


def test_per_batch_hcs_shortens_the_sequence_in_training_only():
    vision = tiny_vision(sampling="hcs")
    torch.manual_seed(3)
    lengths = {vision.train()(images(b=1), None).tokens.shape[1] for _ in range(25)}
    assert lengths == {m * N for m in range(1, C + 1)}
    assert vision.eval()(images(b=1), None).tokens.shape[1] == C * N


def test_plain_vit_with_hcs_keeps_its_sequence_and_trains():
    vision = tiny_vision("standard", sampling="hcs").train()
    torch.manual_seed(0)
    out = vision(images(b=2), None)
    out.pooled.sum().backward()
    assert out.tokens.shape[1] == N and vision.patch_embed.proj.weight.grad is not None


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return (((counts - expected) ** 2) / expected).sum().item()


# Critical values of chi-square at p = 0.001: 4 and 9 degrees of freedom.
CHI2_DF4, CHI2_DF9 = 18.47, 27.88


def test_per_batch_hcs_subset_size_is_uniform():
    sampler = HierarchicalChannelSampling("batch").train()
    torch.manual_seed(0)
    x, ids = torch.zeros(1, 5, 1, 1), ids_for(range(5), 1)
    sizes = torch.tensor([sampler(x, ids)[1].shape[1] for _ in range(2000)])
    counts = torch.bincount(sizes, minlength=6)[1:].float()
    assert counts.min() > 0 and chi_square(counts) < CHI2_DF4


def test_per_sample_hcs_size_and_subset_are_uniform():
    sampler = HierarchicalChannelSampling("sample").train()
    torch.manual_seed(0)
    B = 6000
    _, kept_ids = sampler(torch.zeros(B, 5, 1, 1), ids_for(range(5), B))
    kept = kept_ids != MISSING  # [B, 5]
    sizes = kept.sum(1)
    assert chi_square(torch.bincount(sizes, minlength=6)[1:].float()) < CHI2_DF4
    pairs = list(itertools.combinations(range(5), 2))  # given m = 2, each of the 10 pairs equally likely
    pair_rows = kept[sizes == 2]
    counts = torch.tensor([float((pair_rows[:, a] & pair_rows[:, b]).sum()) for a, b in pairs])
    assert chi_square(counts) < CHI2_DF9
    assert (kept_ids[kept] == ids_for(range(5), B)[kept]).all()  # surviving ids are the original ones


def test_per_sample_hcs_samples_only_from_present_channels():
    sampler = HierarchicalChannelSampling("sample").train()
    ids = torch.tensor([[0, MISSING, 2, MISSING]]).expand(500, -1)
    _, out = sampler(torch.zeros(500, 4, 1, 1), ids)
    assert (out[:, [1, 3]] == MISSING).all() and ((out != MISSING).sum(1) >= 1).all()


def test_shared_projection_is_applied_per_channel():
    torch.manual_seed(0)
    embed = ChannelPatchEmbed(SIZE, P, num_channels=6, width=8)
    x = images(b=2, c=3)
    ids = ids_for([4, 0, 2], b=2)
    out = embed(x, ids)
    kernel = embed.proj.weight.view(8, 1, P, P)  # the Linear is a P x P single-channel conv
    expected = []
    for j, c in enumerate([4, 0, 2]):
        conv = F.conv2d(x[:, j : j + 1], kernel, embed.proj.bias, stride=P)  # [2, 8, g, g]
        expected.append(conv.flatten(2).transpose(1, 2) + embed.channel_embedding.weight[c] + embed.pos[0])
    assert out.mask is None
    assert torch.allclose(out.tokens, torch.cat(expected, dim=1), atol=1e-5)  # channel-major


def test_missing_channel_tokens_are_masked_like_dropped_channels():
    vision = tiny_vision().eval()
    x = images()
    masked = vision(x, torch.tensor([[0, MISSING, 2, 3], [0, 1, 2, 3], [MISSING, 1, MISSING, 3]])).pooled
    assert torch.allclose(masked[0], vision(x[:1, [0, 2, 3]], ids_for([0, 2, 3], 1)).pooled[0], atol=1e-5)
    assert torch.allclose(masked[1], vision(x[1:2]).pooled[0], atol=1e-5)
    assert torch.allclose(masked[2], vision(x[2:, [1, 3]], ids_for([1, 3], 1)).pooled[0], atol=1e-5)


def test_plain_vit_zero_fills_and_rescales_a_subset():
    torch.manual_seed(0)
    embed = PatchEmbed(SIZE, P, C, width=8)
    x = images()
    explicit = torch.zeros_like(x)
    explicit[:, [3, 1]] = x[:, [3, 1]] * C / 2
    assert torch.allclose(embed(x[:, [3, 1]], ids_for([3, 1])).tokens, embed(explicit).tokens, atol=1e-5)
    per_sample = torch.tensor([[0, 1, MISSING, MISSING]]).expand(3, -1)
    filled = fill_missing_channels(x, per_sample, C)
    assert torch.allclose(filled[:, :2], 2 * x[:, :2]) and (filled[:, 2:] == 0).all()


def test_bad_channel_ids_are_clear_errors():
    embed = ChannelPatchEmbed(SIZE, P, C, 8)
    with pytest.raises(ValueError, match="outside 0..3"):
        embed(images(), ids_for([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="no present channel"):
        embed(images(b=1, c=2), torch.tensor([[MISSING, MISSING]]))
    with pytest.raises(ValueError, match="pass channel_ids"):
        embed(images(c=2))


def test_subset_enumeration():
    brute = sorted(tuple(c for c in range(5) if mask >> c & 1) for mask in range(1, 32))
    assert sorted(channel_subsets(5)) == brute and len(channel_subsets(5)) == 31
    assert len(channel_subsets(8)) == 255
    big = channel_subsets(13)
    assert big == channel_subsets(13) and len(set(big)) == len(big)  # fixed seed, no repeats
    by_size = {k: [s for s in big if len(s) == k] for k in range(1, 14)}
    for k in (1, 2, 12, 13):
        assert sorted(by_size[k]) == sorted(itertools.combinations(range(13), k))
    assert all(len(by_size[k]) == SAMPLED_PER_SIZE for k in range(3, 12))
    assert all(list(s) == sorted(s) for s in big)


def test_subset_accuracies_feed_exactly_the_subset_and_its_ids():
    seen = []

    def score(x, ids):  # predicts class = number of channels it received; records the ids
        seen.append(ids[0].tolist())
        assert x.shape[1] == ids.shape[1]
        return F.one_hot(torch.full((x.shape[0],), x.shape[1]), 4).float()

    pixels, labels = torch.zeros(5, 3, 2, 2), torch.full((5,), 2)
    accs = subset_accuracies(score, pixels, labels, channel_subsets(3), batch_size=2)
    assert {tuple(s) for s in seen} == set(channel_subsets(3))
    summary = summarise(accs, ["a", "b", "c"])
    assert summary["by_size"] == {"1": 0.0, "2": 1.0, "3": 0.0}
    assert summary["subsets"]["a+c"] == 1.0 and summary["full"] == 0.0
    assert summary["mean"] == pytest.approx(1 / 3) and summary["mean_over_subsets"] == pytest.approx(3 / 7)


def test_supervised_loss_and_label_checks():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    assert torch.allclose(classification_loss(logits, labels), -logits.log_softmax(1)[range(4), labels].mean())
    with pytest.raises(DataError, match="outside 0..2"):
        classification_loss(logits, torch.tensor([0, 1, -1, 2]))


def test_config_validation(tiny_cfg):
    with pytest.raises(ConfigError, match="num_classes"):
        apply_overrides(tiny_cfg, ["objective.name=supervised"])
    with pytest.raises(ConfigError, match="channel_sampling"):
        apply_overrides(tiny_cfg, ["model.vision.channel_sampling=dropout"])


def test_tiny_channelvit_trains_and_evaluates_channel_subsets(tmp_path, tiny_cfg):
    from vlalign.api import load
    from vlalign.eval import evaluate
    from vlalign.train import run_training

    stains = "objects=1,channels=stains,size=24"
    cfg = apply_overrides(tiny_cfg, [
        f"data.train=shapes:n=64,seed=0,{stains}", f"data.eval=shapes:n=16,seed=1,{stains}", "data.image_size=24",
        "data.batch_size=16", "data.normalization=per_channel", "model.vision.in_channels=5",
        "model.vision.patch_embed=channel", "model.vision.channel_sampling=hcs",
        "model.vision.channel_sampling_per=sample", "model.num_classes=56", "objective.name=supervised",
        "train.steps=3", "train.threads=1", "eval.zeroshot_n=8",
    ])
    state = run_training(cfg, tmp_path, progress=False)
    assert state.step == 3
    result = evaluate(load(tmp_path), ["channels"])
    (row,) = result.results
    assert row["task"] == "channels" and row["method"] == "head" and row["n"] == 8
    assert set(row["by_size"]) == {"1", "2", "3", "4", "5"} and len(row["subsets"]) == 31
    assert "round+angular+pointed+brightness+warmth" in row["subsets"]
    assert 0 <= row["mean"] <= 1 and result.figures
    assert json.loads((tmp_path / "eval.json").read_text())["results"][0]["task"] == "channels"


class ArraySource:
    """A minimal map-style source over fixed arrays."""

    def __init__(self, arrays):
        self.arrays, self.name, self.classes, self.channel_names = arrays, "arrays", None, ("grey",)

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        from vlalign.data.sample import Sample

        return Sample(key=str(i), image=self.arrays[i], caption="a picture")


def test_per_channel_statistics_match_numpy():
    import numpy as np

    from vlalign.data.transforms import channel_statistics

    arrays = [np.random.default_rng(i).integers(0, 255, (3, 4, 4)).astype(np.uint8) for i in range(5)]
    mean, std = channel_statistics(ArraySource(arrays))
    stack = np.stack(arrays).astype(np.float64)
    assert np.allclose(mean, stack.mean(axis=(0, 2, 3))) and np.allclose(std, stack.std(axis=(0, 2, 3)))


def test_batch_channel_ids_follow_the_transformed_images():
    import numpy as np

    from vlalign.data.loader import collate
    from vlalign.data.tokenizer import train_tokenizer
    from vlalign.data.transforms import ImageTransform

    source = ArraySource([np.zeros((1, 8, 8), np.uint8)] * 2)  # greyscale into an RGB tower
    batch = collate(source, [0, 1], train_tokenizer(["a picture"] * 4, 260), 8, ImageTransform(8, 3))
    assert batch["images"].shape[1] == 3 and batch["channel_ids"].tolist() == [[0, 1, 2]] * 2
