"""Model merging and weight residuals between runs (issue 13, item 7), through the library and `vlalign merge`."""

import pytest
import torch

import vlalign
from vlalign.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vlalign.cli import main
from vlalign.config import apply_overrides, dump_yaml, to_dict
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import CheckpointError
from vlalign.adapt.merging import add_difference, interpolate, merge_runs
from vlalign.models import build_model
from vlalign.recipes import get_recipe

CAPTIONS = ["a red circle", "a blue square on the left", "two green triangles"] * 5


def _run(path, seed, *overrides, tokenizer_captions=CAPTIONS):
    """A run directory with one checkpoint of a randomly initialised tiny model."""
    cfg = apply_overrides(get_recipe("tiny"), list(overrides))
    path.mkdir()
    tokenizer = train_tokenizer(tokenizer_captions, 300)
    tokenizer.save(path / "tokenizer.json")
    ImageTransform(cfg.data.image_size, 3).save(path / "preprocess.json")
    (path / "config.yaml").write_text(dump_yaml(cfg))
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    with torch.no_grad():
        model.vision.transformer.blocks[0].attn.proj.bias[0] = -0.0  # a negative zero must survive alpha=0
    state = {"step": 3, "samples_seen": 0, "skipped_steps": 0, "consecutive_nonfinite": 0}
    save_checkpoint(path / "checkpoints", 3, model.state_dict(), None, {"train_state": state, "config": to_dict(cfg)})
    return path


def _weights(run):
    return load_checkpoint(latest_checkpoint(run / "checkpoints"))[0]


def _bits_equal(x, y):
    return x.dtype == y.dtype and torch.equal(x.view(torch.int32), y.view(torch.int32))


@pytest.fixture
def runs(tmp_path):
    return _run(tmp_path / "a", 0), _run(tmp_path / "b", 1), tmp_path


@pytest.mark.parametrize("alpha,source", [(0.0, "a"), (1.0, "b")])
def test_alpha_endpoints_reproduce_the_inputs_bit_exactly(runs, alpha, source):
    a, b, tmp = runs
    out = tmp / "merged"
    assert main(["merge", str(a), str(b), "--alpha", str(alpha), "--out", str(out)]) == 0
    merged, expected = _weights(out), _weights(a if source == "a" else b)
    assert merged.keys() == expected.keys()
    assert all(_bits_equal(merged[k], expected[k]) for k in expected)


def test_midpoint_is_the_mean_and_loads_as_a_run(runs):
    a, b, tmp = runs
    out = tmp / "mid"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 0  # alpha defaults to 0.5
    wa, wb, merged = _weights(a), _weights(b), _weights(out)
    for k in wa:
        torch.testing.assert_close(merged[k], (wa[k] + wb[k]) / 2)
    aligner = vlalign.load(out)  # a loadable run: config, tokenizer, preprocessing, committed checkpoint
    assert aligner.encode_text(["a red circle"]).shape == (1, aligner.embed_dim)
    meta = load_checkpoint(latest_checkpoint(out / "checkpoints"))[2]
    assert meta["merged_from"]["kind"] == "interpolate" and meta["merged_from"]["alpha"] == 0.5


def test_residual_moves_another_base_by_the_difference(runs):
    a, b, tmp = runs
    c = _run(tmp / "c", 2)
    out = tmp / "residual"
    assert main(["merge", str(a), str(b), "--onto", str(c), "--out", str(out)]) == 0
    wa, wb, wc, merged = _weights(a), _weights(b), _weights(c), _weights(out)
    for k in wa:
        torch.testing.assert_close(merged[k], wc[k] + (wb[k] - wa[k]))
    # with C = A the residual lands on B
    landed = add_difference(wa, wa, wb)
    for k in wa:
        torch.testing.assert_close(landed[k], wb[k])


def test_interpolate_is_linear_in_alpha():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(4, 3, generator=g), "step": torch.tensor(3)}
    b = {"w": torch.randn(4, 3, generator=g), "step": torch.tensor(5)}
    merged = interpolate(a, b, 0.25)
    torch.testing.assert_close(merged["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert merged["step"] == 3  # non-float tensors are taken from A


def test_mismatched_architectures_are_a_clear_error(runs):
    a, _, tmp = runs
    other = _run(tmp / "other", 1, "model.adapter.kind=bottleneck")
    with pytest.raises(CheckpointError, match="different architectures.*only in"):
        merge_runs(a, other, tmp / "x")
    wider = _run(tmp / "wider", 1, "model.embed_dim=48")
    with pytest.raises(CheckpointError, match="other shapes"):
        merge_runs(a, wider, tmp / "y")
    retokenized = _run(tmp / "retok", 1, tokenizer_captions=["completely other words here"] * 5)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        merge_runs(a, retokenized, tmp / "z")
    assert main(["merge", str(a), str(wider), "--out", str(tmp / "cli")]) == 2  # the CLI prints it, exit 2
