"""Zero-shot across modalities for a bound encoder (LanguageBind: Zhu et al. 2024, §3-4).

A LanguageBind run trains a new modality's encoder (here edge maps, ``edges:SPEC``) against the frozen
text side of an earlier CLIP run (``model.init_from``, ``model.text.lock_projection``). Text then
classifies the new modality zero-shot (the usual ``zeroshot`` task on edge maps), and because both
image encoders were pulled into one text space, the two modalities find each other without ever
being trained on a pair of them (ImageBind's "emergent" alignment, which LanguageBind inherits):
an edge map retrieves the photograph of the same scene.

``cross_modal_retrieval`` scores that: edge map i (bound encoder) against image i of the wrapped
source (the anchor CLIP run's image encoder), Recall@K in both directions.
"""

from __future__ import annotations

import torch

from vlalign.api import Aligner, load
from vlalign.data.edges import EdgeMaps, edge_map
from vlalign.data.sample import CorruptSample
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval.retrieval import retrieval_metrics
from vlalign.eval.tasks import TaskResult, task


def cross_modal_retrieval(bound: Aligner, anchor: Aligner, source: EdgeMaps, limit: int) -> dict:
    """Edge map i by ``bound`` against the original image i by ``anchor`` -> Recall@1/5/10 and ranks,
    ``bound_to_anchor`` (edge map retrieves image) and ``anchor_to_bound``."""
    if not isinstance(source, EdgeMaps):
        raise DataError(f"Cross-modal retrieval pairs edge maps with their images: give an edges:SPEC source, "
                        f"not {source.name}.")
    edges, originals = [], []
    for i in range(min(limit, len(source))):
        try:
            original = source.source[i]
        except CorruptSample:
            continue
        originals.append(original.image)
        edges.append(edge_map(original.image))  # what source[i] gives, without reading the sample twice
    if not edges:
        raise DataError(f"Evaluation data {source.name} has no readable samples.")
    metrics = retrieval_metrics(bound.encode_image(edges), anchor.encode_image(originals))
    return {k.replace("i2t", "bound_to_anchor").replace("t2i", "anchor_to_bound"): v for k, v in metrics.items()}


@task("cross-modal")
def cross_modal(model: Aligner, spec: str | None) -> TaskResult:
    """A run bound to another run's text space: its modality against the anchor run's images (the last run of
    model.init_from), on ``spec`` or the run's edges:... eval data."""
    if not model.config.model.init_from:
        raise DataError("The cross-modal task compares a bound run with the run it was bound to; this run has no "
                        "model.init_from.")
    spec = spec or model.config.data.eval
    anchor = load(model.config.model.init_from[-1])
    with torch.inference_mode():
        metrics = cross_modal_retrieval(model, anchor, build_source(spec), model.config.eval.retrieval_n)
    return TaskResult([{"task": "cross-modal", "data": spec, "anchor": str(anchor.run_dir), **metrics}])
