"""Adversarial robustness with one universal perturbation, in the spirit of C-PGC (Fang et al. 2024,
"One Perturbation is Enough", §3): a single image-space perturbation delta, shared by all images and
bounded by ||delta||_inf <= epsilon, is trained to break the image-text alignment on a training subset
and then applied to held-out images. C-PGC trains a generator; here delta itself is optimised by
projected sign-gradient ascent on the symmetric InfoNCE loss of matched pairs (PGD, Madry et al. 2018).

Units. Budgets are given in 8-bit pixel levels (epsilon = 8 means 8/255 of the pixel range). The model
sees ``(x / 255 - 0.5) / 0.5``, so one pixel level is 2/255 there and the bound in model-input units
is ``2 * epsilon / 255``. delta lives in model-input space (after resizing), and perturbed inputs are
clipped to the valid range [-1, 1], which can only shrink the change. Runs that normalise with source
statistics (16-bit or float data) have no 8-bit pixel scale and are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.api import Aligner
from vlalign.data.specs import build_source
from vlalign.data.transforms import ImageTransform
from vlalign.errors import DataError
from vlalign.eval.retrieval import retrieval_metrics
from vlalign.eval.tasks import TaskResult, _generic_label_set, is_shapes_world, load_arrays, prompt_ensemble, task
from vlalign.eval.tasks import _shapes_eval_spec as shapes_eval_spec
from vlalign.eval.tasks import _shapes_label_sets as shapes_label_sets
from vlalign.eval.zeroshot import PromptBank

BUDGETS = (2, 4, 8)  # pixel levels out of 255
INPUT_RANGE = (-1.0, 1.0)  # model-input values of pixel levels 0 and 255


def normalised_budget(epsilon_pixels: float, transform: ImageTransform) -> float:
    """An L_inf budget in 8-bit pixel levels -> the same budget in the model's input units."""
    if transform.mean is not None:
        raise DataError("The adversarial budget is defined in 8-bit pixel levels, but this run normalises its "
                        "inputs with source statistics (16-bit or float data); evaluate an 8-bit-image run.")
    return 2.0 * epsilon_pixels / 255.0


def perturb(pixels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """pixels [N, C, H, W] model inputs + delta [C, H, W], clipped to the valid input range."""
    return (pixels + delta).clamp(*INPUT_RANGE)


def pair_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE of matched pairs (row i of each); the attack pushes it up."""
    logits = scale * image_embeds @ text_embeds.t()  # [B, B]
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def universal_perturbation(encode_image, pixels: torch.Tensor, text_embeds: torch.Tensor, epsilon: float,
                           steps: int = 40, batch_size: int = 64, scale: float = 100.0, seed: int = 0) -> torch.Tensor:
    """Train one delta [C, H, W] with ||delta||_inf <= epsilon (model-input units) that raises the pair loss.

    encode_image: [B, C, H, W] -> [B, E] unit-norm, differentiable; pixels [N, C, H, W]; text_embeds [N, E].
    Each step: a minibatch, the loss gradient w.r.t. delta, a signed step of epsilon/8, then projection
    back onto the L_inf ball (the PGD update).
    """
    g = torch.Generator().manual_seed(seed)
    step_size = epsilon / 8
    with torch.inference_mode(False), torch.enable_grad():
        pixels, text_embeds = pixels.clone(), text_embeds.clone()
        delta = torch.zeros(pixels.shape[1:])  # [C, H, W]
        for _ in range(steps):
            batch = torch.randperm(len(pixels), generator=g)[:batch_size]
            delta.requires_grad_(True)
            loss = pair_loss(encode_image(perturb(pixels[batch], delta)), text_embeds[batch], scale)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
    return delta.detach()


def random_perturbation(shape: torch.Size, epsilon: float, seed: int = 0) -> torch.Tensor:
    """A random-sign delta of the same budget: the baseline a trained attack has to beat."""
    signs = torch.randint(0, 2, tuple(shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return signs.float() * epsilon


def _zeroshot_inputs(model: Aligner, spec: str | None):
    """(spec, pixels [N, C, H, W], the classes' PromptBank, labels [N]) for the zero-shot check, or
    None when ``spec`` names an unlabelled source. Default: single-object shapes, shape+colour labels, for a
    run trained on the shapes world; else the run's ``data.eval``."""
    if spec is None:
        spec = (shapes_eval_spec(model, model.config.eval.zeroshot_n, "exclude")
                if is_shapes_world(model.config.data.train) else model.config.data.eval)
    source = build_source(spec)
    if not hasattr(source, "scene") and not source.classes:
        return None
    images, _, labels, samples = load_arrays(source, model.config.eval.zeroshot_n)
    if hasattr(source, "scene"):
        _, prompts, labels = shapes_label_sets(samples)["shape+colour"]
    else:
        _, prompts, _ = _generic_label_set(source)["class"]
    bank = PromptBank(model.encode_text, prompts, prompt_ensemble(model, hasattr(source, "scene")))
    return spec, model.transform(images), bank, torch.tensor(labels)


@task("adversarial")
def adversarial(model: Aligner, spec: str | None) -> TaskResult:
    """Universal L_inf perturbations (2, 4, 8 pixel levels) trained on half of the retrieval pairs;
    retrieval R@1 on the other half and zero-shot top-1, clean / random-sign / attacked."""
    pair_spec = spec or model.config.data.eval
    images, captions, _, _ = load_arrays(build_source(pair_spec), model.config.eval.retrieval_n)
    if len(images) < 4:
        raise DataError(f"The adversarial task needs at least 4 image-text pairs; {pair_spec} gave {len(images)}.")
    half = len(images) // 2
    zeroshot = _zeroshot_inputs(model, spec)
    with torch.inference_mode(False):
        pixels = model.transform(images)  # [N, C, H, W]
        text_embeds = model.encode_text(captions).clone()  # [N, E]
    train, test = slice(0, half), slice(half, None)

    def scores(delta: torch.Tensor) -> dict:
        r = retrieval_metrics(model.encode_image(perturb(pixels[test], delta)), text_embeds[test])
        out = {"i2t_R@1": r["i2t_R@1"], "t2i_R@1": r["t2i_R@1"]}
        if zeroshot is not None:
            _, zs_pixels, zs_classes, zs_labels = zeroshot
            logits = zs_classes.scores(model.encode_image(perturb(zs_pixels, delta)))  # [N, K]
            out["zeroshot_top1"] = (logits.argmax(1) == zs_labels).float().mean().item()
        return out

    def on_model(x: torch.Tensor) -> torch.Tensor:  # the tower on its device, gradients back to the host pixels
        return model.model.encode_image(x.to(model.device)).to(x.device)

    clean = scores(torch.zeros(pixels.shape[1:]))
    scale = float(model.model.logit_scale.exp())
    results = []
    for budget in BUDGETS:
        epsilon = normalised_budget(budget, model.transform)
        delta = universal_perturbation(on_model, pixels[train], text_embeds[train], epsilon, scale=scale)
        row = {"task": "adversarial", "data": pair_spec, "zeroshot_data": zeroshot and zeroshot[0],
               "budget": f"{budget}/255",
               "epsilon_input_units": epsilon, "delta_linf_pixels": float(delta.abs().max()) * 255 / 2,
               "n_train": half, "n_test": len(images) - half}
        for name, d in (("clean", None), ("random", random_perturbation(delta.shape, epsilon)), ("attacked", delta)):
            for metric, value in (clean if d is None else scores(d)).items():
                row[f"{name}_{metric}"] = value
        results.append(row)
    return TaskResult(results)
