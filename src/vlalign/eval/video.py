"""Video-text evaluation (issue 13 item 8) on held-out clips of a video source such as moving-shapes.

- ``video-retrieval``: clip<->caption Recall@1/5/10 (``vlalign.eval.retrieval``).
- ``motion``: for each clip, does the model score its caption above the same caption with what needs the
  frames' order flipped (move direction, appear/disappear, the order of two events;
  ``vlalign.data.moving_shapes.counterfactual_captions``)? Chance is 50%; a model that pools its frames
  without their order scores a clip and its reverse alike, so it stays near chance.
"""

from __future__ import annotations

import torch

from vlalign.api import Aligner
from vlalign.data.moving_shapes import Event, counterfactual_captions
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval.retrieval import retrieval_metrics
from vlalign.eval.tasks import TaskResult, load_arrays, task


def _clips(model: Aligner, spec: str | None, limit: int):
    spec = spec or model.config.data.eval
    clips, captions, _, samples = load_arrays(build_source(spec), limit)
    if clips[0].ndim != 4:
        raise DataError(f"Video evaluation needs clips [T, C, H, W]; {spec} gives images. Use a video source, "
                        "e.g. --data moving-shapes:n=500,seed=1.")
    return spec, clips, captions, samples


@task("video-retrieval")
def video_retrieval(model: Aligner, spec: str | None) -> TaskResult:
    """Clip->caption and caption->clip Recall@1/5/10 and mean/median rank on held-out clips."""
    spec, clips, captions, _ = _clips(model, spec, model.config.eval.retrieval_n)
    metrics = retrieval_metrics(model.encode_image(clips), model.encode_text(captions))
    return TaskResult([{"task": "video-retrieval", "data": spec, "unique_captions": len(set(captions)), **metrics}])


def motion_accuracies(clip_embeds: torch.Tensor, true_embeds: torch.Tensor,
                      flipped: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """clip_embeds, true_embeds [N, E]; ``flipped[test] = (rows [n], counterfactual embeds [n, E])``
    -> per test the fraction of its rows where the true caption scores strictly higher."""
    true_scores = (clip_embeds * true_embeds).sum(1)  # [N]
    out = {}
    for test, (rows, embeds) in flipped.items():
        wins = true_scores[rows] > (clip_embeds[rows] * embeds).sum(1)
        out[f"{test}_accuracy"] = wins.float().mean().item()
        out[f"{test}_n"] = int(rows.numel())
    return out


@task("motion")
def motion(model: Aligner, spec: str | None) -> TaskResult:
    """True caption vs its time-reversed counterfactual (direction, appearance, order); chance 50%."""
    spec, clips, captions, samples = _clips(model, spec, model.config.eval.retrieval_n)
    if "events" not in samples[0].meta:
        raise DataError(f"The motion task needs clips with events (moving-shapes); {spec} has none.")
    clip_embeds, true_embeds = model.encode_image(clips), model.encode_text(captions)
    by_test: dict[str, tuple[list[int], list[str]]] = {}
    for row, sample in enumerate(samples):
        events = tuple(Event(**e) for e in sample.meta["events"])
        for test, caption in counterfactual_captions(events).items():
            rows, texts = by_test.setdefault(test, ([], []))
            rows.append(row)
            texts.append(caption)
    flipped = {test: (torch.tensor(rows), model.encode_text(texts)) for test, (rows, texts) in sorted(by_test.items())}
    metrics = motion_accuracies(clip_embeds, true_embeds, flipped)
    return TaskResult([{"task": "motion", "data": spec, "n": len(clips), **metrics}])
