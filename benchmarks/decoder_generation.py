"""Generation throughput of CausalDecoder with and without the KV cache.

    PYTHONPATH=src python benchmarks/decoder_generation.py [--threads 1] [--out benchmarks/results/decoder_generation]

Model: 4 layers, width 128, 4 heads, vocab 4096, context 128. Each run continues a 16-vector
prefix + 16-token prompt by 96 greedy tokens (the full context). Best of 3 runs per setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vlalign import provenance
from vlalign.models.decoder import CausalDecoder, DecoderConfig

PREFIX, PROMPT, NEW = 16, 16, 96
SEED = 0


def tokens_per_second(model: CausalDecoder, batch: int, use_cache: bool, repeats: int = 3) -> float:
    ids = torch.randint(0, model.cfg.vocab_size, (batch, PROMPT))
    prefix = torch.randn(batch, PREFIX, model.cfg.width)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(ids, prefix, max_new_tokens=NEW, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
        assert out.shape == (batch, NEW)
    return batch * NEW / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also write the table to OUT.md and its rows to OUT.json")
    args = parser.parse_args()
    began = provenance.start()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = CausalDecoder(DecoderConfig(vocab_size=4096, context_length=128, width=128, depth=4, heads=4)).eval()
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"CausalDecoder depth 4, width 128, vocab 4096: {params:,} parameters; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}",
        f"prefix {PREFIX} + prompt {PROMPT}, {NEW} new tokens, greedy, best of 3",
        "",
        "| batch | no cache (tok/s) | KV cache (tok/s) | speed-up |",
        "| --- | --- | --- | --- |",
    ]
    rows = []
    for batch in (1, 8):
        plain, cached = (tokens_per_second(model, batch, use_cache) for use_cache in (False, True))
        rows.append({"batch": batch, "no_cache_tokens_per_s": plain, "kv_cache_tokens_per_s": cached})
        lines.append(f"| {batch} | {plain:,.0f} | {cached:,.0f} | {cached / plain:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        stamp = provenance.stamp(began, [SEED])
        args.out.with_suffix(".md").write_text(table + "\n\n" + provenance.markdown(stamp) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"stamp": stamp, "parameters": params, "rows": rows},
                                                            indent=1))


if __name__ == "__main__":
    main()
