#!/usr/bin/env python
"""Keep of a trained checkpoint only what builds and runs the model: a small file the tests can ship.

The optimiser, scheduler and RNG states (two thirds of a checkpoint) only resume training; the model's
config, weights, labels, preprocessing, learned log-variances, σ-scaling factor and review thresholds
stay. ``tests/fixtures/demo_model.pt`` was made this way from the demo's model:

    bash scripts/demo.sh && python scripts/model_fixture.py demo_out/run/checkpoint_best.pt tests/fixtures/demo_model.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KEEP = ("format", "radmtl_version", "config", "label_names", "preprocessing", "model_state", "loss_state",
        "epoch", "best_metric", "best_epoch", "sigma_scaling", "review_thresholds")


def main(argv: list[str] | None = None) -> int:
    from radmtl.nn.checkpoint import load_checkpoint, save_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    payload = load_checkpoint(args.checkpoint)
    kept = {key: payload[key] for key in KEEP if key in payload}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, kept)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB ({', '.join(kept)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
