import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlalign.data.shapes import RELATIONS, ShapesConfig, ShapesWorld, true_relations
from vlalign.data.transforms import ImageTransform
from vlalign.eval.adversarial import (
    normalised_budget,
    pair_loss,
    perturb,
    random_perturbation,
    universal_perturbation,
)
from vlalign.eval.hard_negatives import (
    NEGATIVE_TYPES,
    OPPOSITE,
    hard_negatives,
    holds,
    negative_accuracy,
    true_claim,
)
from vlalign.eval.linear_probe import (
    few_shot_indices,
    probe,
    probe_suite,
    split_indices,
)
from vlalign.eval.mir import (
    decoder_mir,
    frechet_distance,
    modality_integration_rate,
    replace_outliers,
    split_prefix_hidden_states,
)

# ------------------------------------------------------------------ linear probe


def test_linear_probe_recovers_a_linearly_separable_labelling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    labels = (x @ torch.randn(6, 3, generator=g)).argmax(1)  # a linear labelling: separable by construction
    train, val, test = split_indices(200)
    out = probe(x, labels, train, val, test, num_classes=3)
    assert out["top1"] >= 0.9
    shuffled = labels[torch.randperm(200, generator=g)]  # no relation to x: near chance (1/3)
    assert probe(x, shuffled, train, val, test, num_classes=3)["top1"] < 0.55


def test_splits_are_disjoint_deterministic_and_few_shot_takes_k_per_class():
    train, val, test = split_indices(50)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(50))
    assert torch.equal(train, split_indices(50)[0])
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 9)
    picked = few_shot_indices(labels, 5)
    assert torch.bincount(labels[picked]).tolist() == [5, 3, 5]  # class 1 has only 3
    rows = probe_suite(torch.randn(60, 4), torch.arange(60) % 3, 3, shots=(1,))
    assert [r["shots"] for r in rows] == ["full", 1] and rows[1]["n_train"] == 2 * 3  # 1-shot train + 1-shot val


# ------------------------------------------------------------------ compositional hard negatives


@pytest.fixture(scope="module")
def scenes():
    world = ShapesWorld(150, seed=3, cfg=ShapesConfig(image_size=32))
    return [world.scene(i) for i in range(150)]


def test_hard_negatives_differ_from_the_truth_and_are_false_for_the_scene(scenes):
    seen = set()
    for i, scene in enumerate(scenes):
        truth = true_claim(scene)
        assert holds(truth, scene)
        for kind, claim in hard_negatives(scene, np.random.default_rng(i)).items():
            seen.add(kind)
            assert claim.text != truth.text and not holds(claim, scene), (kind, truth.text, claim.text)
            if kind == "swap-relation" and truth.b is not None:
                x, y = scene.objects[:2]  # independent check straight from the grid cells
                assert claim.relation == OPPOSITE[truth.relation] and claim.relation not in true_relations(x, y)
            if kind == "swap-order":
                assert (claim.a, claim.b) == (truth.b, truth.a)
    assert seen == set(NEGATIVE_TYPES)
    assert {r for s in scenes if len(s.objects) > 1 for r in [true_claim(s).relation]} <= set(RELATIONS)


def test_an_oracle_scores_one_and_random_embeddings_score_near_chance(scenes):
    truths, negatives, owners, kinds = [], [], [], []
    for i, scene in enumerate(scenes):
        truths.append(true_claim(scene))
        for kind, claim in hard_negatives(scene, np.random.default_rng(i)).items():
            negatives.append(claim), owners.append(i), kinds.append(kind)

    def oracle_text(claims):  # a text embeds as "which scenes make me true"
        return torch.tensor([[float(holds(c, s)) for s in scenes] for c in claims])

    images = torch.eye(len(scenes))  # image i is the one-hot of scene i
    perfect = negative_accuracy(images, oracle_text(truths), oracle_text(negatives), owners, kinds)
    assert perfect["accuracy"] == 1.0 and all(perfect[k] == 1.0 for k in NEGATIVE_TYPES)
    g = torch.Generator().manual_seed(0)
    rand = lambda n: F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    chance = negative_accuracy(rand(len(scenes)), rand(len(truths)), rand(len(negatives)), owners, kinds)
    assert 0.4 < chance["accuracy"] < 0.6 and chance["n"] == len(negatives) > 450


# ------------------------------------------------------------------ universal adversarial perturbation


def test_universal_perturbation_respects_its_budget_and_raises_the_loss():
    torch.manual_seed(0)
    proj = torch.randn(3 * 8 * 8, 16)
    encode = lambda x: F.normalize(x.flatten(1) @ proj, dim=-1)
    pixels = torch.rand(40, 3, 8, 8) * 2 - 1
    texts = encode(pixels)  # a perfectly aligned "model"
    eps = normalised_budget(8, ImageTransform(8, 3))
    assert eps == pytest.approx(16 / 255)  # 8 pixel levels of 255, input scaled by 2/255 per level
    delta = universal_perturbation(encode, pixels, texts, eps, steps=15, batch_size=20, scale=20.0)
    assert delta.shape == (3, 8, 8) and delta.abs().max() <= eps
    attacked = perturb(pixels, delta)
    assert (attacked - pixels).abs().max() <= eps + 1e-7 and attacked.min() >= -1 and attacked.max() <= 1
    clean = pair_loss(encode(pixels), texts, 20.0)
    noisy = pair_loss(encode(perturb(pixels, random_perturbation(delta.shape, eps))), texts, 20.0)
    assert pair_loss(encode(attacked), texts, 20.0) > max(clean, noisy)


# ------------------------------------------------------------------ MIR


def test_frechet_distance_matches_the_closed_form_for_an_affine_map():
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = 2 * x + 1  # S_y = 4 S_x, so tr(S_x) + tr(S_y) - 2 tr(2 S_x) = tr(S_x)
    expected = (x.mean(0) - y.mean(0)).square().sum() + torch.cov(x.t()).trace()
    assert frechet_distance(x, y) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_mir_is_zero_for_identical_distributions_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(400, 8, generator=g) for _ in range(3)]
    assert modality_integration_rate(layers, layers)["fd_sum"] < 1e-8
    sums = [modality_integration_rate([h + shift for h in layers], layers)["fd_sum"] for shift in (0.5, 1.0, 2.0)]
    assert 0 < sums[0] < sums[1] < sums[2]
    out = modality_integration_rate([h + 1.0 for h in layers], layers)
    assert out["mir"] == pytest.approx(np.log10(sum(out["per_layer"]))) and len(out["per_layer"]) == 3


def test_outliers_become_the_median_token_and_prefix_split_skips_layer_zero():
    tokens = torch.randn(100, 4, generator=torch.Generator().manual_seed(2))
    tokens[7] = 1000.0
    cleaned = replace_outliers(tokens)
    assert torch.equal(cleaned[7], tokens.median(0).values) and torch.equal(cleaned[:7], tokens[:7])
    hidden = [torch.full((2, 5, 3), float(i)) for i in range(4)]  # 4 layers, batch 2, 2 prefix + 3 text
    mask = torch.tensor([[True, True, False], [True, False, False]])
    image, text = split_prefix_hidden_states(hidden, 2, mask)
    assert len(image) == 3 and image[0].shape == (4, 3) and text[0].shape == (3, 3) and image[0][0, 0] == 1.0
    with pytest.raises(ValueError, match="same non-zero number of layers"):
        decoder_mir(hidden[:1], 2, mask)


# ------------------------------------------------------------------ the tasks on a tiny model, and the benchmark


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from vlalign.cli import main

    out = tmp_path_factory.mktemp("evalsuite") / "tiny"
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--quiet", "--no-eval", "--set", "train.steps=2",
                 "--set", "train.checkpoint_every=2", "--set", "eval.zeroshot_n=40",
                 "--set", "eval.retrieval_n=24"]) == 0
    return out


def test_benchmark_writes_one_table_and_skips_finished_entries(tiny_run, monkeypatch):
    from vlalign.api import load
    from vlalign.eval import benchmark

    small = "shapes:n=30,seed=2,objects=1,size=32"
    suite = [("zeroshot", small), ("compositional-negatives", None), ("linear-probe", small), ("no-such-task", None),
             ("zeroshot", "fashion-mnist:nosplit")]
    monkeypatch.setitem(benchmark.SUITES, "test", suite)
    model = load(tiny_run)
    lines = []
    out = benchmark.run_benchmark(model, "test", log=lines.append)
    table = json.loads((tiny_run / "benchmark-test.json").read_text())
    assert {row["task"] for row in table["rows"]} == {"zeroshot", "compositional-negatives", "linear-probe"}
    assert [s["entry"] for s in table["skipped"]] == ["no-such-task|default", "zeroshot|fashion-mnist:nosplit"]
    assert out["table"] == table and "| linear-probe |" in (tiny_run / "benchmark-test.md").read_text()
    negatives = next(r for r in table["rows"] if r["task"] == "compositional-negatives")["metrics"]
    assert 0.0 <= negatives["accuracy"] <= 1.0
    cache = torch.load(tiny_run / "benchmark" / "text-embeddings.pt")
    text, embed = next(iter(cache["texts"].items()))
    assert cache["step"] == model.step and torch.allclose(embed, model.encode_text([text])[0], atol=1e-6)
    lines.clear()
    again = benchmark.run_benchmark(model, "test", log=lines.append)
    assert sum("done earlier" in line for line in lines) == 3 and not again["fresh"].results
    assert again["table"] == table


def test_adversarial_and_mir_tasks_run_on_a_real_model(tiny_run):
    from vlalign.api import load
    from vlalign.eval import run_tasks

    model = load(tiny_run)
    results = run_tasks(model, ["adversarial", "mir"]).results
    attacks = [r for r in results if r["task"] == "adversarial"]
    assert [r["budget"] for r in attacks] == ["2/255", "4/255", "8/255"]
    assert all(r["delta_linf_pixels"] <= float(r["budget"].split("/")[0]) + 1e-4 for r in attacks)
    mir = next(r for r in results if r["task"] == "mir")
    depth = min(len(model.model.vision.transformer.blocks), len(model.model.text.transformer.blocks))
    assert np.isfinite(mir["mir"]) and len(mir["per_layer"]) == depth
