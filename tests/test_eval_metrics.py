import torch
import torch.nn.functional as F

from vlalign.eval.retrieval import ranks_of_truth, retrieval_metrics
import pytest

from vlalign.eval.zeroshot import PromptBank, classification_metrics


def test_perfect_retrieval_scores_one_and_random_is_near_chance():
    e = F.normalize(torch.randn(200, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    perfect = retrieval_metrics(e, e)
    assert perfect["t2i_R@1"] == perfect["i2t_R@1"] == 1.0 and perfect["t2i_median_rank"] == 1
    other = F.normalize(torch.randn(200, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    chance = retrieval_metrics(e, other)
    assert chance["t2i_R@10"] < 0.15  # chance is 10/200 = 0.05


def test_ranks_count_ties_against_the_model():
    sim = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    assert ranks_of_truth(sim).tolist() == [2, 2, 1]


def test_classification_metrics_on_a_known_case():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels, 3)
    assert m["top1"] == 0.75  # rows 0, 1 and 3 right
    assert abs(m["mean_per_class_recall"] - (1 + 1 + 0.5) / 3) < 1e-6
    assert m["confusion"][2].tolist() == [0, 1, 1]


def test_prompt_ensembles_mean_and_max_on_a_known_case():
    """Class 0 has prompts a=(1,0) and b=(0,1); class 1 the single prompt c=(0.8,0.6)."""
    table = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.8, 0.6])}

    def encode(texts):
        return torch.stack([table[t] for t in texts])

    mean = PromptBank(encode, [["a", "b"], ["c"]], "mean")
    assert torch.allclose(mean.class_embeds, F.normalize(torch.tensor([[0.5, 0.5], [0.8, 0.6]]), dim=-1))
    image = torch.tensor([[1.0, 0.0]])  # exactly prompt a of class 0
    # The mean of a and b points at 45 degrees: class 1 (at ~37 degrees) is closer, so "mean" misses it,
    # while "max" finds the prompt it matches exactly.
    assert mean.scores(image).argmax(1).item() == 1
    best = PromptBank(encode, [["a", "b"], ["c"]], "max").scores(image)
    assert torch.allclose(best, torch.tensor([[1.0, 0.8]]))
    with pytest.raises(ValueError, match="mean' or 'max"):
        PromptBank(encode, [["a"]], "median")


def test_top1_by_object_size_scores_each_size_on_its_own_objects():
    from types import SimpleNamespace

    from vlalign.eval.tasks import _top1_by_object_size

    samples = [SimpleNamespace(meta={"size": z}) for z in ("small", "small", "large", "large", "large")]
    predictions, labels = torch.tensor([1, 0, 2, 2, 0]), torch.tensor([1, 1, 2, 2, 2])
    out = _top1_by_object_size(predictions, labels, samples)
    assert out["top1_small"] == 0.5
    assert abs(out["top1_large"] - 2 / 3) < 1e-6
    assert _top1_by_object_size(predictions[:2], labels[:2], samples[:2]) == {"top1_small": 0.5}


def test_count_truncated_counts_each_distinct_prompt_longer_than_the_context_once():
    from types import SimpleNamespace

    from vlalign.data.tokenizer import train_tokenizer
    from vlalign.eval.tasks import count_truncated

    tokenizer = train_tokenizer(["a cat", "a dog"], vocab_size=300)
    model = SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(data=SimpleNamespace(context_length=6)))
    # "a cat" is [BOS] a cat [EOS] at most 5 tokens; the byte-level tokens of an unseen long word are not.
    short, long = "a cat", "a hippopotamus"
    assert len(tokenizer.encode(short)) <= 6 < len(tokenizer.encode(long))
    assert count_truncated(model, [[short, long], [long, "a dog"]]) == 1
    assert count_truncated(model, [[short], ["a dog"]]) == 0
