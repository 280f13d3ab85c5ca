"""Issue 12's benchmarks side by side in one run, written to ``docs/benchmarks.md``.

    .venv/bin/python scripts/bench.py                          # full sizes → docs/benchmarks.md (minutes)
    .venv/bin/python scripts/bench.py --quick --out /tmp/b.md  # tiny sizes, a smoke test

Sections 1-6 are the ``*_section`` functions (their docstrings say what each compares); 7 repeats them
on CUDA with bf16 AMP where a GPU is present. Every figure written is measured by this run, and each
section prints its numbers as it finishes. Nothing is asserted.
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

from radmtl.config import load_config
from radmtl.nn.losses import MultiTaskLoss, parameter_groups
from radmtl.nn.model import build_model
from radmtl.training.step import forward_losses, optimise

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


@dataclass(frozen=True)
class Sizes:
    """What one run measures; ``overrides`` shrink the default model for ``--quick`` only."""

    infer_mr: tuple[tuple[int, int, int], tuple[float, float, float]]  # MR shape, spacing (mm)
    memory_mr: tuple[tuple[int, int, int], tuple[float, float, float]]
    mc_samples: int
    repeats: int
    # Section 6: the cohort's MR shapes (one case each) at one spacing (mm).
    cohort: tuple[tuple[tuple[int, int, int], ...], tuple[float, float, float]] = ((), (1.0, 1.0, 1.0))
    overrides: tuple[str, ...] = ()


# Eight pelvis-sized MRs of four sizes (largest 320×320×96 at 1.5×1.5×2.5 mm): the cases of section 6.
COHORT_SHAPES = ((320, 320, 96), (224, 224, 64), (288, 288, 80), (256, 256, 72)) * 2
FULL = Sizes(((400, 400, 120), (1.0, 1.0, 2.5)), ((512, 512, 200), (0.8, 0.8, 2.5)), mc_samples=20, repeats=3,
             cohort=(COHORT_SHAPES, (1.5, 1.5, 2.5)))
QUICK = Sizes(((40, 40, 24), (2.0, 2.0, 2.5)), ((48, 48, 24), (2.0, 2.0, 2.5)), mc_samples=3, repeats=1,
              cohort=(((40, 40, 24), (32, 32, 20), (36, 36, 24), (28, 28, 16)), (2.0, 2.0, 2.5)),
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
        print(f"  {measure}: {_num(value)} {unit}".rstrip(), flush=True)

    def stages(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            if seconds > 0:  # provenance.json rounds to ms: a wait that overlapped entirely reads 0, no cost
                self.figure(f"radmtl infer stage: {stage.removesuffix('_s')}", "s", seconds)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.text, ""]
        if self.rows:
            lines += ["| measure | unit | A | B | A / B |", "| --- | --- | ---: | ---: | ---: |", *(
                f"| {m} | {u} | {_num(a)} | {_num(b)} | {a / b:.3f} |" for m, u, a, b in self.rows), ""]
        if self.figures:
            lines += ["| measure | unit | value |", "| --- | --- | ---: |",
                      *(f"| {m} | {u} | {_num(v)} |" for m, u, v in self.figures), ""]
        return "\n".join(lines)


def _num(value: float) -> str:
    """At least four significant digits: A / B recomputed from the printed A and B agrees to ~0.1 %."""
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def timed(fns: dict[str, object], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per function over ``repeats`` rounds after a warm-up round. Each round calls every
    function once, back to back, so a burst of load on a shared machine hits the things compared alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


# Section 1's variants of radmtl infer: the first is the headline (P1) and gives the stage times.
INFER_VARIANTS = {
    "`.nii.gz` outputs": {"output_format": "nii.gz"},
    "`.nii` outputs": {"output_format": "nii"},
    "`.nii.gz`, `--no-review`": {"output_format": "nii.gz", "review": False},
}


def infer_section(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> Section:
    """[1] radmtl infer end to end vs MONAI's bare sliding window, with stage times."""
    from bench_infer import measure_infer_ratio

    shape, spacing = sizes.infer_mr
    result = measure_infer_ratio(shape, spacing, mc_samples=1, device=device.type, overrides=sizes.overrides,
                                 repeats=sizes.repeats, variants=INFER_VARIANTS)
    first = next(iter(INFER_VARIANTS))
    section = Section(
        "1. `radmtl infer` end to end vs MONAI's bare sliding window",
        f"MR {_dims(shape)} voxels at {_dims(spacing)} mm (network grid {_dims(result['network_grid'])} at "
        f"the model's spacing), T = 1, one case, `configs/default.yaml` model with random weights "
        "(`scripts/bench_infer.py`). A: `radmtl infer` end to end (read, preprocess, predict, resample, write, "
        "the per-case review, publish), in each variant below. B: MONAI's `sliding_window_inference` of the "
        "same model on the same preprocessed tensor (same window, overlap, batch and Gaussian mode). Each "
        "round runs every variant of A, then B, in one process; the paired ratio is each variant's median over "
        f"the rounds of A / that round's B. The stage times are those of the median run of A with {first}, "
        "from its `provenance.json`.")
    for name, variant in result["variants"].items():
        section.compare(f"wall time: radmtl infer, {name} (A) vs bare sliding window (B)", "s", variant["infer_s"],
                        variant["sliding_window_s"])
    for name, variant in result["variants"].items():
        section.figure(f"paired ratio A / B, median over rounds: {name}", "ratio", variant["ratio"])
    section.stages(result["stages_s"])
    return section


def mc_section(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> Section:
    """[2] MC dropout with T samples vs T plain forward passes on one window."""
    from bench_mc import measure_mc_ratio

    t = sizes.mc_samples
    result = measure_mc_ratio(samples=t, device=device.type, overrides=sizes.overrides, repeats=sizes.repeats)
    section = Section(
        f"2. MC dropout T = {t} vs {t} plain forward passes",
        f"One {_dims(result['window'])} window, default model (random weights). A: `mc_forward` with T = {t} "
        f"(what precedes the dropout runs once, what follows it T times), per dropout placement "
        f"(`model.mc_dropout_at`; the configured one is `{result['placement']}`). B: {t} plain eval-mode "
        "forward passes. Each round times B and every A back to back, so the paired ratio (median over "
        "the rounds) is less exposed to a busy machine than the ratio of the medians.")
    for name, placement in result["placements"].items():  # the configured placement first
        section.compare(f"wall time: MC dropout T = {t}, `{name}` (A) vs {t} forward passes (B)", "s",
                        placement["mc_s"], result["full_passes_s"])
        section.figure(f"paired ratio A / B, median over rounds: `{name}`", "ratio", placement["ratio"])
    return section


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


def make_step(cfg, batch, device, amp_dtype, mode: str = "real"):
    """A fresh model and one optimiser step on ``batch``: (model, step). ``real``: as ``radmtl train``
    takes it on a step that logs nothing (MultiTaskLoss, AdamW parameter groups, ``optimise`` with the
    config's clipping). ``logging``: the same on a logging step, where ``optimise`` also measures each
    task's gradient (one backward pass per task), one step in ``train.log_every``. ``bare``: plain
    MSE + CE, one backward, one AdamW over all parameters."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device).train()
    loss_fn = MultiTaskLoss(cfg.loss).to(device)
    params = (model.parameters() if mode == "bare" else
              parameter_groups(model, loss_fn, cfg.train.weight_decay, cfg.train.log_var_lr))
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def step() -> None:
        if mode in ("real", "logging"):
            optimise(forward_losses(model, loss_fn, batch, amp_dtype)[0], model, loss_fn, optimizer, scaler,
                     cfg.train, measure=mode == "logging")
            return
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            out = model(batch["mr"])
        total = F.mse_loss(out["sct"].float(), batch["ct"]) + F.cross_entropy(out["seg_logits"].float(),
                                                                             batch["labels"][:, 0])
        total.backward()
        optimizer.step()

    return model, step


def multitask_section(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> Section:
    """[3] One multi-task network vs two single-task ones: parameters, forward, training step."""
    cfgs = _configs(sizes.overrides)
    cfg = cfgs["multi-task"]
    window, batch = synthetic_batch(cfg, 1, device)["mr"], synthetic_batch(cfg, cfg.train.batch_size, device)
    built = {name: make_step(task_cfg, batch, device, amp_dtype) for name, task_cfg in cfgs.items()}
    models, steps = {k: v[0] for k, v in built.items()}, {k: v[1] for k, v in built.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    step = timed(steps, device, sizes.repeats)
    with torch.inference_mode(), _autocast(device, amp_dtype):
        forward = timed({name: (lambda m=model.eval(): m(window)) for name, model in models.items()}, device,
                        sizes.repeats)
    section = Section(
        "3. One multi-task network vs two single-task networks",
        f"A: the shared-encoder network with both tasks. B: the sum of the sCT-only and the segmentation-only "
        f"networks (`loss.tasks=[sct]` and `[seg]`, the same channels). Forward: one {_dims(cfg.data.patch_size)} "
        f"window, eval mode. Training step: the real step (`forward_losses` + `optimise`), batch "
        f"{cfg.train.batch_size}.")
    measures = (("parameters", "count", params, 1), ("forward per window", "ms", forward, 1e3),
                ("training step", "ms", step, 1e3))
    for what, unit, values, scale in measures:
        section.compare(f"{what}: multi-task (A) vs sCT-only + seg-only (B)", unit, scale * values["multi-task"],
                        scale * (values["sct only"] + values["seg only"]))
    for name in ("sct only", "seg only"):
        for what, unit, values, scale in measures:
            section.figure(f"{name}: {what}", unit, scale * values[name])
    return section


def training_section(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> Section:
    """[4] Training patches/s: the real step vs a bare loop."""
    cfg = _configs(sizes.overrides)["multi-task"]
    batch = synthetic_batch(cfg, cfg.train.batch_size, device)
    modes = ("real", "logging", "bare")
    real, logging_step, bare = timed({mode: make_step(cfg, batch, device, amp_dtype, mode)[1] for mode in modes},
                                     device, sizes.repeats).values()
    n, every = cfg.train.batch_size, cfg.train.log_every
    section = Section(
        "4. Training throughput: the real step vs a bare loop",
        f"Same multi-task model and synthetic batch ({n} patches of {_dims(cfg.data.patch_size)}). Real: "
        f"`forward_losses` + `optimise` as `radmtl train` runs it (MultiTaskLoss, AdamW parameter groups, "
        f"`train.grad_clip_mode: {cfg.train.grad_clip_mode}`) on a step that logs nothing. Logging step: the "
        f"same, also measuring each task's encoder gradient (one backward pass per task), one step in "
        f"`train.log_every` = {every}. Bare: MSE + CE, `loss.backward()`, `optimizer.step()`.")
    section.compare("patches/s: real step (A) vs bare loop (B)", "patches/s", n / real, n / bare)
    average = ((every - 1) * real + logging_step) / every
    section.compare(f"patches/s: real steps with one logging step in {every} (A) vs bare loop (B)", "patches/s",
                    n / average, n / bare)
    section.compare("step time: logging step (A) vs real step (B)", "ms", 1e3 * logging_step, 1e3 * real)
    return section


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

    start, stages = time.perf_counter(), {}
    if model_only:
        load_model(checkpoint, None, device)
    elif error := run_inference(checkpoint, mr, out, InferOptions(mc_samples=1, device=device))[0].error:
        raise SystemExit(error)
    else:
        stages = json.loads(next(Path(out).rglob(PROVENANCE)).read_text())["timings_s"]
    print(json.dumps({"wall_s": time.perf_counter() - start, "stages_s": stages, "peak_rss_mb": _peak_rss_mib(),
                      "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}))


def _run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_section(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> Section:
    """[5] Peak RSS of radmtl infer on a large MR, in child processes."""
    from bench_infer import make_inputs

    shape, spacing = sizes.memory_mr
    if not (folder / "model.pt").exists():  # the CUDA pass reuses the CPU pass's MR and model
        make_inputs(folder, shape, spacing, sizes.overrides)
    common = [str(folder / "model.pt"), str(folder / "mr.nii"), str(folder / f"out-{device.type}"), device.type]
    infer = _run_child([*common, "infer"])
    loaded = _run_child([*common, "model-only"])
    section = Section(
        "5. Peak memory of `radmtl infer` on a large MR",
        f"MR {_dims(shape)} voxels at {_dims(spacing)} mm, T = 1, default model, each run in a child process of "
        "its own; peak RSS is the child's VmHWM (`ru_maxrss` would include this parent's RSS at the fork). "
        "A: `radmtl infer` end to end. B: a child that only imports radmtl and loads the model, the floor "
        "every run pays.")
    section.compare("peak RSS: radmtl infer (A) vs loading the model only (B)", "MiB", infer["peak_rss_mb"],
                    loaded["peak_rss_mb"])
    section.figure("MR as float32 (for scale)", "MiB", math.prod(shape) * 4 / 2**20)
    section.figure("radmtl infer wall time in the child", "s", infer["wall_s"])
    section.stages(infer["stages_s"])
    if infer["gpu_peak_mb"] is not None:
        section.figure("radmtl infer peak GPU memory (`max_memory_allocated`)", "MiB", infer["gpu_peak_mb"])
    return section


def _infer_cohort(model: Path, inputs: Path, out: Path, workers: int, output_format: str, device: str) -> float:
    """Wall seconds of ``radmtl infer`` over the folder ``inputs`` in a process of its own (imports and
    model loading included: a cohort run pays them once per process)."""
    command = [sys.executable, "-m", "radmtl", "infer", "--model", str(model), "--input", str(inputs), "--output",
               str(out), "--workers", str(workers), "--output-format", output_format, "--device", device,
               "--mc-samples", "1", "--no-progress"]  # T = 1 as section 1: writing weighs most against the network
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def cohort_section(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> Section:
    """[6] A cohort of cases: one process vs two (--workers 2), .nii vs .nii.gz outputs."""
    from bench_infer import make_inputs, make_mr

    shapes, spacing = sizes.cohort
    work = folder / f"cohort-{device.type}"
    inputs = work / "mr"
    inputs.mkdir(parents=True, exist_ok=True)
    _, model = make_inputs(work, shapes[0], spacing, sizes.overrides)
    for number, shape in enumerate(shapes):
        make_mr(inputs / f"case_{number:02d}.nii", shape, spacing, seed=number)
    n = len(shapes)
    # One run each: a run is a minute or more of eight cases, which averages a busy moment out better than
    # the repeats of section 1 would (each costs a minute more).
    seconds = {(workers, fmt): _infer_cohort(model, inputs, work / f"out-{workers}-{fmt}", workers, fmt, device.type)
               for workers in (1, 2) for fmt in ("nii.gz", "nii")}
    rate = {key: 60.0 * n / value for key, value in seconds.items()}
    section = Section(
        "6. A cohort: one process vs two, `.nii` vs `.nii.gz`",
        f"{n} MRs of {len(set(shapes))} sizes ({', '.join(_dims(s) for s in dict.fromkeys(shapes))} voxels at "
        f"{_dims(spacing)} mm), the default model with random weights, T = 1, the review on. Each run is "
        "`radmtl infer --input FOLDER --workers W --output-format F` in a fresh process and output folder, "
        "timed from start to exit (Python and torch imports and model loading included, once per process). "
        "`--workers 2`: two processes (Gloo), each with half the cores for torch, the cases dealt largest first. "
        "One run of each, in the order of the rows below.")
    section.compare("cases/min: 2 processes (A) vs 1 (B), `.nii.gz`", "cases/min", rate[2, "nii.gz"], rate[1, "nii.gz"])
    section.compare("cases/min: 2 processes (A) vs 1 (B), `.nii`", "cases/min", rate[2, "nii"], rate[1, "nii"])
    section.compare("cases/min: `.nii.gz` (A) vs `.nii` (B), 1 process", "cases/min", rate[1, "nii.gz"], rate[1, "nii"])
    section.compare("cases/min: `.nii.gz` (A) vs `.nii` (B), 2 processes", "cases/min", rate[2, "nii.gz"],
                    rate[2, "nii"])
    for (workers, fmt), value in seconds.items():
        section.figure(f"wall time, {workers} process{'es' if workers > 1 else ''}, `.{fmt}`", "s", value)
    return section


def _dims(values) -> str:
    return "×".join(f"{v:g}" for v in values)


def _relative(path: str) -> str:
    return os.path.relpath(path) if Path(path).absolute().is_relative_to(Path.cwd()) else path


def machine_lines(command: str) -> list[str]:
    import monai

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    devices = f"cpu, cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu (no GPU)"
    return ["| | |", "| --- | --- |", f"| CPU | {cpu} |",
            f"| cores | {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable; torch threads "
            f"{torch.get_num_threads()}) |", f"| devices measured | {devices} |",
            f"| torch / MONAI / Python | {torch.__version__} / {monai.__version__} / {platform.python_version()} "
            f"on {platform.platform()} |",
            f"| date (UTC) | {datetime.now(timezone.utc).isoformat(timespec='seconds')} |",
            f"| command | `{command}` |"]


SECTIONS = (infer_section, mc_section, multitask_section, training_section, memory_section, cohort_section)


def run_all(sizes: Sizes, device: torch.device, amp_dtype, folder: Path) -> list[Section]:
    sections = []
    for make in SECTIONS:
        print(f"{make.__doc__.rstrip('.')} ({device})", flush=True)  # progress before the long work
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        section = make(sizes, device, amp_dtype, folder)
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
    sys.path.insert(0, str(ROOT / "scripts"))
    if args.child:
        checkpoint, mr, out, device, what = args.child
        _child(checkpoint, mr, out, device, model_only=what == "model-only")
        return
    if args.quick and args.out is None:
        parser.error("--quick needs --out: its tiny sizes must not overwrite docs/benchmarks.md")
    out = args.out or ROOT / "docs" / "benchmarks.md"
    sizes = QUICK if args.quick else FULL
    header = machine_lines(shlex.join([_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]]))
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radmtl-bench-") as tmp:
        sections = run_all(sizes, torch.device("cpu"), None, Path(tmp))
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            for section in run_all(sizes, torch.device("cuda"), torch.bfloat16, Path(tmp)):
                section.title = f"7. CUDA ({name}, bf16 AMP): {section.title}"
                sections.append(section)
        else:
            sections.append(Section("7. CUDA", "No GPU was available on the machine that ran it "
                                    "(`torch.cuda.is_available()` was False), so there are no CUDA figures."))
    total = time.perf_counter() - start
    # Other work on the machine slows both sides of a ratio but rarely alike: say how busy it was.
    header.insert(-1, f"| load average (1 min) at start / end | {load_before:.2f} / {os.getloadavg()[0]:.2f} |")
    quick = " (`--quick`: tiny sizes, a smoke test, not representative)" if args.quick else ""
    text = "\n".join([
        "# radmtl benchmarks", "",
        f"Written by `scripts/bench.py`{quick} in {total:.0f} s; every figure below was measured in that run. "
        "Times are medians over rounds after one warm-up round, each round running the things compared back "
        "to back; A / B is computed from the unrounded figures.", "",
        *header, "", *(section.markdown() for section in sections)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
