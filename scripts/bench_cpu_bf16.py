"""One training step of a recipe on this CPU, float32 against bf16 autocast; prints the numbers.

    .venv/bin/python scripts/bench_cpu_bf16.py                      # configs/quick.yaml, 10 rounds
    .venv/bin/python scripts/bench_cpu_bf16.py --config configs/default.yaml --repeats 3

The step is the one ``radmtl train`` takes (``forward_losses`` + ``optimise``: per-task passes and
clipping, AdamW groups) on a synthetic batch of the recipe's patch size; times are medians after one
warm-up round, float32 and bf16 alternating so load on a shared machine hits both alike. bf16 is only
worth asking for (``train.amp: bf16``) where this prints a speed-up: a CPU without native bf16
emulates it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench import make_step, synthetic_batch, timed  # noqa: E402  (a sibling script, not a package)

from radmtl.config import load_config  # noqa: E402
from radmtl.device import cpu_has_native_bf16, keep_freed_memory_for_reuse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quick.yaml")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(args.config)
    cpu = torch.device("cpu")
    keep_freed_memory_for_reuse()  # as radmtl train does on a CPU
    batch = synthetic_batch(cfg, cfg.train.batch_size, cpu)
    steps = {name: make_step(cfg, batch, cpu, dtype)[1]
             for name, dtype in (("float32", None), ("bf16", torch.bfloat16))}
    seconds = timed(steps, cpu, args.repeats)
    print(f"{args.config.name}: batch {cfg.train.batch_size} × {list(cfg.data.patch_size)}, torch threads "
          f"{torch.get_num_threads()}, native bf16 {cpu_has_native_bf16()}")
    for name, value in seconds.items():
        print(f"  {name:8s} {1e3 * value:7.1f} ms per training step")
    print(f"  bf16 speed-up {seconds['float32'] / seconds['bf16']:.2f}×")


if __name__ == "__main__":
    main()
