"""A specialised model for VILA-M3's expert context (Nath et al. 2024; METHODS.md §4 row 38): where VILA-M3
calls medical segmentation and classification experts and puts their outputs into the prompt, the shapes
world gets a small convolutional classifier that reads each cell of the 3×3 grid and says what is there
(empty, or a shape with its colour and size). ``describe`` turns its predictions into the compact text that
``vlalign.data.expert_context`` inserts into questions: "small red circle top left, large blue star centre".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlalign.data.shapes import COLOURS, GRID, POSITIONS, SHAPES, SIZES, Scene

CELL_PIXELS = 16  # every cell is resized to this before the convolutions


def cell_crops(images: Tensor) -> Tensor:
    """[B, C, H, W] (0..1) -> [B, GRID², C, 16, 16], row-major cells as the shapes world draws them."""
    size = images.shape[-1]
    bounds = [(round(i * size / GRID), round((i + 1) * size / GRID)) for i in range(GRID)]
    cells = [F.interpolate(images[:, :, r0:r1, c0:c1], size=(CELL_PIXELS, CELL_PIXELS), mode="bilinear",
                           align_corners=False) for r0, r1 in bounds for c0, c1 in bounds]
    return torch.stack(cells, dim=1)


class CellExpert(nn.Module):
    """Per grid cell: shape logits [.., 1 + shapes] (0 = empty), colour logits [.., colours], size logits [.., 2]."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [N, w/2, 8, 8]
            nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [N, w, 4, 4]
            nn.Flatten(), nn.Linear(width * 16, 4 * width), nn.ReLU())
        self.shape = nn.Linear(4 * width, 1 + len(SHAPES))
        self.colour = nn.Linear(4 * width, len(COLOURS))
        self.size = nn.Linear(4 * width, len(SIZES))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, C, H, W] in [0, 1] -> logits per cell, each [B, GRID², K]."""
        cells = cell_crops(images)  # [B, 9, C, 16, 16]
        hidden = self.features(cells.flatten(0, 1)).unflatten(0, cells.shape[:2])  # [B, 9, 4w]
        return {"shape": self.shape(hidden), "colour": self.colour(hidden), "size": self.size(hidden)}

    @torch.no_grad()
    def describe(self, images: list[np.ndarray]) -> list[str]:
        """uint8 [C, H, W] images -> one expert report each ("" when it sees nothing)."""
        logits = self(to_unit(images))
        shape, colour, size = (logits[k].argmax(-1) for k in ("shape", "colour", "size"))  # [B, 9] each
        reports = []
        for b in range(len(images)):
            found = [f"{SIZES[size[b, c]]} {list(COLOURS)[colour[b, c]]} {SHAPES[shape[b, c] - 1]} {POSITIONS[c]}"
                     for c in range(GRID * GRID) if shape[b, c] > 0]
            reports.append(", ".join(found))
        return reports


def to_unit(images: list[np.ndarray]) -> Tensor:
    """uint8 [C, H, W] arrays of one size -> float [B, C, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(images)).float() / 255.0


def cell_targets(scenes: list[Scene]) -> dict[str, Tensor]:
    """Per-cell labels [B, 9]: shape (0 = empty), colour and size (-100 = empty, ignored by the loss)."""
    shape = torch.zeros(len(scenes), GRID * GRID, dtype=torch.long)
    colour = torch.full_like(shape, -100)
    size = torch.full_like(shape, -100)
    for b, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = obj.row * GRID + obj.col
            shape[b, cell] = 1 + SHAPES.index(obj.shape)
            colour[b, cell] = list(COLOURS).index(obj.colour)
            size[b, cell] = SIZES.index(obj.size)
    return {"shape": shape, "colour": colour, "size": size}


def oracle_report(scene: Scene) -> str:
    """What a perfect expert would say: ``describe``'s format from the true scene."""
    objects = sorted(scene.objects, key=lambda o: o.row * GRID + o.col)
    return ", ".join(f"{o.size} {o.colour} {o.shape} {POSITIONS[o.row * GRID + o.col]}" for o in objects)


def expert_loss(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """Sum of the three per-cell cross-entropies (empty cells count for the shape head only)."""
    return sum(F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten(), ignore_index=-100)
               for k in ("shape", "colour", "size"))


def train_cell_expert(images: list[np.ndarray], scenes: list[Scene], steps: int = 300, batch_size: int = 64,
                      lr: float = 3e-3, seed: int = 0) -> CellExpert:
    """Fit a ``CellExpert`` on rendered scenes (uint8 [3, H, W]) and their ground truth."""
    torch.manual_seed(seed)
    expert = CellExpert(images[0].shape[0])
    optimizer = torch.optim.Adam(expert.parameters(), lr=lr)
    pixels, targets = to_unit(images), cell_targets(scenes)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(images), (batch_size,), generator=generator)
        loss = expert_loss(expert(pixels[batch]), {k: v[batch] for k, v in targets.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return expert.eval()
