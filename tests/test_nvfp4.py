"""Simulated NVFP4 (arXiv 2509.25149): the quantiser against explicit references, stochastic rounding,
the Hadamard transform of the Wgrad inputs, the linear layer, and the train.precision=nvfp4-sim route."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.api import load
from vlalign.config import ModelConfig
from vlalign.models import build_model
from vlalign.models.nvfp4 import (
    E2M1_GRID,
    NVFP4Linear,
    NVFP4LinearFunction,
    apply_nvfp4,
    fake_quantize,
    quantize_nvfp4,
    random_hadamard,
    rotate_token_blocks,
    round_e2m1,
)
from vlalign.train import run_training


def e4m3_values() -> list[float]:
    """Every finite non-negative FP8 E4M3 (fn) value, decoded from its bits: bias 7, 3 mantissa bits,
    subnormals at exponent 0, and exponent 15 with mantissa 7 is NaN (so the largest is 448)."""
    out = []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue
            out.append(m / 8 * 2**-6 if e == 0 else (1 + m / 8) * 2 ** (e - 7))
    return out


E4M3 = e4m3_values()


def nearest(value: float, grid: list[float]) -> float:
    """Round to nearest on an ascending grid; a tie goes to the even position (mantissa bit 0)."""
    best = min(range(len(grid)), key=lambda i: (abs(grid[i] - value), i % 2))
    return grid[best]


def reference_quantize(x: torch.Tensor, br: int, bc: int):
    """Explicit per-block loop of the NVFP4 recipe -> (block scales, E2M1 values, dequantized)."""
    amax = x.abs().max().item()
    tensor_scale = amax / (6 * 448)
    R, C = x.shape
    scales = torch.zeros(math.ceil(R / br), math.ceil(C / bc))
    values, deq = torch.zeros_like(x), torch.zeros_like(x)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            block = x[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            scale = nearest(block.abs().max().item() / 6 / tensor_scale, E4M3)
            scales[i, j] = scale
            for (a, b), v in zip(torch.cartesian_prod(torch.arange(block.shape[0]), torch.arange(block.shape[1])).tolist(),
                                 block.flatten().tolist()):
                q = math.copysign(nearest(min(abs(v) / (scale * tensor_scale), 6.0), list(E2M1_GRID)), v)
                values[i * br + a, j * bc + b] = q
                deq[i * br + a, j * bc + b] = q * scale * tensor_scale
    return scales, values, deq


def test_e2m1_nearest_rounding_matches_the_grid_with_ties_to_even():
    assert torch.isnan(round_e2m1(torch.tensor([float("nan")]))).all()
    ties = {0.25: 0.0, 0.75: 1.0, 1.25: 1.0, 1.75: 2.0, 2.5: 2.0, 3.5: 4.0, 5.0: 4.0, 7.0: 6.0, -0.75: -1.0}
    got = round_e2m1(torch.tensor(list(ties)))
    assert got.tolist() == list(ties.values())
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 3
    expected = [math.copysign(nearest(min(abs(v), 6.0), list(E2M1_GRID)), v) for v in x.tolist()]
    assert round_e2m1(x).tolist() == expected


@pytest.mark.parametrize("shape, block", [((5, 40), (1, 16)), ((33, 20), (16, 16)), ((37, 6), (16, 1))])
def test_quantiser_matches_an_explicit_per_block_reference(shape, block):
    torch.manual_seed(sum(shape))
    x = torch.randn(*shape) * torch.logspace(-3, 1, shape[1])  # columns of very different magnitudes
    q = quantize_nvfp4(x, block)
    scales, values, deq = reference_quantize(x, *block)
    assert torch.equal(q.block_scales, scales)
    assert set(q.values.abs().unique().tolist()) <= set(E2M1_GRID)  # every value on the E2M1 grid
    assert torch.equal(q.values, values)
    assert torch.allclose(q.dequantize(), deq, rtol=1e-6, atol=0)
    assert q.block_scales.max() <= 448 and torch.isclose(q.tensor_scale, x.abs().max() / 2688)


def test_two_dimensional_weight_blocks_quantise_w_and_its_transpose_alike():
    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fake_quantize(w, (16, 16)).t(), fake_quantize(w.t(), (16, 16)))
    assert not torch.equal(fake_quantize(w, (1, 16)).t(), fake_quantize(w.t(), (1, 16)))


def test_stochastic_rounding_is_unbiased():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-6, 6, 97)
    draws = round_e2m1(x.expand(4000, -1), stochastic=True, generator=g)
    grid = torch.tensor(E2M1_GRID)
    nearest_values = round_e2m1(x)
    assert torch.isin(draws.abs(), grid).all()
    assert (draws - x).abs().max() <= 2.0  # always one of the two neighbours (widest gap: 4 -> 6)
    assert torch.allclose(draws.mean(0), x, atol=0.06)  # 4000 draws: standard error <= 1/sqrt(4000)
    assert (nearest_values - x).abs().max() > 0.9  # while nearest rounding is biased by up to a half gap

    # the whole quantiser, with block maxima that make every E4M3 scale exact: E[dequantized] = x.
    # The 4000 draws are rows of one tensor: 1x16 blocks and the tensor amax are the same in every row.
    scale = torch.tensor([1.0, 0.5, 0.25, 0.125]).repeat_interleave(16)  # block amax = amax * 2^-k
    x = (torch.rand(64, generator=g) * 1.8 - 0.9) * scale
    x[::16] = scale[::16]
    draws = quantize_nvfp4(x.expand(4000, -1), stochastic=True, generator=g).dequantize()
    assert torch.allclose(draws.mean(0), x, atol=0.015)  # standard error <= (1/6)/sqrt(4000) = 0.0026
    assert (fake_quantize(x[None])[0] - x).abs().max() > 0.05  # nearest rounding is that far off


def test_random_hadamard_keeps_the_wgrad_product():
    rotation = random_hadamard()
    assert torch.allclose(rotation.t() @ rotation, torch.eye(16), atol=1e-6)
    assert set(rotation.abs().unique().tolist()) == {0.25}
    g = torch.Generator().manual_seed(0)
    dy, x = torch.randn(37, 8, generator=g), torch.randn(37, 12, generator=g)  # 37 tokens: padded to 48
    dy_r, x_r = rotate_token_blocks(dy, rotation), rotate_token_blocks(x, rotation)
    assert dy_r.shape == (16, 3 * 8)
    assert torch.allclose(dy_r.view(-1, 8).t() @ x_r.view(-1, 12), dy.t() @ x, atol=1e-5)
    first_block = x[:16, 5]  # column (g=0, k=5) is the rotation of tokens 0-15 of feature 5
    assert torch.allclose(x_r[:, 5], rotation @ first_block, atol=1e-6)


def test_nvfp4_linear_forward_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(40, 32, requires_grad=True)
    w = torch.randn(24, 32, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    y = NVFP4LinearFunction.apply(x, w, b, random_hadamard())
    assert torch.equal(y, fake_quantize(x.detach()) @ fake_quantize(w.detach(), (16, 16)).t() + b.detach())

    dy = torch.randn(40, 24)
    exact_dx, exact_dw = dy @ w.detach(), dy.t() @ x.detach()
    dxs, dws = [], []
    for _ in range(150):
        x.grad = w.grad = b.grad = None
        NVFP4LinearFunction.apply(x, w, b, random_hadamard()).backward(dy)
        dxs.append(x.grad.clone())
        dws.append(w.grad.clone())
    assert torch.equal(b.grad, dy.sum(0))

    def rel(a, ref):
        return ((a - ref).norm() / ref.norm()).item()

    # Dgrad: stochastic dy against the (fixed) quantised weights; unbiased up to saturated block maxima
    weight_q = fake_quantize(w.detach(), (16, 16))
    assert rel(torch.stack(dxs).mean(0), dy @ weight_q) < 0.02 < rel(dxs[0], dy @ weight_q)
    assert rel(dxs[0], exact_dx) < 0.25 and rel(dws[0], exact_dw) < 0.25  # one 4-bit step is still a gradient


def test_apply_keeps_first_and_last_blocks_and_the_checkpoint_keys():
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-tiny", "text-micro", 16
    torch.manual_seed(0)
    model = build_model(cfg, image_size=16, vocab_size=50, context_length=8)
    keys = set(model.state_dict())
    swapped = apply_nvfp4(model, keep_first=1, keep_last=1)
    assert sorted({name.rsplit(".blocks.", 1)[1].split(".")[0] for name in swapped if "vision" in name}) == ["1", "2"]
    assert not any(name.startswith("text.") for name in swapped)  # text-micro has 2 blocks: both kept
    assert len(swapped) == 2 * 4  # qkv, proj, fc1, fc2 in vision blocks 1 and 2
    assert set(model.state_dict()) == keys
    assert type(model.vision.patch_embed.proj) is torch.nn.Linear and type(model.image_head.proj) is torch.nn.Linear


def test_nvfp4_sim_training_run_writes_a_plain_checkpoint(tiny_cfg, tmp_path):
    tiny_cfg.train.precision = "nvfp4-sim"
    tiny_cfg.train.nvfp4_keep_first = tiny_cfg.train.nvfp4_keep_last = 0
    run_training(tiny_cfg, tmp_path, progress=False)
    model = load(tmp_path).model
    assert not any(isinstance(m, NVFP4Linear) for m in model.modules())  # inference: fp32 master weights
    images = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(model.encode_image(images)).all()


def test_eval_mode_is_the_plain_linear():
    layer = NVFP4Linear.wrap(torch.nn.Linear(32, 16))
    x = torch.randn(3, 5, 32)
    layer.eval()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.train()
    assert layer(x).shape == (3, 5, 16) and not torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
