"""Teacher-forced scores of generative runs on held-out shapes scenes (issue 13: VPGTrans, Mono-InternVL).

Greedy captions of small models rarely name an object correctly (task ``caption``), so they say
little about how much image information reaches the language model. Teacher forcing asks a sharper
question at every step, with the true caption so far given:

- ``caption-tokens``: with the image as prefix, the fraction of colour and shape words of held-out
  captions that the model predicts exactly (argmax), and the mean caption cross-entropy. A language
  model without the image can only guess these words from the text before them.
- ``text-tokens``: text only, no image: next-token accuracy and cross-entropy on held-out plain-text
  documents (caption, question, answer: what ``lm-pretrain`` trains on). This is the language
  ability a visual stage may erode (Mono-InternVL's "text-only retention").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.api import VisualAssistant
from vlalign.data.generative import GenerativeExample, encode_examples
from vlalign.data.shapes import COLOURS, SHAPES
from vlalign.data.shapes_qa import qa_document
from vlalign.device import model_device, to_device
from vlalign.errors import DataError
from vlalign.eval.generative import _eval_scenes, _needs_images, _questions
from vlalign.eval.tasks import TaskResult, task
from vlalign.objectives.caption import next_token_targets


def attribute_token_ids(model: VisualAssistant) -> set[int]:
    """Token ids of the colour and shape words; each must be one token (it is with the run's BPE)."""
    ids = set()
    for word in (*COLOURS, *SHAPES):
        pieces = model.tokenizer.encode(word, special_tokens=False)
        if len(pieces) != 1:
            raise DataError(f"'{word}' is {len(pieces)} tokens for this run's tokenizer; caption-tokens scores "
                            "single-token attribute words only.")
        ids.add(pieces[0])
    return ids


@torch.inference_mode()
def teacher_forced(model: VisualAssistant, images: list | None, texts: list[str], batch_size: int = 64
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per target token: the true id, the argmax prediction and the cross-entropy (each a flat [T] tensor)."""
    truths, predictions, losses = [], [], []
    for start in range(0, len(texts), batch_size):
        examples = [GenerativeExample(None, "", text) for text in texts[start:start + batch_size]]
        batch = encode_examples(model.tokenizer, examples, model.config.data.context_length)
        pixels = None if images is None else model.transform(list(images[start:start + batch_size]))
        device = model_device(model.model)
        out = model.model(to_device(pixels, device), batch["text_ids"].to(device), batch["text_mask"].to(device))
        targets, mask = next_token_targets(batch["text_ids"], batch["content_mask"], out.prefix_len)
        logits = out.logits.to(targets.device)[mask]  # [T, V]
        truths.append(targets[mask])
        predictions.append(logits.argmax(-1))
        losses.append(F.cross_entropy(logits.float(), targets[mask], reduction="none"))
    return torch.cat(truths), torch.cat(predictions), torch.cat(losses)


@task("caption-tokens", generative=True, shapes_world=True)
def caption_tokens(model: VisualAssistant, spec: str | None) -> TaskResult:
    """Teacher-forced accuracy on the colour and shape words of held-out captions, and caption cross-entropy."""
    _needs_images(model, "caption-tokens")
    spec, samples = _eval_scenes(model, spec)
    truth, predicted, loss = teacher_forced(model, [s.image for s in samples], [s.caption for s in samples])
    attribute = torch.isin(truth, torch.tensor(sorted(attribute_token_ids(model))))
    return TaskResult([{"task": "caption-tokens", "data": spec, "n": len(samples),
                        "attribute_accuracy": (predicted == truth)[attribute].float().mean().item(),
                        "token_accuracy": (predicted == truth).float().mean().item(),
                        "caption_loss": loss.mean().item()}])


@task("text-tokens", generative=True, shapes_world=True)
def text_tokens(model: VisualAssistant, spec: str | None) -> TaskResult:
    """Text only: next-token accuracy and cross-entropy on held-out caption-question-answer documents."""
    spec, source = _questions(model, spec)
    items = source.items[: model.config.eval.vqa_n]
    documents = [qa_document(source.world.caption(i), question, answer) for i, question, answer, _ in items]
    truth, predicted, loss = teacher_forced(model, None, documents)
    return TaskResult([{"task": "text-tokens", "data": spec, "n": len(documents),
                        "token_accuracy": (predicted == truth).float().mean().item(),
                        "text_loss": loss.mean().item()}])
