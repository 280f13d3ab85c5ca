"""Wall time and peak RSS of ``radmtl infer`` on one large synthetic MR (not part of the tests).

    .venv/bin/python scripts/bench_infer.py [--shape 512 512 200] [--spacing 0.8 0.8 2.5] [--t 1 4]

Each T runs in its own child process so its peak RSS (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _make_inputs(folder: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[Path, Path]:
    import numpy as np
    import torch

    from radmtl.nn.checkpoint import make_payload, save_checkpoint
    from radmtl.config import load_config
    from radmtl.data.io import write_volume
    from radmtl.nn.model import build_model
    from radmtl.data.phantom import PHANTOM_LABELS

    # An elliptical "body" with a smooth interior pattern and noise, in float32, built slice by slice.
    x = (np.arange(shape[0], dtype=np.float32) - shape[0] / 2) / (0.42 * shape[0])
    y = (np.arange(shape[1], dtype=np.float32) - shape[1] / 2) / (0.32 * shape[1])
    r2 = x[:, None] ** 2 + y[None, :] ** 2
    rng = np.random.default_rng(0)
    mr = np.empty(shape, np.float32)
    for z in range(shape[2]):
        mr[:, :, z] = np.where(r2 < 1, 600 + 200 * np.cos(6 * r2 + z / 20), 5)
        mr[:, :, z] += rng.normal(0, 10, shape[:2]).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    mr_path = write_volume(mr, affine, folder / "mr_large.nii", np.float32)
    cfg = load_config(None, ["model.channels=[8,16]", "model.strides=[2]", "data.patch_size=[64,64,32]",
                             "data.spacing=[3.0,3.0,3.0]", "infer.sw_batch_size=4"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(folder / "model.pt", make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS),
                                                             model=build_model(cfg.model), with_rng=False))
    return mr_path, ckpt


def _child(model: str, mr: str, out: str, t: int) -> None:
    from radmtl.inference.infer import InferOptions, run_inference

    t0 = time.perf_counter()
    results = run_inference(model, mr, out, InferOptions(mc_samples=t, device="cpu"))
    wall = time.perf_counter() - t0
    if results[0].error:
        raise SystemExit(results[0].error)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"T": t, "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb),
                      "outputs": results[0].outputs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.5))
    parser.add_argument("--t", type=int, nargs="+", default=(1, 4))
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "MR", "OUT", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, mr, out, t = args.child
        _child(model, mr, out, int(t))
        return
    import torch

    with tempfile.TemporaryDirectory(prefix="radmtl-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        mr_path, ckpt = _make_inputs(folder, tuple(args.shape), tuple(args.spacing))
        print(f"input {list(args.shape)} at {list(args.spacing)} mm written in {time.perf_counter() - t0:.1f} s; "
              f"CPU threads {torch.get_num_threads()}", flush=True)
        for t in args.t:
            done = subprocess.run([sys.executable, __file__, "--child", str(ckpt), str(mr_path),
                                   str(folder / f"out_T{t}"), str(t)], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                raise SystemExit(done.returncode)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"T={result['T']}: wall {result['wall_s']} s, peak RSS {result['peak_rss_mb']} MB, "
                  f"{len(result['outputs'])} files", flush=True)


if __name__ == "__main__":
    main()
