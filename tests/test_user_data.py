"""A user's own labelled pictures (a CSV manifest, a class-folder tree) through train and eval."""

import json
import shutil

import numpy as np
from PIL import Image

from vlalign.cli import main
from vlalign.data.specs import build_source

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def make_pictures(root, n: int) -> list[tuple[str, str, str]]:
    """n small PNGs of noisy colour fields in class folders root/CLASS/; -> (relative path, caption, class)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (12, 16, 3)), 0, 255).astype(np.uint8)
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
        rows.append((f"{name}/{i:03d}.png", f"a photo of something {name}", name))
    return rows


def test_zeroshot_on_a_class_folder(trained_tiny_run, tmp_path, capsys):
    make_pictures(tmp_path / "pics", 9)
    run = shutil.copytree(trained_tiny_run, tmp_path / "run")  # eval writes eval.json into the run
    assert main(["eval", "--checkpoint", str(run), "--task", "zeroshot", "--data", f"folder:{tmp_path / 'pics'}"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["task"] == "zeroshot" and result["labels"] == "class" and result["n"] == 9
    assert 0.0 <= result["top1"] <= 1.0
    # The folder's templates also caption its images as labels (the same attribute was called).
    assert build_source(f"labels:folder:{tmp_path / 'pics'}")[0].caption == "a photo of a blue"
