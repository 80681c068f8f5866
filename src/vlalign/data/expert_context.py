"""VILA-M3's expert context (Nath et al. 2024; METHODS.md §4 row 38): a specialised model looks at the image
first, and its findings go into the instruction-tuned model's prompt as text, in training and at inference.

``ExpertContext(source, report)`` rewrites each question sample's ``meta["question"]`` to
``"<report>. <question>"``, the "caption. question" layout the language model was pre-trained on
(``vlalign.data.shapes_qa.qa_document``). ``report(sample) -> str`` is the expert: a trained
``vlalign.models.cell_expert.CellExpert`` (saved with ``save_expert``) or the ``oracle`` (the true scene).
Data spec: ``expert:oracle|FILE.safetensors:SPEC``, e.g. ``expert:runs/expert.safetensors:shapes-qa:n=400,seed=2``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file

from vlalign.data.sample import DerivedSource, Sample, Source
from vlalign.errors import DataError
from vlalign.models.cell_expert import CellExpert, oracle_report


def with_report(question: str, report: str) -> str:
    return f"{report}. {question}" if report else question


class ExpertContext(DerivedSource):
    """``source`` with every question prefixed by ``report(sample)``; samples without a question pass unchanged."""

    def __init__(self, source: Source, report: Callable[[Sample], str], expert_name: str):
        super().__init__(source)
        self.report = report
        self.name = f"expert:{expert_name}:{source.name}"

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        if "question" not in sample.meta:
            return sample
        report = self.report(sample)
        return dataclasses.replace(sample, meta=sample.meta | {"question": with_report(sample.meta["question"], report),
                                                               "expert_report": report})


def save_expert(expert: CellExpert, path: str | Path) -> None:
    save_file(expert.state_dict(), str(path))


def load_expert(path: str | Path) -> CellExpert:
    if not Path(path).is_file():
        raise DataError(f"Expert model {path} does not exist; train one with vlalign.models.cell_expert."
                        "train_cell_expert and save it with vlalign.data.expert_context.save_expert.")
    expert = CellExpert()
    try:
        expert.load_state_dict(load_file(str(path)))
    except Exception as err:  # not a safetensors file, or not a CellExpert's weights
        raise DataError(f"Expert model {path} is not a saved CellExpert ({type(err).__name__}: {err}).") from None
    return expert.eval()


def expert_reporter(name: str) -> Callable[[Sample], str]:
    """``oracle`` (the true scene of shapes samples) or a saved ``CellExpert`` file."""
    if name == "oracle":
        return lambda sample: oracle_report(sample.meta["scene"])
    expert = load_expert(name)
    return lambda sample: expert.describe([sample.image])[0]
