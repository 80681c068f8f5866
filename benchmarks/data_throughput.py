"""Data-loader throughput: decode + transform samples/s from WebDataset shards, 0/1/2 workers, with and without
the pre-decoded cache; exact vs resampled order over several epochs; and data-only vs training-step pairs/s of
the default recipe.

    PYTHONPATH=src python benchmarks/data_throughput.py [--samples 512] [--source-size 160] [--image-size 64]

Writes synthetic shards of JPEG photos-like images (smooth noise, so JPEG works as hard as on
photos) under benchmarks/.work/, then times full epochs of the real ``Loader`` (decode, resize,
normalise, tokenise, collate). The recipe part builds the default recipe's loader and model with
``vlalign.train.setup`` and times the loader alone, ``train_step`` alone on batches already in
memory, and the two interleaved as a run does. Prints tables and writes
benchmarks/results/data_throughput.{json,md}. On a shared machine compare the ratios, not the
absolute numbers: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlalign import provenance
from vlalign.config import apply_overrides
from vlalign.data.cache import DecodedCache
from vlalign.data.loader import Loader
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import DataError
from vlalign.recipes import DEFAULT_RECIPE, get_recipe
from vlalign.train.distributed import build_strategy
from vlalign.train.optim import build_optimizer
from vlalign.train.setup import build_components, seed_everything, source_captions
from vlalign.train.step import TrainState, batch_size, train_step

HERE = Path(__file__).parent
SHARD_SEED = 0  # the synthetic photos written to shards
WORDS = ["a", "small", "large", "red", "green", "blue", "dog", "cat", "boat", "tree", "house", "on", "near", "under"]


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise: low-frequency structure plus grain, [size, size, 3] uint8."""
    coarse = rng.random((size // 16 + 1, size // 16 + 1, 3))
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    grain = rng.normal(0, 12, (size, size, 3))
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def write_shards(folder: Path, samples: int, size: int, per_shard: int = 128) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(SHARD_SEED)
    for shard in range((samples + per_shard - 1) // per_shard):
        with tarfile.open(folder / f"{shard:03d}.tar", "w") as tar:
            for i in range(shard * per_shard, min((shard + 1) * per_shard, samples)):
                buffer = io.BytesIO()
                Image.fromarray(photo_like(rng, size)).save(buffer, "JPEG", quality=90)
                text = " ".join(rng.choice(WORDS, 8)).encode()
                for ext, data in (("jpg", buffer.getvalue()), ("txt", text)):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"wds:{folder}/{{000..{shard:03d}}}.tar"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader's workers, once joined)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def epoch_rate(source, tokenizer, transform, batch_size: int, workers: int, repeats: int) -> tuple[float, float]:
    """Best (samples per wall second, samples per CPU second) over ``repeats`` full epochs; each epoch starts
    its workers afresh, as a training epoch does. Per CPU second stays meaningful when other jobs share the cores."""
    best_wall, best_cpu = 0.0, 0.0
    for repeat in range(repeats):
        loader = Loader(source, tokenizer, transform, batch_size, 32, seed=repeat, num_workers=workers)
        wall, cpu, seen = time.perf_counter(), cpu_seconds(), 0
        batches = iter(loader)
        for batch in batches:
            seen += len(batch["keys"])
            if loader.next_batch == loader.batches_per_epoch:
                break
        batches.close()  # shuts the workers down, so their CPU time is counted
        best_wall = max(best_wall, seen / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, seen / (cpu_seconds() - cpu))
    return best_wall, best_cpu


def order_rate(spec: str, tokenizer, transform, batch_size: int, workers: int, order: str, epochs: int) -> float:
    """Samples per wall second over ``epochs`` epochs' worth of batches, from creating the iterator on: exact
    order restarts its workers at every epoch end, resampled order keeps one pool for the whole stream.
    A fresh source each time: nothing a source caches (OpenMoji's renders) carries over between runs."""
    loader = Loader(build_source(spec), tokenizer, transform, batch_size, 32, num_workers=workers, order=order)
    wall, seen = time.perf_counter(), 0
    batches = iter(loader)
    for _ in range(epochs * loader.batches_per_epoch):
        seen += len(next(batches)["keys"])
    batches.close()
    return seen / (time.perf_counter() - wall)


def order_rows(specs: dict[str, tuple[str, int]], image_size: int, epochs: int) -> list[dict]:
    """Exact vs resampled order with 0 and 2 workers for each named (data spec, batch size)."""
    rows = []
    transform = ImageTransform(image_size, 3)
    for name, (spec, size) in specs.items():
        source = build_source(spec)
        tokenizer = train_tokenizer(source_captions(source), vocab_size=256)
        for workers in (0, 2):
            rates = {order: order_rate(spec, tokenizer, transform, size, workers, order, epochs)
                     for order in ("exact", "resampled")}
            rows.append({"data": name, "samples": len(source), "batch_size": size,
                         "workers": workers,
                         "epochs": epochs, "exact_per_s": round(rates["exact"], 1),
                         "resampled_per_s": round(rates["resampled"], 1),
                         "ratio": round(rates["resampled"] / rates["exact"], 2)})
    return rows


def recipe_rates(recipe: str, overrides: list[str], data_batches: int, steps: int) -> dict:
    """Pairs/s of a recipe's loader alone, of ``train_step`` alone (batches already in memory), and of both
    interleaved as the training loop runs them, with the fraction of that time spent waiting for data."""
    cfg = apply_overrides(get_recipe(recipe), overrides)
    seed_everything(cfg.train.seed, cfg.train.deterministic, cfg.train.threads)
    with tempfile.TemporaryDirectory() as run_dir:
        parts = build_components(cfg, Path(run_dir))
    strategy = build_strategy("replicate")
    model = strategy.wrap(parts.model)
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState()
    batches = iter(parts.loader)
    train_step(model, parts.objective, optimizer, next(batches), state, cfg, strategy)  # warm-up of both

    start, pairs = time.perf_counter(), 0
    for _ in range(data_batches):
        pairs += batch_size(next(batches))
    data_rate = pairs / (time.perf_counter() - start)

    held = [next(batches) for _ in range(steps)]
    start = time.perf_counter()
    for batch in held:
        train_step(model, parts.objective, optimizer, batch, state, cfg, strategy)
    step_rate = steps * cfg.data.batch_size / (time.perf_counter() - start)

    start, wait = time.perf_counter(), 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        train_step(model, parts.objective, optimizer, batch, state, cfg, strategy)
    total = time.perf_counter() - start
    batches.close()
    return {"recipe": recipe, "overrides": overrides, "seed": cfg.train.seed, "batch_size": cfg.data.batch_size,
            "num_workers": cfg.data.num_workers, "order": cfg.data.order, "threads": torch.get_num_threads(),
            "data_batches": data_batches, "steps": steps,
            "data_only_pairs_per_s": round(data_rate, 1), "train_step_pairs_per_s": round(step_rate, 1),
            "data_to_step_ratio": round(data_rate / step_rate, 1),
            "end_to_end_pairs_per_s": round(steps * cfg.data.batch_size / total, 1),
            "end_to_end_data_wait_fraction": round(wait / total, 4)}


def markdown(args, cache_build_s: float, rows: list[dict], orders: list[dict], recipe: dict, stamp: dict) -> str:
    lines = ["# Data-loader throughput", "",
             f"{os.cpu_count()} CPU cores, load average {stamp['load_end']:.1f} at the end (other jobs shared the "
             "machine: compare ratios, not absolute numbers).", "",
             f"## The default recipe: data only vs training step (`{recipe['recipe']}`)", "",
             f"Batch {recipe['batch_size']}, {recipe['num_workers']} loader workers, order {recipe['order']}, "
             f"{recipe['threads']} torch threads; loader alone over {recipe['data_batches']} batches, "
             f"`train_step` alone over {recipe['steps']} batches already in memory, then both interleaved.", "",
             "| data only pairs/s | training step pairs/s | ratio | loader + step pairs/s | time waiting for data |",
             "|---|---|---|---|---|",
             f"| {recipe['data_only_pairs_per_s']} | {recipe['train_step_pairs_per_s']} | "
             f"{recipe['data_to_step_ratio']}x | {recipe['end_to_end_pairs_per_s']} | "
             f"{recipe['end_to_end_data_wait_fraction']:.1%} |", "",
             f"## Shards and the decoded cache ({args.samples} JPEG {args.source_size} px -> {args.image_size} px, "
             f"batch {args.batch_size}; cache built in {cache_build_s:.2f} s)", "",
             "| data | workers | samples/s | ratio | samples per CPU-s | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['workers']} | {r['samples_per_s']} | {r['ratio_wall']} | "
              f"{r['samples_per_cpu_s']} | {r['ratio_cpu']} |" for r in rows]
    lines += ["", f"## Exact vs resampled order ({args.order_epochs} epochs' worth of batches, from a cold start)", "",
              "| data | samples | batch | workers | exact samples/s | resampled samples/s | ratio |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['samples']} | {r['batch_size']} | {r['workers']} | {r['exact_per_s']} | "
              f"{r['resampled_per_s']} | {r['ratio']} |" for r in orders]
    return "\n".join(lines + ["", provenance.markdown(stamp)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--source-size", type=int, default=160, help="stored JPEG side in pixels")
    parser.add_argument("--image-size", type=int, default=64, help="training resolution")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--order-epochs", type=int, default=3, help="epochs' worth of batches per order run")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value on the recipe")
    parser.add_argument("--data-batches", type=int, default=20, help="recipe batches timed for data only")
    parser.add_argument("--steps", type=int, default=5, help="recipe training steps timed")
    args = parser.parse_args()
    began = provenance.start()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # one core per process: workers are the unit of parallelism here

    work = HERE / ".work"
    spec = write_shards(work / "shards", args.samples, args.source_size)
    source = build_source(spec)
    tokenizer = train_tokenizer(source.captions(), vocab_size=256)
    transform = ImageTransform(args.image_size, 3)
    start = time.perf_counter()
    shutil.rmtree(work / "cache", ignore_errors=True)
    cached = DecodedCache(source, work / "cache", args.image_size)
    cache_build_s = time.perf_counter() - start

    order_specs = {"shards": (spec, args.batch_size)}
    try:  # samples costly to make (rendered), cached by the process that made them
        build_source("openmoji:train")
        order_specs["openmoji:train"] = ("openmoji:train", 128)
    except DataError as err:
        print(f"skipping OpenMoji: {err}")
    orders = order_rows(order_specs, args.image_size, args.order_epochs)

    rows = []
    for name, data in (("shards", source), ("cache", cached)):
        for workers in (0, 1, 2):
            wall, cpu = epoch_rate(data, tokenizer, transform, args.batch_size, workers, args.repeats)
            rows.append({"data": name, "workers": workers, "samples_per_s": round(wall, 1),
                         "samples_per_cpu_s": round(cpu, 1)})
    for row in rows:
        row["ratio_wall"] = round(row["samples_per_s"] / rows[0]["samples_per_s"], 2)
        row["ratio_cpu"] = round(row["samples_per_cpu_s"] / rows[0]["samples_per_cpu_s"], 2)

    print(f"{args.samples} JPEG {args.source_size}px -> {args.image_size}px, batch {args.batch_size}; "
          f"cache built in {cache_build_s:.2f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'data':<8}{'workers':>8}{'samples/s':>11}{'ratio':>7}{'per CPU-s':>11}{'ratio':>7}")
    for row in rows:
        print(f"{row['data']:<8}{row['workers']:>8}{row['samples_per_s']:>11.1f}{row['ratio_wall']:>7.2f}"
              f"{row['samples_per_cpu_s']:>11.1f}{row['ratio_cpu']:>7.2f}")
    print(f"\n{'data':<16}{'workers':>8}{'exact/s':>10}{'resampled/s':>13}{'ratio':>7}")
    for row in orders:
        print(f"{row['data']:<16}{row['workers']:>8}{row['exact_per_s']:>10.1f}{row['resampled_per_s']:>13.1f}"
              f"{row['ratio']:>7.2f}")

    torch.set_num_threads(os.cpu_count() or 1)  # the recipe's own setting applies (train.threads=0: all cores)
    recipe = recipe_rates(args.recipe, args.overrides, args.data_batches, args.steps)
    print(f"\n{args.recipe}: data only {recipe['data_only_pairs_per_s']} pairs/s, training step "
          f"{recipe['train_step_pairs_per_s']} pairs/s, ratio {recipe['data_to_step_ratio']}x; interleaved "
          f"{recipe['end_to_end_pairs_per_s']} pairs/s with {recipe['end_to_end_data_wait_fraction']:.1%} waiting for data")

    # the shards' pixels, the loader's order in each timed repeat, the recipe's run
    stamp = provenance.stamp(began, sorted({SHARD_SEED, *range(args.repeats), recipe["seed"]}))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "data_throughput.md").write_text(markdown(args, cache_build_s, rows, orders, recipe, stamp))
    (results / "data_throughput.json").write_text(json.dumps({
        "stamp": stamp, "settings": vars(args), "cache_build_s": round(cache_build_s, 2), "rows": rows,
        "order_rows": orders, "recipe_data_vs_training": recipe}, indent=1) + "\n")


if __name__ == "__main__":
    main()
