"""``radmtl infer`` end to end against MONAI's bare sliding window of the same model (not part of the tests).

    .venv/bin/python scripts/bench_infer.py [--shape 400 400 120] [--spacing 1 1 2.5] [--repeats 3]
                                            [--output-format auto] [--device cpu]

On one synthetic MR (an elliptical body with a smooth pattern and noise, written as ``.nii``) and the
``configs/default.yaml`` model with random weights (``build_model``, saved with ``make_payload`` /
``save_checkpoint``), T = 1, each repeat times, in this one process and back to back:

- A: ``run_inference`` end to end (read, preprocess, predict, resample, write, publish), and
- B: ``monai.inferers.sliding_window_inference`` of the same network on the same preprocessed tensor,
  with the same roi, overlap, sw_batch_size and Gaussian mode,

and prints A, B, A / B and the stage times from ``provenance.json``. A shared machine makes single
timings swing, so the ratio of each pair is reported with its median over the repeats.

Another script imports :func:`measure_infer_ratio` (put this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path



def _default_config() -> Path:
    """``configs/default.yaml`` beside the radmtl package being measured (an older checkout's own)."""
    import radmtl

    return Path(radmtl.__file__).resolve().parents[1] / "configs" / "default.yaml"


def make_mr(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> Path:
    """A synthetic MR at ``path``: an elliptical "body" with a smooth interior pattern and noise, float32."""
    import numpy as np

    from radmtl.data.io import write_volume

    x = (np.arange(shape[0], dtype=np.float32) - shape[0] / 2) / (0.42 * shape[0])
    y = (np.arange(shape[1], dtype=np.float32) - shape[1] / 2) / (0.32 * shape[1])
    r2 = x[:, None] ** 2 + y[None, :] ** 2
    rng = np.random.default_rng(seed)
    mr = np.empty(shape, np.float32)
    for z in range(shape[2]):  # slice by slice: no full-volume temporaries
        mr[:, :, z] = np.where(r2 < 1, 600 + 200 * np.cos(6 * r2 + z / 20), 5)
        mr[:, :, z] += rng.normal(0, 10, shape[:2]).astype(np.float32)
    return write_volume(mr, np.diag([*spacing, 1.0]), path, np.float32)


def make_inputs(folder: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                overrides: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A synthetic MR ``folder/mr.nii`` and a random-weight checkpoint ``folder/model.pt`` of the default model."""
    import torch

    from radmtl.config import load_config
    from radmtl.data.phantom import PHANTOM_LABELS
    from radmtl.nn.checkpoint import make_payload, save_checkpoint
    from radmtl.nn.model import build_model

    mr_path = make_mr(folder / "mr.nii", shape, spacing)
    cfg = load_config(_default_config() if _default_config().exists() else None, list(overrides))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "model.pt", make_payload(
        cfg=cfg, label_names=dict(PHANTOM_LABELS), model=build_model(cfg.model), with_rng=False))
    return mr_path, checkpoint


def _bare_sliding_window(checkpoint: Path, mr_path: Path, device: str, mc_samples: int):
    """A no-argument call running MONAI's sliding window of the checkpoint's network on the preprocessed MR."""
    import torch
    from monai.inferers import sliding_window_inference

    from radmtl.data.transforms import eval_transforms
    from radmtl.device import resolve_device
    from radmtl.nn.checkpoint import model_from_checkpoint

    torch_device = resolve_device(device)
    loaded = model_from_checkpoint(checkpoint, torch_device)
    cfg = loaded.cfg
    # The training preprocessing that radmtl infer applies (called directly, so this script also
    # measures older radmtl versions).
    mr = eval_transforms(cfg.data, ["mr"])({"mr": str(mr_path)})["mr"].as_tensor()[None].float()
    model = loaded.model.eval()
    # The same stitching device rule as predict_volume: the CPU, or the GPU for a grid that fits.
    from radmtl.inference.predict import CPU_STITCH_VOXELS

    n_voxels = int(torch.tensor(mr.shape[2:]).prod())
    stitch = torch.device("cpu") if torch_device.type == "cpu" or n_voxels > CPU_STITCH_VOXELS else torch_device

    def predictor(window):
        return model(window) if mc_samples <= 1 else model.mc_forward(window, mc_samples)

    @torch.no_grad()
    def run() -> None:
        out = sliding_window_inference(mr, roi_size=tuple(cfg.data.patch_size), sw_batch_size=cfg.infer.sw_batch_size,
                                       predictor=predictor, overlap=cfg.infer.overlap, mode="gaussian",
                                       sw_device=torch_device, device=stitch)
        for value in (out.values() if isinstance(out, dict) else [out]):
            value.cpu()
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    return run


def measure_infer_ratio(
    shape: tuple[int, int, int] = (400, 400, 120),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5),
    *,
    mc_samples: int = 1,
    device: str = "cpu",
    overrides: tuple[str, ...] = (),
    repeats: int = 1,
    output_format: str = "auto",
    folder: Path | None = None,
    variants: dict[str, dict] | None = None,
) -> dict:
    """Time ``radmtl infer`` end to end (A) and the bare sliding window (B) on one synthetic MR, in this process.

    Args:
        shape, spacing: the MR grid (voxels, mm).
        mc_samples: T for radmtl infer (the bare sliding window runs ``mc_forward`` with the same T).
        device: ``cpu``, ``cuda`` or ``auto``.
        overrides: config overrides (e.g. a smaller model for a quick run).
        repeats: timed rounds after one untimed warm-up round; each round runs every variant of A, then B,
            so all see the same load.
        output_format: ``--output-format`` of radmtl infer (``auto``: ``.nii`` like the input), when no
            ``variants`` are given.
        folder: where inputs and outputs go (a temporary folder if None).
        variants: name → ``InferOptions`` fields of each radmtl infer variant to time (e.g.
            ``{"nii.gz": {"output_format": "nii.gz"}, "no review": {"review": False}}``).

    Returns:
        Per variant (``variants[name]``): ``infer_s`` and ``sliding_window_s`` (medians), ``ratio`` (median of
        the per-round ratios to that round's B), ``ratios`` (each round), ``stages_s`` (stage times of the
        median run, from provenance.json), ``files``. The first variant's figures also at the top level, with
        the inputs (shape, spacing, mc_samples, device, network grid).
    """
    from radmtl.inference.infer import PROVENANCE, InferOptions, run_inference

    variants = variants or {output_format: {"output_format": output_format}}
    with tempfile.TemporaryDirectory(prefix="radmtl-bench-infer-") as tmp:
        work = Path(folder) if folder is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        mr_path, checkpoint = make_inputs(work, tuple(shape), tuple(spacing), tuple(overrides))
        bare = _bare_sliding_window(checkpoint, mr_path, device, mc_samples)
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for index in range(repeats + 1):  # the first round warms caches and allocators: not counted
            timed = {}
            for number, (name, fields) in enumerate(variants.items()):
                out = work / f"out{index}-{number}"
                options = InferOptions(mc_samples=mc_samples, device=device, **fields)
                t0 = time.perf_counter()
                results = run_inference(str(checkpoint), mr_path, out, options)
                timed[name] = (time.perf_counter() - t0, out)
                if results[0].error:
                    raise SystemExit(f"radmtl infer failed: {results[0].error}")
            t0 = time.perf_counter()
            bare()
            window_s = time.perf_counter() - t0
            for name, (infer_s, out) in timed.items():
                provenance = json.loads(next(out.rglob(PROVENANCE)).read_text())
                if index > 0:
                    runs[name].append({
                        "infer_s": infer_s, "sliding_window_s": window_s, "ratio": infer_s / window_s,
                        "stages_s": provenance["timings_s"], "network_grid": provenance["network_grid"]["shape"],
                        "files": sorted(p.name for p in (out / results[0].case_id).iterdir())})
    by_variant = {}
    for name, rounds in runs.items():
        median = sorted(rounds, key=lambda r: r["infer_s"])[len(rounds) // 2]
        by_variant[name] = {
            "network_grid": median["network_grid"], "files": median["files"],
            "infer_s": statistics.median(r["infer_s"] for r in rounds),
            "sliding_window_s": statistics.median(r["sliding_window_s"] for r in rounds),
            "ratio": statistics.median(r["ratio"] for r in rounds),
            "ratios": [round(r["ratio"], 3) for r in rounds],
            # every stage the run recorded (an older radmtl has fewer, e.g. resample_write_s)
            "stages_s": {k.removesuffix("_s"): v for k, v in median["stages_s"].items()},
        }
    first = next(iter(by_variant.values()))
    return {"shape": list(shape), "spacing": list(spacing), "mc_samples": mc_samples, "device": device,
            **first, "variants": by_variant}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 400, 120))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 2.5))
    parser.add_argument("--t", type=int, default=1, help="MC samples T (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-format", default="auto", choices=("auto", "nii.gz", "nii", "mha"))
    parser.add_argument("--override", action="append", default=[], help="config override, e.g. model.channels=[8,16]")
    args = parser.parse_args()
    import torch

    print(f"MR {list(args.shape)} at {list(args.spacing)} mm, T = {args.t}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, output format {args.output_format}", flush=True)
    result = measure_infer_ratio(tuple(args.shape), tuple(args.spacing), mc_samples=args.t, device=args.device,
                                 overrides=tuple(args.override), repeats=args.repeats,
                                 output_format=args.output_format)
    print(f"network grid {result['network_grid']}; files {', '.join(result['files'])}")
    print(f"radmtl infer end to end (A): {result['infer_s']:.2f} s")
    print(f"bare sliding window (B):     {result['sliding_window_s']:.2f} s")
    print(f"A / B: ratio {result['ratio']:.3f} (median of pairs {result['ratios']})")
    print("stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result["stages_s"].items()))


if __name__ == "__main__":
    main()
