"""Wall time of MC dropout with T samples vs T plain forward passes of the same model.

The model is configs/default.yaml's (random weights); the window is its ``data.patch_size``
(64×64×32). For each dropout placement (``model.mc_dropout_at``) ``mc_forward`` runs what precedes
the dropout once and repeats only what follows it; B is T plain eval-mode forward passes, the cost
a naive MC loop pays. The placements differ only in where dropout acts (same weights), so B is one
measurement shared by all of them.

A shared CPU makes single timings swing by several times, so every repeat times B and then each
placement back to back in one process; the ratio is reported per repeat and as the median over the
repeats, next to the ratio of the best times.

Usage: python scripts/bench_mc.py [--samples 20] [--repeats 5] [--decoder-batch N] [--set key=value ...]
Prints numbers only; nothing is asserted. scripts/bench.py imports :func:`measure_mc_ratio`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from radmtl.config import MC_DROPOUT_PLACES, load_config
from radmtl.nn.model import build_model

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_mc_ratio(
    samples: int = 20,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    repeats: int = 3,
    placements: Sequence[str] | None = None,
    decoder_batch: int | None = None,
) -> dict:
    """Time ``mc_forward(window, samples)`` against ``samples`` plain forward passes.

    Args:
        samples: T.
        device: where the network runs.
        overrides: ``--set``-style overrides of configs/default.yaml (e.g. a smaller model).
        repeats: timed rounds after one warm-up round; each round times every path once.
        placements: the ``mc_dropout_at`` values to time; None = all. The configured one is always
            timed and is the one reported at the top level.
        decoder_batch: passed to ``mc_forward`` (None: chosen by device).

    Returns:
        ``window``, ``placement`` (the configured one), ``mc_s`` and ``full_passes_s`` (median
        seconds), ``ratio`` (median over rounds of mc / full passes), and ``placements``: per
        placement ``mc_s``, ``ratio``, ``ratio_best`` (best mc time / best full-passes time) and
        ``ratios`` (every round).
    """
    cfg = load_config(DEFAULT_CONFIG, list(overrides))
    placement = cfg.model.mc_dropout_at
    names = list(dict.fromkeys([placement, *(placements or MC_DROPOUT_PLACES)]))
    dev = torch.device(device)
    models = {}
    for name in names:
        torch.manual_seed(cfg.seed)  # same weights for every placement
        models[name] = build_model(dataclasses.replace(cfg.model, mc_dropout_at=name)).to(dev).eval()
    window = tuple(cfg.data.patch_size)
    mr = torch.randn(1, cfg.model.in_channels, *window, device=dev)
    plain_model = models[placement]

    def full_passes() -> None:
        for _ in range(samples):
            plain_model(mr)

    full: list[float] = []
    mc: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up allocator and kernels, not kept
            t_full = _seconds(full_passes, dev)
            t_mc = {name: _seconds(lambda m=model: m.mc_forward(mr, samples, decoder_batch=decoder_batch), dev)
                    for name, model in models.items()}
            if round_ > 0:
                full.append(t_full)
                for name in names:
                    mc[name].append(t_mc[name])
    per = {}
    for name in names:
        ratios = [m / f for m, f in zip(mc[name], full)]
        per[name] = {"mc_s": statistics.median(mc[name]), "ratio": statistics.median(ratios),
                     "ratio_best": min(mc[name]) / min(full), "ratios": ratios}
    return {"window": window, "samples": samples, "device": str(dev), "threads": torch.get_num_threads(),
            "channels": tuple(cfg.model.channels), "placement": placement, "decoder_batch": decoder_batch,
            "mc_s": per[placement]["mc_s"], "full_passes_s": statistics.median(full),
            "ratio": per[placement]["ratio"], "placements": per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decoder-batch", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    result = measure_mc_ratio(args.samples, args.device, args.overrides, args.repeats,
                              decoder_batch=args.decoder_batch)
    t = result["samples"]
    print(f"window {result['window']}, channels {result['channels']}, T = {t}, device {result['device']}, "
          f"threads = {result['threads']}, decoder_batch = {result['decoder_batch']}, {args.repeats} rounds")
    print(f"{t} plain forward passes: median {result['full_passes_s']:.3f} s")
    for name, row in result["placements"].items():
        mark = "  (configured)" if name == result["placement"] else ""
        rounds = " ".join(f"{r:.2f}" for r in row["ratios"])
        print(f"mc_forward T = {t}, mc_dropout_at = {name:<10} median {row['mc_s']:.3f} s   "
              f"ratio {row['ratio']:.2f} (best/best {row['ratio_best']:.2f}; rounds {rounds}){mark}")


if __name__ == "__main__":
    main()
