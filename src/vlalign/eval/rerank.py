"""Retrieval re-ranked by the image-text matching head, for runs with fusion layers (``model.fusion``).

The contrastive similarity of the unimodal embeddings ranks every candidate cheaply; the fused ITM head
then re-scores each query's top-k candidates, which is how FIBER (Dou et al. 2022, §3.3) and ALBEF
(Li et al. 2021, §4) retrieve: fusion costs one pass per (query, candidate) pair, so only k per query.
Candidates outside the top k keep their contrastive order below the re-scored ones.
"""

from __future__ import annotations

import numpy as np
import torch

from vlalign.api import Aligner
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval.retrieval import retrieval_metrics_from_scores
from vlalign.eval.tasks import TaskResult, load_arrays, task
from vlalign.models.fusion import concat_rows, select_rows
from vlalign.models.text import TextFeatures
from vlalign.models.vit import VisionFeatures

PAIRS_PER_PASS = 256  # (image, text) pairs fused at once


def rerank_scores(similarity: torch.Tensor, candidates: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """[Q, N] scores that put each row's k ``candidates`` [Q, k] first, ordered by ``match`` [Q, k], and
    every other column after them in the order of ``similarity`` [Q, N]."""
    floor = match.min() - 1  # below every re-scored candidate
    below = floor - (similarity.max() - similarity)  # <= floor, the contrastive order kept
    return below.scatter(1, candidates, match)


def unimodal_features(model: Aligner, images: list[np.ndarray],
                      captions: list[str]) -> tuple[VisionFeatures, TextFeatures, torch.Tensor, torch.Tensor]:
    """Both towers' features on the model's device (the fusion layers start from their intermediates) and the
    contrastive embeddings [N, E] of every image and caption, on the host."""
    dual, size, device = model.model, model.config.eval.batch_size, model.device
    visions, texts = [], []
    for i in range(0, len(images), size):
        visions.append(dual.vision(model.transform(images[i : i + size]).to(device)))
        ids, mask = model.tokenizer(captions[i : i + size], model.config.data.context_length)
        texts.append(dual.text_features(ids.to(device), mask.to(device)))
    vision, text = concat_rows(visions), concat_rows(texts)
    host = ids.device
    return vision, text, dual.image_head(vision)[0].to(host), dual.text_head(text)[0].to(host)


def match_scores(model: Aligner, vision: VisionFeatures, text: TextFeatures, image_index: torch.Tensor,
                 text_index: torch.Tensor) -> torch.Tensor:
    """[P] ITM margin (logit of "match" minus "no match") of image ``image_index[p]`` with text ``text_index[p]``,
    on the indices' device."""
    dual, scores = model.model, []
    for start in range(0, image_index.numel(), PAIRS_PER_PASS):
        window = slice(start, start + PAIRS_PER_PASS)
        logits = dual.cross_modal.match_logits(dual.vision, dual.text, select_rows(vision, image_index[window]),
                                               select_rows(text, text_index[window]))  # [p, 2]
        scores.append(logits[:, 1] - logits[:, 0])
    return torch.cat(scores).to(image_index.device)


@task("retrieval-itm")
def retrieval_itm(model: Aligner, spec: str | None) -> TaskResult:
    """Image<->text Recall@1/5/10 after ITM re-ranking of the contrastive top ``eval.rerank_k``, beside the
    contrastive ranking alone (``itc_*``) and how often the truth is among the candidates (``candidate_recall``)."""
    if model.model.cross_modal is None:
        raise DataError("The retrieval-itm task re-ranks with the fusion layers' matching head; this run has none "
                        "(model.fusion.kind=none). Use the retrieval task.")
    spec = spec or model.config.data.eval
    images, captions, _, _ = load_arrays(build_source(spec), model.config.eval.retrieval_n)
    vision, text, image_embeds, text_embeds = unimodal_features(model, images, captions)
    similarity = image_embeds @ text_embeds.t()  # [N images, N texts]
    n = similarity.shape[0]
    k = min(model.config.eval.rerank_k, n)
    queries = torch.arange(n).repeat_interleave(k)  # [N*k]
    i2t_candidates = similarity.topk(k, dim=1).indices  # [N, k] texts per image
    t2i_candidates = similarity.t().topk(k, dim=1).indices  # [N, k] images per text
    i2t_match = match_scores(model, vision, text, queries, i2t_candidates.flatten()).view(n, k)
    t2i_match = match_scores(model, vision, text, t2i_candidates.flatten(), queries).view(n, k)
    reranked = retrieval_metrics_from_scores(rerank_scores(similarity, i2t_candidates, i2t_match),
                                             rerank_scores(similarity.t(), t2i_candidates, t2i_match))
    contrastive = retrieval_metrics_from_scores(similarity, similarity.t(), ks=(1, 5, 10, k))
    result = {"task": "retrieval-itm", "data": spec, "k": k, **reranked,
              **{f"itc_{d}_R@{r}": contrastive[f"{d}_R@{r}"] for d in ("i2t", "t2i") for r in (1, 5, 10)},
              **{f"candidate_recall_{d}": contrastive[f"{d}_R@{k}"] for d in ("i2t", "t2i")}}
    return TaskResult([result])
