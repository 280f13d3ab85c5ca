"""Wall time of MC-dropout sampling: batched decoders (encoder once) vs T full forward passes.

Also timed: the decoders in chunks of ``--decoder-batch`` items and in a plain loop, both with the
encoder run once. On a CPU the decoders dominate the cost and gain little from batching, so most of
the CPU speed-up comes from running the encoder once; the one-call batch is aimed at GPUs.

Usage: python scripts/bench_mc.py [--samples 20] [--shape 64 64 32] [--repeats 2]
Prints numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import torch

from radmtl.config import ModelConfig
from radmtl.nn.model import build_model


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 32))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decoder-batch", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    mr = torch.randn(1, 1, *args.shape)
    samples = args.samples

    def batched() -> None:
        model.mc_forward(mr, samples)

    def chunked() -> None:
        model.mc_forward(mr, samples, decoder_batch=args.decoder_batch)

    def loop() -> None:
        model.mc_forward(mr, samples, batched=False)

    def full_passes() -> None:
        # one sample per call: encoder and decoders every time, as a naive MC loop would
        for _ in range(samples):
            model.mc_forward(mr, 1)

    with torch.inference_mode():
        model.mc_forward(mr, 1)  # warm-up
        t_batched = best_time(batched, args.repeats)
        t_chunked = best_time(chunked, args.repeats)
        t_loop = best_time(loop, args.repeats)
        t_full = best_time(full_passes, args.repeats)
    print(f"input {tuple(mr.shape)}, channels {ModelConfig().channels}, T = {samples}, "
          f"threads = {torch.get_num_threads()}, best of {args.repeats}")
    rows = [
        (f"batched mc_forward, one decoder call of {samples} items", t_batched),
        (f"batched mc_forward, decoder_batch={args.decoder_batch}", t_chunked),
        ("mc_forward loop (batched=False), encoder once", t_loop),
        (f"{samples} full forward passes (encoder each time)", t_full),
    ]
    for label, seconds in rows:
        print(f"{label:<58} {seconds:7.2f} s   speed-up vs full passes {t_full / seconds:5.2f}x")


if __name__ == "__main__":
    main()
