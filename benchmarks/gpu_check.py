"""On a CUDA machine: train the default recipe and a ViT-B/16-sized CLIP for a fixed number of steps, report
pairs/s, MFU against the card's peak and memory, then evaluate each run.

    python benchmarks/gpu_check.py [--steps 100] [--only default,vit-b16] [--workers 8]

Per configuration:

1. ``train_step`` alone on batches already on the GPU: the card's own rate (the shapes world renders on the
   CPU, so the loader can be the limit end to end); peak memory allocated over these steps;
2. the training loop itself (``vlalign.train.run_training``, ``train.device=auto``) for ``--steps`` steps:
   end-to-end pairs/s and the fraction of time spent waiting for data, from its ``metrics.jsonl``;
3. ``vlalign eval`` of the run's tasks (``eval.tasks``) on the GPU, and its wall time.

MFU = model FLOPs per pair (forward + backward, counted by ``FlopCounterMode`` as ``metrics.jsonl`` counts them)
x pairs/s / the card's dense peak for the run's matmul precision (bf16, or fp32 without TF32) from its
datasheet (``PEAKS``); a card not in the table is measured instead (a large bf16 / fp32 matmul), and the
result says which. Writes benchmarks/results/gpu_check.{json,md}. Without CUDA it exits with code 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEED = 0
# Dense (no structured sparsity) tensor-core peaks from NVIDIA's datasheets, FLOP/s: (name part, bf16, fp32).
# The first matching row wins, so the specific names come first.
PEAKS = (
    ("H100 PCIe", 756e12, 51.2e12),
    ("H100 NVL", 835e12, 60e12),
    ("H100", 989.4e12, 66.9e12),  # SXM (HBM3)
    ("H200", 989.4e12, 66.9e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362.05e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
)
# The ViT-B/16 CLIP geometry (Radford et al. 2021, Table 20) on the shapes world: image 224, patch 16, width 768,
# text width 512 x 12 layers, embedding 512; context 32 covers the world's captions.
VIT_B16 = ["model.vision.size=vit-b", "model.vision.patch_size=16", "data.image_size=224", "model.text.size=text-b",
           "model.embed_dim=512", "data.batch_size=256", "optim.lr=5e-4"]
CONFIGS = {"default": [], "vit-b16": VIT_B16}
HEADLINE = ("top1", "i2t_R@1", "t2i_R@1")  # the evaluation metrics the markdown shows


def card_peak(dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of this card for matmuls in ``dtype``, where the figure comes from)."""
    name = torch.cuda.get_device_name()
    for part, bf16, fp32 in PEAKS:
        if part in name:
            return (bf16 if dtype == torch.bfloat16 else fp32), f"datasheet ({part})"
    return measured_peak(dtype), "measured (card not in PEAKS)"


def measured_peak(dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    generator = torch.Generator("cuda").manual_seed(SEED)
    a = torch.randn(n, n, device="cuda", generator=generator, dtype=dtype)
    b = torch.randn(n, n, device="cuda", generator=generator, dtype=dtype)
    a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def config_for(name: str, steps: int, workers: int):
    from vlalign.config import apply_overrides
    from vlalign.recipes import DEFAULT_RECIPE, get_recipe

    common = [f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 5)}",
              "train.device=auto", f"data.num_workers={workers}", f"train.seed={SEED}"]
    return apply_overrides(get_recipe(DEFAULT_RECIPE), CONFIGS[name] + common)


def step_rate(cfg, steps: int) -> dict:
    """``train_step`` alone on a few batches held on the GPU, cycled: pairs/s, FLOPs per pair, peak memory."""
    from vlalign.device import to_device
    from vlalign.train.distributed import build_strategy
    from vlalign.train.metrics import count_flops_per_sample
    from vlalign.train.optim import build_optimizer
    from vlalign.train.precision import precision_name, resolve_precision
    from vlalign.train.setup import build_components, seed_everything
    from vlalign.train.step import TrainState, forward_kwargs, train_step

    seed_everything(cfg.train.seed, cfg.train.deterministic, cfg.train.threads)
    with tempfile.TemporaryDirectory() as run_dir:
        parts = build_components(cfg, Path(run_dir))
    strategy = build_strategy("replicate")
    model = strategy.wrap(parts.model)
    optimizer = build_optimizer(model, cfg.optim)
    dtype = resolve_precision(cfg.train.precision, "cuda")
    batches = iter(parts.loader)
    held = [to_device(next(batches), parts.device) for _ in range(4)]
    flops = count_flops_per_sample(model, held[0], forward_kwargs(parts.objective))
    state = TrainState()
    for batch in held:  # warm-up: kernel selection, allocator pools
        train_step(model, parts.objective, optimizer, batch, state, cfg, strategy, dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        train_step(model, parts.objective, optimizer, held[i % len(held)], state, cfg, strategy, dtype)
    torch.cuda.synchronize()
    pairs_per_s = steps * cfg.data.batch_size / (time.perf_counter() - start)
    peak, source = card_peak(dtype)
    return {"precision": precision_name(cfg.train.precision, dtype), "flops_per_pair": flops,
            "step_pairs_per_s": round(pairs_per_s, 1), "step_mfu": round(flops * pairs_per_s / peak, 4),
            "peak_flops": peak, "peak_source": source,
            "step_peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def run_and_eval(cfg, run_dir: Path) -> dict:
    """The real training loop, then the run's evaluation, both on the GPU."""
    from vlalign.api import load
    from vlalign.eval import evaluate
    from vlalign.train import run_training

    start = time.perf_counter()
    run_training(cfg, run_dir, progress=False)
    train_s = time.perf_counter() - start
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    start = time.perf_counter()
    model = load(run_dir)
    results = evaluate(model, cfg.eval.tasks).results
    return {"train_wall_s": round(train_s, 1), "run_pairs_per_s": round(last["pairs_per_s"], 1),
            "run_data_wait_fraction": round(last["data_wait_fraction"], 3),
            "run_peak_memory_mib": round(last["peak_memory_mib"], 1), "final_loss": round(last["loss"], 4),
            "eval_device": str(model.device), "eval_wall_s": round(time.perf_counter() - start, 1),
            "eval": [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in results]}


def markdown(rows: list[dict], args, stamp: dict) -> str:
    from vlalign import provenance

    lines = ["# GPU check", "", f"{torch.cuda.get_device_name()}, {args.steps} steps per configuration, "
             f"{args.workers} loader workers. Step = `train_step` alone on batches held on the GPU; run = the "
             "training loop with its loader (shapes rendered on the CPU).", "",
             "| config | precision | batch | step pairs/s | step MFU | peak memory MiB | run pairs/s | data wait | "
             "eval s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['precision']} | {r['batch_size']} | {r['step_pairs_per_s']} | "
                     f"{r['step_mfu']:.1%} | {r['step_peak_memory_mib']} | {r['run_pairs_per_s']} | "
                     f"{r['run_data_wait_fraction']:.0%} | {r['eval_wall_s']} |")
    lines += ["", "MFU against " + "; ".join(f"{r['config']}: {r['peak_flops'] / 1e12:.0f} TFLOP/s "
                                               f"{r['precision']} ({r['peak_source']})" for r in rows) + ".", ""]
    for r in rows:  # the headline numbers; gpu_check.json keeps every metric
        lines.append(f"Evaluation of {r['config']}: " + "; ".join(
            f"{e['task']} {e.get('labels', '')} ".replace("  ", " ")
            + ", ".join(f"{k} {e[k]:.3f}" for k in HEADLINE if k in e) for e in r["eval"]) + ".")
    return "\n".join(lines + ["", provenance.markdown(stamp)]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--only", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device on this machine, so there is nothing to "
              "measure. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    from vlalign import provenance

    began = provenance.start()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only.split(","):
            cfg = config_for(name, args.steps, args.workers)
            row = {"config": name, "batch_size": cfg.data.batch_size, **step_rate(cfg, args.steps)}
            row |= run_and_eval(cfg, Path(scratch) / name)
            print(json.dumps(row), flush=True)
            rows.append(row)
    stamp = provenance.stamp(began, [SEED])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_check.json").write_text(json.dumps(
        {"stamp": stamp, "device": torch.cuda.get_device_name(), "settings": vars(args) | {"results": None},
         "rows": rows}, indent=1))
    (args.results / "gpu_check.md").write_text(markdown(rows, args, stamp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
