"""Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) as an image-caption source.

The files come from the Debian package ``dataset-fashion-mnist``; captions are filled from fixed
prompt templates so that the same source serves contrastive training and zero-shot evaluation.
``unseen_prompts()`` phrases the classes in wording no training caption uses, for zero-shot beyond it.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Literal

import numpy as np

from vlalign.data.idx import read_idx
from vlalign.data.sample import Sample

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

# Label order of the original release; names in plain words as a caption would use them.
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

# "the" rather than "a" keeps every prompt grammatical ("an ankle boot" would need an article rule).
_TEMPLATES = (
    "a photo of the {c}",
    "a black and white photo of the {c}",
    "a low resolution photo of the {c}",
    "a grayscale photo of the {c}",
    "a centered photo of the {c}",
    "a small photo of the {c}",
    "a product photo of the {c}",
    "a cropped photo of the {c}",
)

# Zero-shot prompts in wording the training captions never use: other templates, and another name where
# everyday English has a short one (Zalando's own labels are "T-shirt/top", "Trouser", "Pullover", "Dress",
# "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"); dress, coat, sandal and shirt keep theirs.
# Catalogue-style templates without an article fit the plural "pants". They are short on purpose: with the
# fashion-mnist-clip recipe's 300-token byte-level BPE an unseen word costs about one token per letter, and
# every prompt must fit its 16-token context, or truncation, not wording, would decide the score.
UNSEEN_TEMPLATES = (
    "product shot: {c}",
    "item: {c}",
    "picture: {c}",
    "image of {c}",
    "{c} for sale",
    "{c} on white",
    "{c} in grey",
    "grey {c}",
)
UNSEEN_CLASS_NAMES = ["tee", "pants", "jumper", "dress", "coat", "sandal", "shirt", "trainer", "handbag", "boot"]

_FILE_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_SIZE = 28


def templates() -> tuple[str, ...]:
    """Zero-shot prompt templates; fill each with ``template.format(c=class_name)``."""
    return _TEMPLATES


def unseen_prompts() -> list[list[str]]:
    """Per class, in label order, zero-shot prompts whose templates and (where natural) class names differ from
    every training caption's: ``UNSEEN_CLASS_NAMES`` in each of the unseen templates."""
    return [[template.format(c=name) for template in UNSEEN_TEMPLATES] for name in UNSEEN_CLASS_NAMES]


class FashionMNIST:
    """Fashion-MNIST, 60k train / 10k test grey 28x28 images in 10 classes.

    Sample ``i`` has image uint8 ``[1, 28, 28]``, its label, and the caption
    ``templates()[i % len(templates())]`` filled with the class name.
    """

    channel_names = ("grey",)
    templates = staticmethod(templates)
    unseen_prompts = staticmethod(unseen_prompts)

    def __init__(self, split: Literal["train", "test"] = "train", root: str | Path = DEFAULT_ROOT):
        if split not in _FILE_PREFIX:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        prefix = _FILE_PREFIX[split]
        images_path = root / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (images_path, labels_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"Fashion-MNIST file {path} not found; install the data with `{INSTALL_HINT}` "
                    f"or pass root= the directory holding the four *-ubyte.gz files"
                )
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE):
            raise ValueError(
                f"{images_path}: expected uint8 images [N, 28, 28], got {images.dtype} {list(images.shape)}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_path}: expected {len(images)} uint8 labels to match {images_path}, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if labels.size and labels.max() >= len(CLASSES):
            raise ValueError(f"{labels_path}: label {labels.max()} out of range 0..{len(CLASSES) - 1}")
        self.name = f"fashion-mnist:{split}"
        self.split = split
        self.classes = list(CLASSES)
        self._images = images  # [N, 28, 28]
        self._labels = labels  # [N]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        label = int(self._labels[index])
        template = _TEMPLATES[index % len(_TEMPLATES)]
        return Sample(
            key=f"{self.name}/{index:05d}",
            image=self._images[index][None].copy(),  # [1, 28, 28]
            caption=template.format(c=self.classes[label]),
            label=label,
            channel_names=self.channel_names,
        )
