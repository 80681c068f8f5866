"""A user's own labelled pictures (a CSV manifest, a class-folder tree) through train and eval."""

import csv
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


def write_csv(path, rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        writer.writerows(rows)


def test_default_recipe_on_a_user_csv_skips_the_shapes_tasks_and_exits_0(tmp_path, capsys):
    rows = make_pictures(tmp_path / "pics", 36)
    write_csv(tmp_path / "pics" / "train.csv", rows[:24])
    write_csv(tmp_path / "pics" / "test.csv", rows[24:])
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--quiet", "--set", f"data.train=csv:{tmp_path / 'pics' / 'train.csv'}",
                 "--set", f"data.eval=csv:{tmp_path / 'pics' / 'test.csv'}", "--set", "data.batch_size=8",
                 "--set", "train.steps=2", "--set", "train.checkpoint_every=2", "--set", "train.threads=1",
                 "--set", "optim.warmup_steps=1"])
    err = capsys.readouterr().err
    assert code == 0, err
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith("compositional: skipped") and "shapes world" in skipped[0]
    results = json.loads((out / "eval.json").read_text())["results"]
    assert {r["task"] for r in results} == {"zeroshot", "retrieval"}
    zeroshot = next(r for r in results if r["task"] == "zeroshot")
    assert zeroshot["labels"] == "class" and zeroshot["n"] == 12
    assert (out / "report.html").is_file()


def test_zeroshot_on_a_class_folder(trained_tiny_run, tmp_path, capsys):
    make_pictures(tmp_path / "pics", 9)
    run = shutil.copytree(trained_tiny_run, tmp_path / "run")  # eval writes eval.json into the run
    assert main(["eval", "--checkpoint", str(run), "--task", "zeroshot", "--data", f"folder:{tmp_path / 'pics'}"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["task"] == "zeroshot" and result["labels"] == "class" and result["n"] == 9
    assert 0.0 <= result["top1"] <= 1.0
    # The folder's templates also caption its images as labels (the same attribute was called).
    assert build_source(f"labels:folder:{tmp_path / 'pics'}")[0].caption == "a photo of a blue"
