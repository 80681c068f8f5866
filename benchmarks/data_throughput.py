"""Data-loader throughput: decode + transform samples/s from WebDataset shards, 0/1/2 workers, with and without
the pre-decoded cache.

    PYTHONPATH=src python benchmarks/data_throughput.py [--samples 512] [--source-size 160] [--image-size 64]

Writes synthetic shards of JPEG photos-like images (smooth noise, so JPEG works as hard as on
photos) under benchmarks/.work/, then times full epochs of the real ``Loader`` (decode, resize,
normalise, tokenise, collate). Prints a table and writes benchmarks/results/data_throughput.json.
On a shared machine compare the ratios, not the absolute numbers: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import resource
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlalign.data.cache import DecodedCache
from vlalign.data.loader import Loader
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform

HERE = Path(__file__).parent
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
    rng = np.random.default_rng(0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--source-size", type=int, default=160, help="stored JPEG side in pixels")
    parser.add_argument("--image-size", type=int, default=64, help="training resolution")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
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
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "data_throughput.json").write_text(json.dumps({
        "settings": vars(args), "cache_build_s": round(cache_build_s, 2), "rows": rows,
        "machine": {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                    "python": platform.python_version(), "torch": torch.__version__}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
