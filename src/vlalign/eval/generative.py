"""Evaluation tasks for generative runs (``vlalign.api.VisualAssistant``), on held-out shapes scenes.

- ``vqa``: exact-match accuracy of greedy answers, overall and by question type.
- ``caption``: attribute recall of greedy captions (fraction of the scene's objects whose colour
  and shape words both appear) and attribute precision (fraction of "colour shape" phrases in the
  caption that name an object of the scene). Only the first sentence counts: a language model
  pre-trained on "caption. question answer" documents may run on past the caption.
- ``alignment``: CG-VLM's diagnostic (Liu et al. 2023, Fig. 2): cosine similarity between the
  projected image features and the language model's input embeddings of related text tokens
  (the image's own caption) and unrelated ones (other captions' tokens). Weak alignment shows as
  a high similarity to everything, i.e. a small gap.
- ``text-qa``: the same questions with the caption given as text and no image: the language
  model's text-only ability (which CG-VLM claims to retain better).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from vlalign.api import VisualAssistant
from vlalign.data.shapes import COLOURS, SHAPES
from vlalign.data.shapes_qa import ShapesQA
from vlalign.data.specs import build_source
from vlalign.device import model_device
from vlalign.errors import DataError
from vlalign.eval import plots
from vlalign.eval.mir import decoder_mir
from vlalign.eval.retrieval import ranks_of_truth
from vlalign.eval.tasks import TaskResult, task
from vlalign.objectives.cgvlm import image_sentence_similarity, pool_patches


def _eval_world_spec(model: VisualAssistant, spec: str | None) -> str:
    """The held-out data: ``spec``, else the run's ``data.eval``; either shapes or shapes-qa."""
    spec = spec or model.config.data.eval
    if not spec.startswith(("shapes:", "shapes-qa:")):
        raise DataError(f"Generative eval tasks run on shapes scenes; got data spec '{spec}'. "
                        "Pass --data shapes-qa:n=200,seed=1 (or set data.eval).")
    return spec


def _questions(model: VisualAssistant, spec: str | None) -> tuple[str, ShapesQA]:
    spec = _eval_world_spec(model, spec)
    source = build_source(spec.replace("shapes:", "shapes-qa:", 1) if spec.startswith("shapes:") else spec)
    return spec, source


def _needs_images(model: VisualAssistant, name: str) -> None:
    if model.model.vision is None:
        raise DataError(f"Eval task '{name}' needs images, but this run is a text-only language model "
                        "(model.arch 'lm'). Try --task text-qa.")


def _accuracy_by_type(task_name: str, spec: str, predictions: list[str], answers: list[str],
                      kinds: list[str]) -> list[dict]:
    correct = [p.strip().lower() == a for p, a in zip(predictions, answers)]
    groups = defaultdict(list)
    for kind, ok in zip(kinds, correct):
        groups[kind].append(ok)
    rows = [{"task": task_name, "data": spec, "labels": "all", "accuracy": float(np.mean(correct)),
             "n": len(correct)}]
    rows += [{"task": task_name, "data": spec, "labels": kind, "accuracy": float(np.mean(oks)), "n": len(oks)}
             for kind, oks in sorted(groups.items())]
    return rows


def _qa_items(source: ShapesQA, limit: int) -> list[int]:
    if not isinstance(source, ShapesQA):
        raise DataError(f"{source.name} has no questions; use a shapes-qa: or shapes: spec.")
    return list(range(min(limit, len(source))))


@task("vqa", generative=True, shapes_world=True)
def vqa(model: VisualAssistant, spec: str | None) -> TaskResult:
    """Exact-match accuracy of greedy answers about held-out scenes, by question type."""
    _needs_images(model, "vqa")
    spec, source = _questions(model, spec)
    samples = [source[k] for k in _qa_items(source, model.config.eval.vqa_n)]
    predictions = model.answer([s.image for s in samples], [s.meta["question"] for s in samples])
    answers, kinds = [s.meta["answer"] for s in samples], [s.meta["question_type"] for s in samples]
    rows = _accuracy_by_type("vqa", spec, predictions, answers, kinds)
    # Colour and shape questions about a scene of one object need no search for the object; apart from the rest.
    scenes = ["one object" if len(s.meta["scene"].objects) == 1 else "several objects" for s in samples]
    split = [(p, a, f"{k}, {n}") for p, a, k, n in zip(predictions, answers, kinds, scenes) if k in ("colour", "shape")]
    if split:
        rows += _accuracy_by_type("vqa", spec, *map(list, zip(*split)))[1:]
    rows[0]["examples"] = [{"question": s.meta["question"], "answer": s.meta["answer"], "predicted": p}
                           for s, p in list(zip(samples, predictions))[:8]]
    return TaskResult(rows, {"vqa accuracy by question type": plots.bar_chart(
        [r["labels"] for r in rows], [r["accuracy"] for r in rows], "exact-match accuracy", "VQA (held-out scenes)")})


@task("text-qa", generative=True, shapes_world=True)
def text_qa(model: VisualAssistant, spec: str | None) -> TaskResult:
    """The vqa questions with the scene's caption as text instead of the image (text-only ability)."""
    spec, source = _questions(model, spec)
    items = [source.items[k] for k in _qa_items(source, model.config.eval.vqa_n)]
    captions = {i: source.world.caption(i) for i in {item[0] for item in items}}
    prompts = [f"{captions[i]}. {question}" for i, question, _, _ in items]
    predictions = model.generate(None, prompts, max_new_tokens=8)
    rows = _accuracy_by_type("text-qa", spec, predictions, [a for _, _, a, _ in items], [k for *_, k in items])
    return TaskResult(rows)


def first_sentence(text: str) -> str:
    """``text`` up to its first "." or "?" (shapes captions have neither)."""
    return re.split(r"[.?]", text, maxsplit=1)[0].strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def attribute_scores(caption: str, scene) -> tuple[float, float | None]:
    """(recall, precision) of one caption against a scene's objects.

    recall: fraction of objects whose colour word and shape word both occur in the caption.
    precision: fraction of the caption's "colour shape" phrases (after an optional size word) that
    name an object of the scene; None when it names none.
    """
    words = _words(caption)
    present = set(words)
    recall = float(np.mean([o.colour in present and o.shape in present for o in scene.objects]))
    named = [(a, b) for a, b in itertools.pairwise(words) if a in COLOURS and b in SHAPES]
    truth = {(o.colour, o.shape) for o in scene.objects}
    precision = float(np.mean([pair in truth for pair in named])) if named else None
    return recall, precision


def _eval_scenes(model: VisualAssistant, spec: str | None) -> tuple[str, list]:
    spec = _eval_world_spec(model, spec)
    source = build_source(spec)
    world = getattr(source, "world", source)
    n = min(model.config.eval.caption_n, len(world))
    return spec, [world[i] for i in range(n)]


@task("caption", generative=True, shapes_world=True)
def caption(model: VisualAssistant, spec: str | None) -> TaskResult:
    """Attribute recall and precision of greedy captions of held-out scenes."""
    _needs_images(model, "caption")
    spec, samples = _eval_scenes(model, spec)
    generated = [first_sentence(text) for text in model.caption([s.image for s in samples])]
    scores = [attribute_scores(text, s.meta["scene"]) for text, s in zip(generated, samples)]
    precisions = [p for _, p in scores if p is not None]
    result = {
        "task": "caption", "data": spec, "n": len(samples),
        "attribute_recall": float(np.mean([r for r, _ in scores])),
        "attribute_precision": float(np.mean(precisions)) if precisions else 0.0,
        "captions_naming_an_object": len(precisions) / len(samples),
        "examples": [{"truth": s.caption, "generated": g} for s, g in list(zip(samples, generated))[:8]],
    }
    return TaskResult([result])


@task("alignment", generative=True, shapes_world=True)
def alignment(model: VisualAssistant, spec: str | None) -> TaskResult:
    """Cosine similarity of projected image features to related vs unrelated LM token embeddings."""
    _needs_images(model, "alignment")
    spec, samples = _eval_scenes(model, spec)
    return TaskResult([{"task": "alignment", "data": spec, **alignment_diagnostic(model, samples)}])


def alignment_diagnostic(model: VisualAssistant, samples: list) -> dict[str, float]:
    """Mean cosine similarity between each image's projected features and token embeddings.

    related: the tokens of the image's own caption; unrelated: tokens of the other captions that its
    own lacks. Reported for the mean-pooled image feature and for single patches, plus the gap and
    image->caption retrieval with CG-VLM's averaged image-sentence similarity.
    """
    patches = model.project_images([s.image for s in samples])  # [N, P, D], on the host
    table = F.normalize(model.model.decoder.embed_tokens.weight.to(patches.device), dim=-1)  # [V, D]
    token_sets = [set(model.tokenizer.encode(s.caption, special_tokens=False)) for s in samples]
    vocabulary = sorted(set().union(*token_sets))
    related_mask = torch.zeros(len(samples), len(vocabulary), dtype=torch.bool)  # [N, T]
    column = {t: j for j, t in enumerate(vocabulary)}
    for i, tokens in enumerate(token_sets):
        related_mask[i, [column[t] for t in tokens]] = True
    words = table[vocabulary]  # [T, D]
    pooled_cos = F.normalize(pool_patches(patches, None), dim=-1) @ words.t()  # [N, T]
    patch_cos = (F.normalize(patches, dim=-1) @ words.t()).mean(dim=1)  # [N, T]: mean over patches

    def mean_over(cos: torch.Tensor, mask: torch.Tensor) -> float:
        return float(((cos * mask).sum(1) / mask.sum(1).clamp_min(1)).mean())

    ids, _ = model.tokenizer([s.caption for s in samples], model.config.data.context_length)
    content = (ids != model.tokenizer.pad_id) & (ids != model.tokenizer.bos_id) & (ids != model.tokenizer.eos_id)
    words = model.model.decoder.embed(ids.to(model_device(model.model))).to(ids.device)  # [N, L, D]
    similarity = image_sentence_similarity(patches, None, words, content)  # [N, N]
    ranks = ranks_of_truth(similarity)
    related, unrelated = mean_over(pooled_cos, related_mask), mean_over(pooled_cos, ~related_mask)
    return {
        "n": len(samples),
        "cos_related": related,
        "cos_unrelated": unrelated,
        "cos_gap": related - unrelated,
        "patch_cos_related": mean_over(patch_cos, related_mask),
        "patch_cos_unrelated": mean_over(patch_cos, ~related_mask),
        "i2t_R@1": float((ranks <= 1).float().mean()),
        "i2t_R@5": float((ranks <= 5).float().mean()),
    }


MIR_SCENES = 128  # held-out scenes for mir-vlm: ~128 x (P + L) tokens per layer, enough for stable covariances


@task("mir-vlm", generative=True, shapes_world=True)
def mir_vlm(model: VisualAssistant, spec: str | None) -> TaskResult:
    """Modality Integration Rate of the language model (METHODS.md, seed row 37): per decoder layer, the
    Fréchet distance between the image-prefix tokens and the caption tokens of held-out scenes; lower
    means the image tokens are read more like text."""
    _needs_images(model, "mir-vlm")
    spec, samples = _eval_scenes(model, spec)
    samples = samples[:MIR_SCENES]
    with torch.inference_mode():
        device = model_device(model.model)
        pixels = model.transform([s.image for s in samples]).to(device)  # [N, C, H, W]
        ids, mask = model.tokenizer([s.caption for s in samples], model.config.data.context_length)
        prefix, image_mask = model.model.prefix(pixels, None, len(samples))  # [N, P, D]
        real = torch.ones(prefix.shape[:2], dtype=torch.bool, device=device) if image_mask is None else image_mask
        full_mask = torch.cat([real, mask.bool().to(device)], dim=1)  # [N, P+L]
        hidden = model.model.decoder(ids.to(device), prefix, full_mask).hidden_states
    out = decoder_mir([h.to(mask.device) for h in hidden], prefix.shape[1], mask.bool())
    return TaskResult([{"task": "mir-vlm", "data": spec, "n": len(samples), **out}])
