"""Write a source to plain files a user can open: PNG images plus a ``captions.csv`` manifest."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm


def export_shapes(out: str | Path, n: int, seed: int) -> Path:
    """Render ``n`` shapes scenes to ``out/images/*.png`` and ``out/captions.csv`` (columns image, caption, label)."""
    from vlalign.data.shapes import ShapesWorld

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(n, seed)
    manifest = out / "captions.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for i in tqdm(range(n), desc="make-shapes", unit="img"):
            sample = world[i]
            name = f"images/{sample.key}.png"
            Image.fromarray(sample.image.transpose(1, 2, 0)).save(out / name)
            writer.writerow([name, sample.caption, world.classes[sample.label]])
    return manifest
