"""Write a source to plain files a user can open: PNG images plus a ``captions.csv`` manifest."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from vlalign.progress import progress


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
        for i in progress(range(n), desc="make-shapes", unit="img"):
            sample = world[i]
            name = f"images/{sample.key}.png"
            Image.fromarray(sample.image.transpose(1, 2, 0)).save(out / name)
            writer.writerow([name, sample.caption, world.classes[sample.label]])
    return manifest


def export_moving_shapes(out: str | Path, n: int, seed: int, spec: str = "") -> Path:
    """Render ``n`` moving-shapes clips to ``out/clips/*.png`` (the frames side by side) and ``out/captions.csv``
    (columns clip, frames, caption, events as JSON). ``spec``: further ``moving-shapes`` options, e.g. ``frames=6``."""
    import json

    import numpy as np

    from vlalign.data.specs import build_source

    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    source = build_source(f"moving-shapes:n={n},seed={seed}" + (f",{spec}" if spec else ""))
    manifest = out / "captions.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "frames", "caption", "events"])
        for i in progress(range(n), desc="make-moving-shapes", unit="clip"):
            sample = source[i]
            name = f"clips/{sample.key}.png"
            strip = np.concatenate(list(sample.image.transpose(0, 2, 3, 1)), axis=1)  # [H, T*W, 3]
            Image.fromarray(strip).save(out / name)
            writer.writerow([name, len(sample.image), sample.caption, json.dumps(sample.meta["events"])])
    return manifest
