"""Evaluation tasks. Each task takes a loaded model (``vlalign.api.Aligner``) and an optional data
spec, and returns JSON metrics (one dict per result, each with a ``"task"`` key) plus figures.

Register a new task with ``@task("name")``; ``vlalign eval --task name`` runs it. Tasks for
generative runs (``model.arch`` "lm" or "vlm", loaded as ``vlalign.api.VisualAssistant``) register
with ``@task("name", generative=True)`` and live in ``eval/generative.py``. A task whose default data
is the shapes world (held-out colour-shape combinations, scenes with known objects) registers with
``shapes_world=True``: a run trained on other data skips it, with the reason, unless data is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from vlalign.api import Aligner
from vlalign.data.edges import same_modality
from vlalign.data.sample import CorruptSample, Source
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval import plots
from vlalign.eval.channels import channel_subsets, subset_accuracies, summarise
from vlalign.eval.late_interaction import PromptScores, token_similarities
from vlalign.eval.retrieval import retrieval_metrics, retrieval_metrics_from_scores
from vlalign.eval.zeroshot import PromptBank, classification_metrics


@dataclass
class TaskResult:
    results: list[dict]  # JSON-able; every dict has "task"
    figures: dict[str, bytes] = field(default_factory=dict)  # title -> PNG
    skipped: list[str] = field(default_factory=list)  # one line per task that did not apply: "task: why"


TASKS: dict[str, Callable[[Aligner, str | None], TaskResult]] = {}
GENERATIVE_TASKS: set[str] = set()  # tasks that take a generative model instead of an Aligner
SHAPES_WORLD_TASKS: set[str] = set()  # tasks whose default data is the shapes world


def task(name: str, generative: bool = False, shapes_world: bool = False):
    def wrap(fn: Callable[[Aligner, str | None], TaskResult]):
        TASKS[name] = fn
        if generative:
            GENERATIVE_TASKS.add(name)
        if shapes_world:
            SHAPES_WORLD_TASKS.add(name)
        return fn

    return wrap


def is_shapes_world(spec: str) -> bool:
    """Whether the data spec ``spec`` gives shapes-world scenes (its first sample has a ``scene``)."""
    try:
        return "scene" in build_source(spec)[0].meta
    except CorruptSample:
        return False


def _skip_reason(model: Aligner, name: str) -> str | None:
    """Why task ``name`` does not apply to ``model`` on its default data, or None when it does."""
    train = model.config.data.train
    if name in SHAPES_WORLD_TASKS and not is_shapes_world(train):
        return (f"{name}: skipped, it scores the shapes world and this run trained on {train}; "
                f"--task {name} --data SPEC runs it on other data")
    return None


def load_arrays(source: Source, limit: int | None = None) -> tuple[list[np.ndarray], list[str], list[int], list]:
    """Images, captions, labels and samples of a source (corrupt samples are skipped)."""
    images, captions, labels, samples = [], [], [], []
    for i in range(len(source) if limit is None else min(limit, len(source))):
        try:
            s = source[i]
        except CorruptSample:
            continue
        images.append(s.image)
        captions.append(s.caption)
        labels.append(-1 if s.label is None else s.label)
        samples.append(s)
    if not images:
        raise DataError(f"Evaluation data {source.name} has no readable samples.")
    return images, captions, labels, samples


def _shapes_eval_spec(model: Aligner, n: int, mode: str) -> str:
    """Single-object shapes images like the training world's; ``mode`` picks seen or held-out combos."""
    train_cfg = getattr(build_source(model.config.data.train), "cfg", None)
    holdout = tuple(getattr(train_cfg, "holdout", ()) or ())
    spec = f"shapes:n={n},seed=2,objects=1,size={model.config.data.image_size}"
    if getattr(train_cfg, "channels", "rgb") != "rgb":
        spec += f",channels={train_cfg.channels}"
    if holdout:
        spec += ",holdout=" + "+".join(f"{c}-{s}" for c, s in holdout) + f",holdout_mode={mode}"
    elif mode == "only":
        raise DataError("The compositional task needs a training spec with holdout=colour-shape+... combos.")
    return same_modality(model.config.data.train, spec)  # an edge-map run is scored on edge maps


def labelled_eval_spec(model: Aligner) -> str:
    """Default data of the classification tasks: held-out single-object scenes for a run trained on the
    shapes world, else the run's ``data.eval`` (e.g. ``fashion-mnist:test``)."""
    if model.config.data.train.startswith("shapes:"):
        return _shapes_eval_spec(model, model.config.eval.zeroshot_n, "exclude")
    return model.config.data.eval


def _shapes_label_sets(samples: list) -> dict[str, tuple[list[str], list[list[str]], list[int]]]:
    """For single-object shapes scenes: label set name -> (class names, prompts per class, labels).

    A class's prompts ensemble over what the label leaves open (size, position, and the other
    attribute), phrased like the training captions: "a small red circle in the top left corner".
    Prompts without a position are out of distribution for the text tower and cost accuracy.
    """
    from vlalign.data.shapes import COLOURS, POSITION_PHRASES, SHAPES, SIZES

    shapes_, colours = list(SHAPES), list(COLOURS)
    combos = [(c, s) for c in colours for s in shapes_]

    def prompts(colour_options, shape_options) -> list[str]:
        return [f"a {z} {c} {s} {where}" for z in SIZES for c in colour_options for s in shape_options
                for where in POSITION_PHRASES]

    return {
        "shape": (shapes_, [prompts(colours, [s]) for s in shapes_], [shapes_.index(x.meta["shape"]) for x in samples]),
        "colour": (colours, [prompts([c], shapes_) for c in colours],
                   [colours.index(x.meta["colour"]) for x in samples]),
        "shape+colour": ([f"{c} {s}" for c, s in combos], [prompts([c], [s]) for c, s in combos],
                         [combos.index((x.meta["colour"], x.meta["shape"])) for x in samples]),
    }


def _generic_label_set(source: Source) -> dict[str, tuple[list[str], list[list[str]], list[int]]]:
    """"class": the source's classes in its caption templates; where the source also phrases them in wording no
    training caption uses (``unseen_prompts()``, e.g. Fashion-MNIST), "class (unseen prompts)" scores those."""
    if not source.classes:
        raise DataError(f"Zero-shot classification needs a labelled source; {source.name} has no classes.")
    templates = source.templates() if hasattr(source, "templates") else ["a photo of a {c}."]
    classes = list(source.classes)
    label_sets = {"class": (classes, [[t.format(c=c) for t in templates] for c in classes], None)}
    if hasattr(source, "unseen_prompts"):
        label_sets["class (unseen prompts)"] = (classes, source.unseen_prompts(), None)
    return label_sets


def prompt_ensemble(model: Aligner, is_shapes: bool) -> str:
    """``eval.prompt_ensemble``; "auto" takes "max" for the shapes label sets, whose prompts enumerate the
    sizes and positions a class comes in, and "mean" for paraphrase templates (``vlalign.eval.zeroshot``)."""
    choice = model.config.eval.prompt_ensemble
    return ("max" if is_shapes else "mean") if choice == "auto" else choice


def _classify(model: Aligner, task_name: str, spec: str, source: Source, limit: int) -> TaskResult:
    images, _, labels, samples = load_arrays(source, limit)
    is_shapes = hasattr(source, "scene")
    label_sets = _shapes_label_sets(samples) if is_shapes else _generic_label_set(source)
    if model.late_interaction:  # FILIP: token-wise scores, each distinct prompt once
        scores = PromptScores(model, images, [p for _, prompts, _ in label_sets.values() for ps in prompts for p in ps])
    else:
        image_embeds = model.encode_image(images)
    result = TaskResult([])
    for label_set, (names, prompts, set_labels) in label_sets.items():
        set_labels = torch.tensor(labels if set_labels is None else set_labels)
        ensemble = prompt_ensemble(model, is_shapes)
        if model.late_interaction:
            ensemble = "mean"  # PromptScores pools token-wise scores by their mean
            logits = scores.class_logits(prompts)  # [N, K]
        else:
            logits = PromptBank(model.encode_text, prompts, ensemble).scores(image_embeds)  # [N, K]
        metrics = classification_metrics(logits, set_labels, len(prompts))
        confusion = metrics.pop("confusion")
        if is_shapes:
            metrics.update(_top1_by_object_size(logits.argmax(1), set_labels, samples))
        result.results.append({"task": task_name, "data": spec, "labels": label_set, "ensemble": ensemble,
                               "prompts_truncated": count_truncated(model, prompts), **metrics})
        if label_set in ("shape+colour", "class"):
            present = sorted(set(set_labels.tolist()))
            result.figures[f"{task_name}: confusion ({label_set})"] = plots.confusion_matrix(
                confusion[np.ix_(present, present)], [names[i] for i in present], f"{task_name} confusion, {label_set}")
    return result


def count_truncated(model: Aligner, prompts: list[list[str]]) -> int:
    """How many distinct prompts have more tokens than the text context and are cut short (losing what follows)."""
    distinct = set(p for class_prompts in prompts for p in class_prompts)
    return sum(len(model.tokenizer.encode(p)) > model.config.data.context_length for p in distinct)


def _top1_by_object_size(predictions: torch.Tensor, labels: torch.Tensor, samples: list) -> dict:
    """Top-1 on the small and on the large objects of single-object scenes (small ones are 13 px at 96 px
    and are the hard part of the shapes world)."""
    sizes = [x.meta["size"] for x in samples]
    out = {}
    for size in ("small", "large"):
        keep = torch.tensor([z == size for z in sizes])
        if keep.any():
            out[f"top1_{size}"] = (predictions[keep] == labels[keep]).float().mean().item()
    return out


@task("zeroshot")
def zeroshot(model: Aligner, spec: str | None) -> TaskResult:
    """Zero-shot classification with prompt ensembles; on shapes: shape, colour and shape+colour labels."""
    spec = spec or labelled_eval_spec(model)
    return _classify(model, "zeroshot", spec, build_source(spec), model.config.eval.zeroshot_n)


@task("compositional", shapes_world=True)
def compositional(model: Aligner, spec: str | None) -> TaskResult:
    """Zero-shot on colour-shape combinations held out from training (the compositional split)."""
    spec = spec or _shapes_eval_spec(model, model.config.eval.zeroshot_n, "only")
    return _classify(model, "compositional", spec, build_source(spec), model.config.eval.zeroshot_n)


@task("retrieval")
def retrieval(model: Aligner, spec: str | None) -> TaskResult:
    """Image->text and text->image Recall@1/5/10 and mean/median rank on held-out pairs."""
    spec = spec or model.config.data.eval
    source = build_source(spec)
    images, captions, _, _ = load_arrays(source, model.config.eval.retrieval_n)
    if model.late_interaction:  # FILIP: s^I ranks texts, s^T ranks images
        i2t, t2i = token_similarities(model, images, captions)  # [N images, N texts] each
        metrics = retrieval_metrics_from_scores(i2t, t2i.t())
        sim = t2i[:, :8].t()  # [8 queries, N]
    else:
        image_embeds, text_embeds = model.encode_image(images), model.encode_text(captions)
        metrics = retrieval_metrics(image_embeds, text_embeds)
        sim = text_embeds[:8] @ image_embeds.t()  # [8 queries, N]
    metrics["unique_captions"] = len(set(captions))
    top = sim.topk(min(5, len(images)), dim=1).indices.tolist()
    grid = plots.retrieval_grid(captions[:8], plots.display_images(np.stack(images)), top, list(range(8)))
    return TaskResult([{"task": "retrieval", "data": spec, **metrics}], {"retrieval examples": grid})


@task("channels")
def channels(model: Aligner, spec: str | None) -> TaskResult:
    """Accuracy on channel subsets (ChannelViT's protocol; which subsets: ``vlalign.eval.channels``).

    Supervised runs are scored by their classification head, contrastive runs by zero-shot
    prompts (on shapes: the "colour shape" classes). Default data: held-out single-object shapes
    for a shapes run, else the run's ``data.eval``.
    """
    spec = spec or labelled_eval_spec(model)
    source = build_source(spec)
    images, _, labels, samples = load_arrays(source, model.config.eval.zeroshot_n)
    pixels = model.transform(images)  # [N, C, H, W], every channel
    device = model.device
    if model.config.objective.name in ("supervised", "gpt4image"):  # trained classifier heads
        method = "head"

        def score(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return model.model.classify_image(x.to(device), ids.to(device)).to(x.device)  # [B, K]
    else:
        is_shapes = hasattr(source, "scene")
        _, prompts, set_labels = (_shapes_label_sets(samples)["shape+colour"] if is_shapes
                                  else _generic_label_set(source)["class"])
        labels = labels if set_labels is None else set_labels
        bank = PromptBank(model.encode_text, prompts, prompt_ensemble(model, is_shapes))
        method = f"zeroshot ({bank.ensemble} over prompts)"

        def score(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return bank.scores(model.model.encode_image(x.to(device), ids.to(device)).to(x.device))  # [B, K]

    labels = torch.tensor(labels)
    if (labels < 0).any():
        raise DataError(f"The channels task needs labelled data; {source.name} has unlabelled samples.")
    accuracies = subset_accuracies(score, pixels, labels, channel_subsets(pixels.shape[1]),
                                   model.config.eval.batch_size)
    summary = summarise(accuracies, list(source.channel_names))
    figure = plots.channel_subset_accuracy(summary["by_size"], summary["subsets"],
                                           f"channel subsets ({method}), {source.name}")
    return TaskResult([{"task": "channels", "data": spec, "method": method, "n": int(labels.numel()), **summary}],
                      {"channels: accuracy per number of channels": figure})


def run_tasks(model: Aligner, names: list[str], spec: str | None = None) -> TaskResult:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise DataError(f"Unknown eval task '{unknown[0]}'. Known tasks: {', '.join(sorted(TASKS))}.")
    generative = model.config.model.arch != "dual-encoder"
    wrong = [n for n in names if (n in GENERATIVE_TASKS) != generative]
    if wrong:
        fitting = sorted(n for n in TASKS if (n in GENERATIVE_TASKS) == generative)
        raise DataError(f"Eval task '{wrong[0]}' does not apply to this run (model.arch "
                        f"'{model.config.model.arch}'). Tasks for it: {', '.join(fitting)}.")
    combined = TaskResult([])
    for name in names:
        reason = None if spec else _skip_reason(model, name)
        if reason:
            combined.skipped.append(reason)
            continue
        with torch.inference_mode():
            out = TASKS[name](model, spec)
        combined.results += out.results
        combined.figures |= out.figures
        combined.skipped += out.skipped
    return combined
