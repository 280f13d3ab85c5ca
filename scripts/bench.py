"""Issue 12's benchmarks side by side in one run, written to ``docs/benchmarks.md``.

    .venv/bin/python scripts/bench.py                          # full sizes → docs/benchmarks.md (minutes)
    .venv/bin/python scripts/bench.py --quick --out /tmp/b.md  # tiny sizes, a smoke test

Sections: (1) ``radmtl infer`` end to end vs MONAI's bare sliding window, with stage times;
(2) MC dropout vs T plain forward passes; (3) one multi-task network vs two single-task ones;
(4) the real training step vs a bare loop; (5) peak RSS of ``radmtl infer`` on a large MR;
(6) the same on CUDA with bf16 AMP where a GPU is present. Every figure in the markdown is measured
by this run; each section prints its numbers as it finishes. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent

from radmtl.config import load_config
from radmtl.nn.losses import MultiTaskLoss, parameter_groups
from radmtl.nn.model import build_model
from radmtl.training.step import forward_losses, optimise

DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


@dataclass(frozen=True)
class Sizes:
    """What one run measures; ``overrides`` shrink the default model for ``--quick`` only."""

    infer_shape: tuple[int, int, int]
    infer_spacing: tuple[float, float, float]
    memory_shape: tuple[int, int, int]
    memory_spacing: tuple[float, float, float]
    mc_samples: int
    repeats: int
    overrides: tuple[str, ...] = ()


FULL = Sizes((400, 400, 120), (1.0, 1.0, 2.5), (512, 512, 200), (0.8, 0.8, 2.5), mc_samples=20, repeats=3)
QUICK = Sizes((40, 40, 24), (2.0, 2.0, 2.5), (48, 48, 24), (2.0, 2.0, 2.5), mc_samples=3, repeats=1,
              overrides=("model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
                         "data.spacing=[3.0,3.0,3.0]"))


@dataclass
class Section:
    """One section of the report: comparisons (A vs B and their ratio) and single figures."""

    title: str
    text: str
    rows: list[tuple[str, str, float, float]] = field(default_factory=list)  # measure, unit, A, B
    figures: list[tuple[str, str, float]] = field(default_factory=list)  # measure, unit, value

    def compare(self, measure: str, unit: str, a: float, b: float) -> None:
        self.rows.append((measure, unit, a, b))
        print(f"  {measure}: {_num(a)} vs {_num(b)} {unit}, ratio {a / b:.3f}", flush=True)

    def figure(self, measure: str, unit: str, value: float) -> None:
        self.figures.append((measure, unit, value))
        print(f"  {measure}: {_num(value)} {unit}", flush=True)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.text, ""]
        if self.rows:
            lines += ["| measure | unit | A | B | A / B |", "| --- | --- | ---: | ---: | ---: |"]
            lines += [f"| {m} | {u} | {_num(a)} | {_num(b)} | {a / b:.3f} |" for m, u, a, b in self.rows]
            lines.append("")
        if self.figures:
            lines += ["| measure | unit | value |", "| --- | --- | ---: |"]
            lines += [f"| {m} | {u} | {_num(v)} |" for m, u, v in self.figures]
            lines.append("")
        return "\n".join(lines)


def _num(value: float) -> str:
    """Four significant digits: enough that A / B recomputed from the printed A and B agrees to ~0.1 %."""
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"


# --- timing ------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict[str, object], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per function over ``repeats`` rounds, after one warm-up round (allocator,
    kernel selection). Each round calls every function once, back to back, so a burst of load on a
    shared machine hits the things compared alike instead of whichever happened to run during it."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


# --- sections 1 and 2: the sibling benchmarks -------------------------------------------------


def infer_section(sizes: Sizes, device: torch.device) -> Section:
    from bench_infer import measure_infer_ratio

    shape, spacing = sizes.infer_shape, sizes.infer_spacing
    print(f"[1] radmtl infer vs bare sliding window, MR {shape} at {spacing} mm, T = 1, {device}", flush=True)
    result = measure_infer_ratio(shape, spacing, mc_samples=1, device=str(device), overrides=sizes.overrides)
    section = Section(
        "1. `radmtl infer` end to end vs MONAI's bare sliding window",
        f"MR {_dims(shape)} voxels at {_dims(spacing)} mm, T = 1, `configs/default.yaml` model (random "
        "weights). A: `radmtl infer` (read, preprocess, predict, resample, write). B: MONAI's "
        "`sliding_window_inference` of the same model on the same preprocessed tensor.")
    section.compare("wall time: radmtl infer (A) vs bare sliding window (B)", "s",
                    result["infer_s"], result["sliding_window_s"])
    for stage, seconds in result["stages_s"].items():
        section.figure(f"radmtl infer stage: {stage}", "s", seconds)
    return section


def mc_section(sizes: Sizes, device: torch.device, overrides: tuple[str, ...]) -> Section:
    from bench_mc import measure_mc_ratio

    t = sizes.mc_samples
    print(f"[2] MC dropout T = {t} vs {t} plain forward passes, one window, {device}", flush=True)
    result = measure_mc_ratio(samples=t, device=str(device), overrides=overrides, repeats=sizes.repeats)
    section = Section(
        f"2. MC dropout T = {t} vs {t} plain forward passes",
        f"One {_dims(result['window'])} window, default model (random weights). A: `mc_forward` with T = {t} "
        f"(what precedes the dropout runs once, what follows it T times), per dropout placement "
        f"(`model.mc_dropout_at`; the configured one is `{result['placement']}`). B: {t} plain eval-mode "
        "forward passes. Each round times B and every A back to back, so the paired ratio (median over "
        "the rounds) is less exposed to a busy machine than the ratio of the medians.")
    section.compare(f"wall time: MC dropout T = {t}, `{result['placement']}` (A) vs {t} forward passes (B)",
                    "s", result["mc_s"], result["full_passes_s"])
    for name, placement in result["placements"].items():
        if name != result["placement"]:
            section.compare(f"wall time: MC dropout T = {t}, `{name}` (A) vs {t} forward passes (B)", "s",
                            placement["mc_s"], result["full_passes_s"])
    for name, placement in result["placements"].items():
        section.figure(f"paired ratio A / B, median over rounds: `{name}`", "", placement["ratio"])
    return section


# --- section 3 and 4: networks and training steps ---------------------------------------------


def _configs(overrides: tuple[str, ...]) -> dict[str, object]:
    """The default config, and its two single-task variants (load_config derives each model's heads)."""
    return {name: load_config(DEFAULT_CONFIG, [*overrides, *extra]) for name, extra in
            (("multi-task", ()), ("sct only", ("loss.tasks=[sct]",)), ("seg only", ("loss.tasks=[seg]",)))}


def synthetic_batch(cfg, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch of the configured patch size: random MR, CT (scaled HU), body mask and labels."""
    g = torch.Generator().manual_seed(0)
    shape = (batch_size, 1, *cfg.data.patch_size)
    batch = {"mr": torch.randn(shape, generator=g), "ct": 0.3 * torch.randn(shape, generator=g),
             "mask": (torch.rand(shape, generator=g) > 0.2).float(),
             "labels": torch.randint(0, cfg.model.num_classes, shape, generator=g)}
    return {k: v.to(device) for k, v in batch.items()}


def real_step(cfg, batch, device, amp_dtype, per_task: bool = True):
    """One step as ``radmtl train`` takes it: MultiTaskLoss, AdamW groups, per-task gradient passes.

    ``per_task=False`` keeps the real loss and optimiser but back-propagates the total once, so the
    difference from the real step is the cost of the per-task passes alone.
    """
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device).train()
    loss_fn = MultiTaskLoss(cfg.loss).to(device)
    groups = parameter_groups(model, loss_fn, cfg.train.weight_decay, cfg.train.log_var_lr)
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def step() -> None:
        terms, total, _ = forward_losses(model, loss_fn, batch, amp_dtype)
        if per_task:
            optimise(terms, model, loss_fn, optimizer, scaler, cfg.train)
            return
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()

    return model, step


def bare_step(cfg, batch, device, amp_dtype):
    """The textbook loop: plain MSE + CE, one backward, one AdamW over all parameters."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            outputs = model(batch["mr"])
        loss = F.mse_loss(outputs["sct"].float(), batch["ct"]) + F.cross_entropy(
            outputs["seg_logits"].float(), batch["labels"][:, 0])
        loss.backward()
        optimizer.step()

    return step


def multitask_section(sizes: Sizes, device, amp_dtype, overrides) -> Section:
    print(f"[3] multi-task vs two single-task networks, {device}", flush=True)
    cfgs = _configs(overrides)
    cfg = cfgs["multi-task"]
    window = synthetic_batch(cfg, 1, device)["mr"]
    batch = synthetic_batch(cfg, cfg.train.batch_size, device)
    models, steps = {}, {}
    for name, task_cfg in cfgs.items():
        models[name], steps[name] = real_step(task_cfg, batch, device, amp_dtype)
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    step = timed(steps, device, sizes.repeats)
    for model in models.values():
        model.eval()
    with torch.inference_mode(), _autocast(device, amp_dtype):
        forward = timed({name: (lambda m=model: m(window)) for name, model in models.items()}, device,
                        sizes.repeats)
    section = Section(
        "3. One multi-task network vs two single-task networks",
        f"A: the shared-encoder network with both tasks. B: the sum of the sCT-only and the segmentation-only "
        f"networks (`loss.tasks=[sct]` and `[seg]`, the same channels). Forward: one {_dims(cfg.data.patch_size)} "
        f"window, eval mode. Training step: the real step (`forward_losses` + `optimise`), batch "
        f"{cfg.train.batch_size}.")
    pair = lambda d: d["sct only"] + d["seg only"]  # noqa: E731
    section.compare("parameters: multi-task (A) vs sCT-only + seg-only (B)", "count", params["multi-task"],
                    pair(params))
    section.compare("forward per window: multi-task (A) vs sCT-only + seg-only (B)", "ms",
                    1e3 * forward["multi-task"], 1e3 * pair(forward))
    section.compare("training step: multi-task (A) vs sCT-only + seg-only (B)", "ms", 1e3 * step["multi-task"],
                    1e3 * pair(step))
    for name in ("sct only", "seg only"):
        section.figure(f"{name}: parameters", "count", params[name])
        section.figure(f"{name}: forward per window", "ms", 1e3 * forward[name])
        section.figure(f"{name}: training step", "ms", 1e3 * step[name])
    return section


def training_section(sizes: Sizes, device, amp_dtype, overrides) -> Section:
    print(f"[4] training patches/s: real step vs bare loop, {device}", flush=True)
    cfg = _configs(overrides)["multi-task"]
    batch = synthetic_batch(cfg, cfg.train.batch_size, device)
    seconds = timed({"real": real_step(cfg, batch, device, amp_dtype)[1],
                     "single": real_step(cfg, batch, device, amp_dtype, per_task=False)[1],
                     "bare": bare_step(cfg, batch, device, amp_dtype)}, device, sizes.repeats)
    real, single, bare = seconds["real"], seconds["single"], seconds["bare"]
    n = cfg.train.batch_size
    section = Section(
        "4. Training throughput: the real step vs a bare loop",
        f"Same multi-task model and synthetic batch ({n} patches of {_dims(cfg.data.patch_size)}). Real: "
        "`forward_losses` + `optimise` (MultiTaskLoss, per-task gradient passes and clipping, AdamW "
        "parameter groups). One backward: the real loss and optimiser, the total back-propagated once. "
        "Bare: MSE + CE, `loss.backward()`, `optimizer.step()`.")
    section.compare("patches/s: real step (A) vs bare loop (B)", "patches/s", n / real, n / bare)
    section.compare("step time: real step (A) vs real loss with one backward (B)", "ms", 1e3 * real, 1e3 * single)
    section.compare("step time: real loss with one backward (A) vs bare loop (B)", "ms", 1e3 * single, 1e3 * bare)
    return section


# --- section 5: peak memory of radmtl infer, in a child process --------------------------------


def _write_inputs(folder: Path, sizes: Sizes) -> tuple[Path, Path]:
    """A synthetic MR (ellipse body, smooth pattern, noise) and a random-weight default checkpoint."""
    import numpy as np

    from radmtl.data.io import write_volume
    from radmtl.data.phantom import PHANTOM_LABELS
    from radmtl.nn.checkpoint import make_payload, save_checkpoint

    shape = sizes.memory_shape
    x = (np.arange(shape[0], dtype=np.float32) - shape[0] / 2) / (0.42 * shape[0])
    y = (np.arange(shape[1], dtype=np.float32) - shape[1] / 2) / (0.32 * shape[1])
    body = x[:, None] ** 2 + y[None, :] ** 2
    rng = np.random.default_rng(0)
    mr = np.empty(shape, np.float32)
    for z in range(shape[2]):  # slice by slice: no float64 temporary of the whole volume
        mr[:, :, z] = np.where(body < 1, 600 + 200 * np.cos(6 * body + z / 20), 5) + rng.normal(0, 10, shape[:2])
    mr_path = write_volume(mr, np.diag([*sizes.memory_spacing, 1.0]), folder / "mr.nii", np.float32)
    cfg = load_config(DEFAULT_CONFIG, list(sizes.overrides))
    torch.manual_seed(0)
    payload = make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS), model=build_model(cfg.model), with_rng=False)
    return mr_path, save_checkpoint(folder / "model.pt", payload)


def _peak_rss_mib() -> float:
    """This process's own peak RSS. Linux carries the parent's RSS at fork into the child's
    ``ru_maxrss`` across exec (a child of a 1.4 GiB parent reports >= 1.4 GiB), so VmHWM, the peak
    of this process's own address space, is read first; ``ru_maxrss`` only where /proc is absent."""
    status = Path("/proc/self/status")
    if status.exists():
        return next(int(line.split()[1]) for line in status.read_text().splitlines()
                    if line.startswith("VmHWM:")) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(checkpoint: str, mr: str, out: str, device: str, model_only: bool) -> None:
    """Child process: ``radmtl infer`` (or only loading the model); its own peaks and stage times as JSON."""
    from radmtl.inference.infer import PROVENANCE, InferOptions, load_model, run_inference

    start = time.perf_counter()
    stages = {}
    if model_only:
        load_model(checkpoint, None, device)
    else:
        if error := run_inference(checkpoint, mr, out, InferOptions(mc_samples=1, device=device))[0].error:
            raise SystemExit(error)
        stages = json.loads(next(Path(out).rglob(PROVENANCE)).read_text())["timings_s"]
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    print(json.dumps({"wall_s": time.perf_counter() - start, "gpu_peak_mb": gpu, "stages_s": stages,
                      "peak_rss_mb": _peak_rss_mib()}))


def _run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_section(sizes: Sizes, device: torch.device, folder: Path) -> Section:
    shape, spacing = sizes.memory_shape, sizes.memory_spacing
    print(f"[5] peak memory of radmtl infer, MR {shape} at {spacing} mm, T = 1, {device}", flush=True)
    if not (folder / "model.pt").exists():
        _write_inputs(folder, sizes)
    common = [str(folder / "model.pt"), str(folder / "mr.nii"), str(folder / f"out-{device.type}"), device.type]
    infer = _run_child([*common, "infer"])
    loaded = _run_child([*common, "model-only"])
    section = Section(
        "5. Peak memory of `radmtl infer` on a large MR",
        f"MR {_dims(shape)} voxels at {_dims(spacing)} mm, T = 1, default model, each run in its own child "
        "process (its VmHWM; see `_peak_rss_mib` for why not `ru_maxrss`). A: `radmtl infer` end to end. B: a child that only imports "
        "radmtl and loads the model, the floor every run pays.")
    section.compare("peak RSS: radmtl infer (A) vs loading the model only (B)", "MiB", infer["peak_rss_mb"],
                    loaded["peak_rss_mb"])
    section.figure("MR as float32 (for scale)", "MiB", math.prod(shape) * 4 / 2**20)
    section.figure("radmtl infer wall time in the child", "s", infer["wall_s"])
    for stage, seconds in infer["stages_s"].items():
        section.figure(f"radmtl infer stage (provenance.json): {stage}", "s", seconds)
    if infer["gpu_peak_mb"] is not None:
        section.figure("radmtl infer peak GPU memory (`max_memory_allocated`)", "MiB", infer["gpu_peak_mb"])
    return section


# --- the report ---------------------------------------------------------------------------------


def _dims(values) -> str:
    return "×".join(f"{v:g}" for v in values)


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def machine_lines(command: str) -> list[str]:
    import monai

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return ["| | |", "| --- | --- |", f"| CPU | {cpu} |",
            f"| cores | {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable, torch threads "
            f"{torch.get_num_threads()}) |",
            f"| load average at start (1 min) | {os.getloadavg()[0]:.2f} |",
            f"| GPU | {gpu} |", f"| torch / MONAI | {torch.__version__} / {monai.__version__} |",
            f"| Python | {platform.python_version()} on {platform.platform()} |",
            f"| date (UTC) | {datetime.now(timezone.utc).isoformat(timespec='seconds')} |",
            f"| command | `{command}` |"]


def run_all(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> list[Section]:
    overrides = sizes.overrides
    makers = [lambda: infer_section(sizes, device), lambda: mc_section(sizes, device, overrides),
              lambda: multitask_section(sizes, device, amp_dtype, overrides),
              lambda: training_section(sizes, device, amp_dtype, overrides),
              lambda: memory_section(sizes, device, folder)]
    sections = []
    for make in makers:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        section = make()
        # Zero where the section ran its network in a child process, which reports its own peak.
        if device.type == "cuda" and (peak := torch.cuda.max_memory_allocated(device)) > 0:
            section.figure("peak GPU memory in this process (`max_memory_allocated`)", "MiB", peak / 2**20)
        sections.append(section)
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test (needs --out)")
    parser.add_argument("--out", type=Path, help="markdown to write (default docs/benchmarks.md)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The sibling benchmarks (bench_infer, bench_mc) are modules beside this file, not a package.
    sys.path.insert(0, str(SCRIPTS))
    if args.child:
        checkpoint, mr, out, device, what = args.child
        _child(checkpoint, mr, out, device, model_only=what == "model-only")
        return
    if args.quick and args.out is None:
        parser.error("--quick needs --out: its tiny sizes must not overwrite docs/benchmarks.md")
    out = args.out or ROOT / "docs" / "benchmarks.md"
    command = shlex.join([_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]])
    sizes = QUICK if args.quick else FULL
    header = machine_lines(command)  # before the run, so the load average is the machine's own
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radmtl-bench-") as tmp:
        sections = run_all(sizes, torch.device("cpu"), None, Path(tmp))
        if torch.cuda.is_available():
            cuda = torch.device("cuda")
            print(f"CUDA: {torch.cuda.get_device_name(0)}, bf16 autocast", flush=True)
            for section in run_all(sizes, cuda, torch.bfloat16, Path(tmp)):
                section.title = f"6. CUDA ({torch.cuda.get_device_name(0)}, bf16 AMP): {section.title}"
                sections.append(section)
        else:
            sections.append(Section("6. CUDA", "No GPU was available on the machine that ran it "
                                    "(`torch.cuda.is_available()` was False), so there are no CUDA figures."))
    total = time.perf_counter() - start
    text = "\n".join(["# radmtl benchmarks", "",
                      f"Written by `scripts/bench.py`{' (--quick: tiny sizes, not representative)' if args.quick else ''}"
                      f" in {total:.0f} s. Every figure below was measured in that run; A / B is computed from "
                      "the unrounded times. Times are medians over rounds after one warm-up round; each round runs the things compared back to back.", "",
                      *header, "", *(s.markdown() for s in sections)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
