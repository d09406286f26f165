"""Benchmark the six classifiers: parameters, GMACs and seconds per 16x224x224 clip.

Usage::

    python bench/models.py                                  # CPU, 2 threads, batch 1
    python bench/models.py --device cuda --amp --batch 1 8  # GPU, bf16/fp16 autocast

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (MACs = FLOPs / 2;
convolutions, matmuls and TIN's interpolation einsum; no element-wise ops). Latency is the median over
``--repeats`` timed forward passes (after ``--warmup`` untimed ones) under ``torch.no_grad``, divided by
the batch size. The ratio column is latency / TIN's latency at the same batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.models import ARCHS, build  # noqa: E402


def count_gmacs(arch: str, frames: int, size: int) -> float:
    with torch.device("meta"):
        model = build(arch, frames=frames, size=size).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, frames, size, size))
    return counter.get_total_flops() / 2e9


def time_per_clip(model: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int, amp: bool) -> float:
    device = x.device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    times = []
    with torch.no_grad(), autocast:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) / x.shape[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (CUDA only)")
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    archs = ["tin", *[a for a in args.archs if a != "tin"]]  # TIN first: the latency reference
    rows = []
    for arch in archs:
        model = build(arch, frames=args.frames, size=args.size).eval().to(device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gmacs = count_gmacs(arch, args.frames, args.size)
        for batch in args.batch:
            x = torch.rand(batch, 3, args.frames, args.size, args.size, device=device)
            seconds = time_per_clip(model, x, args.repeats, args.warmup, args.amp)
            rows.append((arch, batch, params, gmacs, seconds))
            print(f"# {arch} batch {batch}: {seconds:.3f} s/clip", file=sys.stderr, flush=True)
        del model
    ref = {b: s for a, b, _, _, s in rows if a == "tin"}
    where = f"{device.type}{' amp' if args.amp and device.type == 'cuda' else ''}"
    if device.type == "cpu":
        where += f", {args.threads} threads"
    print(
        f"clip {args.frames}x{args.size}x{args.size}, {where}, median of {args.repeats} runs, torch {torch.__version__}"
    )
    print()
    print("| arch | batch | params (M) | GMACs / clip | s / clip | latency / TIN | GMACs / TIN |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tin_macs = next(g for a, _, _, g, _ in rows if a == "tin")
    for arch, batch, params, gmacs, seconds in rows:
        print(f"| {arch} | {batch} | {params:.2f} | {gmacs:.1f} | {seconds:.3f} | {seconds / ref[batch]:.2f} | "
              f"{gmacs / tin_macs:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
