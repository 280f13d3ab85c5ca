"""Training under torchrun: two Gloo processes on the CPU train one model (training/distributed.py).

Each test starts ``torchrun --standalone --nproc_per_node 2`` on a small driver script that calls the
real ``radmtl`` CLI; the driver only records what the test needs to see from inside each rank (the
network it trained and its loss log-variances) or injects a failure on one rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from radmtl.config import load_config
from radmtl.nn.checkpoint import BEST, LATEST, load_checkpoint
from radmtl.training.schedule import epoch_loader
from tiny_config import TINY as TRAIN_TINY
from train_runs import wait_for_epoch

TINY = TRAIN_TINY + ["train.batch_size=1"]  # one case per process and step

DRIVER = textwrap.dedent('''
    """Run `radmtl` as torchrun's worker; dump this rank's trained network and log-variances."""
    import os, sys
    import torch
    import radmtl.training.step as step
    import radmtl.training.train as train
    seen = {}
    real_wrap, real_average = train.wrap_model, step.average_gradients

    def wrap_model(model, ctx, device):
        seen["model"] = model
        return real_wrap(model, ctx, device)

    def average_gradients(model, log_vars):
        seen["log_vars"] = log_vars
        seen["steps"] = seen.get("steps", 0) + 1
        fail = os.environ.get("FAIL_RANK_1_AT_STEP")
        if fail and os.environ["RANK"] == "1" and seen["steps"] == int(fail):
            raise RuntimeError("injected failure on rank 1")
        return real_average(model, log_vars)

    train.wrap_model, step.average_gradients = wrap_model, average_gradients
    from radmtl.cli import main
    code = main(sys.argv[1:])
    if code == 0 and os.environ.get("DUMP_DIR"):
        torch.save({"model": seen["model"].state_dict(), "log_vars": [p.detach() for p in seen["log_vars"]]},
                   os.path.join(os.environ["DUMP_DIR"], f"rank{os.environ['RANK']}.pt"))
    sys.exit(code)
''')

GRAD_CHECK = textwrap.dedent('''
    """The real optimise() under DDP gives every rank the gradient of the ranks' mean loss: under the
    default global clip the mean of the ranks' gradients clipped as one (on a logging step, which
    measures each task, and on a plain step, one backward); under per_task the mean of each rank's
    per-task clipped gradients."""
    import copy, dataclasses, math, sys
    import torch
    import torch.distributed as dist
    from radmtl.config import load_config
    from radmtl.nn.losses import MultiTaskLoss, parameter_groups
    from radmtl.nn.model import build_model
    from radmtl.training.distributed import init_distributed, shutdown, wrap_model
    from radmtl.training.step import forward_losses, optimise

    ctx, device = init_distributed("cpu")
    cfg = load_config(None, ["model.channels=[4, 8]", "model.strides=[2]", "model.dropout=0.0",
                             "train.grad_clip=0.05"])
    assert cfg.train.grad_clip_mode == "global"
    torch.manual_seed(0)
    model0, loss0 = build_model(cfg.model), MultiTaskLoss(cfg.loss)
    torch.manual_seed(100 + ctx.rank)  # each rank its own batch
    shape = (2, 1, 16, 16, 16)
    batch = {"mr": torch.randn(shape), "ct": torch.randn(shape) * 0.3, "labels": torch.randint(0, 6, shape),
             "mask": torch.ones(shape)}
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    n_net = len(list(model0.parameters()))

    def step(train_cfg, measure, ddp):
        net, loss = copy.deepcopy(model0), copy.deepcopy(loss0)
        wrapped = wrap_model(net, ctx, device) if ddp else net
        opt = torch.optim.AdamW(parameter_groups(net, loss, 0.0, 0.0), lr=0.0)
        terms, _, _ = forward_losses(wrapped, loss, batch, None)
        optimise(terms, wrapped, loss, opt, scaler, train_cfg, measure=measure)
        return [p.grad.clone() for p in list(net.parameters()) + list(loss.parameters())]

    def mean_over_ranks(grads):
        out = []
        for g in grads:
            parts = [torch.empty_like(g) for _ in range(ctx.world_size)]
            dist.all_gather(parts, g)
            out.append(torch.stack(parts).mean(0))
        return out

    ok = True
    for mode, measure in (("global", True), ("global", False), ("per_task", True)):
        train_cfg = dataclasses.replace(cfg.train, grad_clip_mode=mode)
        if mode == "global":  # clip(mean of unclipped): the network's part only, log-variances never
            mean = mean_over_ranks(step(dataclasses.replace(train_cfg, grad_clip=1e9), True, False))
            norm = math.sqrt(sum(float(g.square().sum()) for g in mean[:n_net]))
            factor = min(1.0, train_cfg.grad_clip / (norm + 1e-6))
            assert factor < 0.5  # the clip acts, so clipping before averaging would give another answer
            expected = [g * factor for g in mean[:n_net]] + mean[n_net:]
        else:
            expected = mean_over_ranks(step(train_cfg, True, False))
        local = step(train_cfg, measure, False)  # this rank alone, no DDP
        averaged = step(train_cfg, measure, True)
        err = max(float((a - e).abs().max()) for a, e in zip(averaged, expected))
        differ = max(float((a - e).abs().max()) for a, e in zip(local, expected))
        print(f"rank {ctx.rank} {mode} measure={measure}: max |averaged - expected| = {err:.3g}; "
              f"local vs expected {differ:.3g}", flush=True)
        ok = ok and err < 1e-6 and differ > 1e-4
    shutdown(ctx)
    sys.exit(0 if ok else 1)
''')


def _torchrun(script: Path, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", "2", "--max_restarts", "0", str(script), *args]
    full_env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _train_args(data: Path, out: Path, db: str, epochs: int) -> list[str]:
    sets = [a for s in TINY + [f"train.epochs={epochs}"] for a in ("--set", s)]
    return ["train", "--data", str(data), "--out", str(out), "--tracking-uri", db, "--experiment", "ddp",
            "--device", "cpu", "--no-progress", *sets]


def test_ranks_draw_disjoint_shares_of_one_draw_with_equal_step_counts(phantom_data):
    cfg = load_config(None, TINY)
    for steps in (2, 0):  # iterations with replacement, and one pass over the cases
        cfg_steps = load_config(None, TINY + [f"train.steps_per_epoch={steps}"])
        dataset = list(range(5))
        shares = [list(epoch_loader(dataset, cfg_steps, 123, rank, 2).sampler) for rank in (0, 1)]
        assert len(shares[0]) == len(shares[1]) > 0  # equal steps on every rank, or DDP would hang
        again = [list(epoch_loader(dataset, cfg_steps, 123, rank, 2).sampler) for rank in (0, 1)]
        assert again == shares  # the same epoch after a resume
        if steps == 0:
            assert set(shares[0]) | set(shares[1]) == set(dataset)  # the pass covers every case
    assert cfg.train.batch_size == 1


@pytest.mark.slow
def test_ddp_step_gives_every_rank_the_gradient_of_the_mean_loss(tmp_path):
    proc = _torchrun(_script(tmp_path, "grad_check.py", GRAD_CHECK), [], tmp_path)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert output.count("max |averaged - expected|") == 6, output  # 2 ranks × 3 (mode, measure)


@pytest.mark.slow
def test_two_processes_train_one_model_with_one_run_and_resume_after_kill(phantom_data, tmp_path):
    import mlflow

    driver = _script(tmp_path, "driver.py", DRIVER)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dump = tmp_path / "dump"
    dump.mkdir()
    out = tmp_path / "run"
    proc = _torchrun(driver, _train_args(phantom_data, out, db, 2), tmp_path, {"DUMP_DIR": str(dump)})
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert output.count("trained 2 epochs") == 1, output  # rank 0 alone prints the summary

    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in ranks[0]["model"].items():  # one model: bit-identical on both ranks
        assert torch.equal(value, ranks[1]["model"][key]), key
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["log_vars"], ranks[1]["log_vars"]))
    assert any(float(v.abs()) > 0 for v in ranks[0]["log_vars"])  # and they did learn
    saved = load_checkpoint(out / LATEST)
    assert all(torch.equal(v, saved["model_state"][k]) for k, v in ranks[0]["model"].items())
    assert saved["world_size"] == 2 and (out / BEST).exists()
    assert sorted(p.name for p in out.glob("*.pt")) == sorted([BEST, LATEST])  # one set of checkpoints

    client = mlflow.MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1  # one MLflow run, not one per rank
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["dist.world_size"] == "2"
    for metric in ("epoch", "train_loss_total", "val_mae_hu", "patches_per_s"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert steps == [1, 2], (metric, steps)  # each epoch logged once
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum('"epoch"' in line for line in lines) == 2

    # --- killed under torchrun, then resumed under torchrun: the same run goes on -----------------
    killed_out = tmp_path / "killed"
    epochs = 6
    proc = _torchrun(driver, _train_args(phantom_data, killed_out, db, epochs), tmp_path)
    latest = killed_out / LATEST
    wait_for_epoch(proc, latest, 1)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does to the job: torchrun and its workers
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    done = load_checkpoint(latest)["epoch"]
    assert 1 <= done < epochs, output
    run_id = load_checkpoint(latest)["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED", output

    proc = _torchrun(driver, _train_args(phantom_data, killed_out, db, epochs) + ["--resume"], tmp_path)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert load_checkpoint(latest)["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 2  # the resume opened no third run
    steps = [m.step for m in client.get_metric_history(run_id, "epoch")]
    assert sorted(steps) == list(range(1, epochs + 1)), steps


@pytest.mark.slow
def test_a_failing_rank_brings_the_other_down_without_a_hang(phantom_data, tmp_path):
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = _script(tmp_path, "driver.py", DRIVER)
    proc = _torchrun(driver, _train_args(phantom_data, tmp_path / "run", db, 3), tmp_path,
                     {"FAIL_RANK_1_AT_STEP": "3"})
    output = proc.communicate(timeout=240)[0]  # a hang would end here
    assert proc.returncode != 0
    assert "injected failure on rank 1" in output
    client = mlflow.MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status in ("FAILED", "KILLED"), output  # not left RUNNING
