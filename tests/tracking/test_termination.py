"""SIGTERM becomes Terminated where the program is, but never inside a tracking-store call."""

from __future__ import annotations

import os
import signal
import time

import pytest

from radmtl.errors import Terminated, raise_terminated, shielded


@pytest.fixture
def sigterm_raises():
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    yield
    signal.signal(signal.SIGTERM, previous)


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the Python-level handler runs at the next bytecode boundary


def test_unshielded_sigterm_raises_where_the_program_is(sigterm_raises):
    reached = []
    with pytest.raises(Terminated):
        _sigterm_self()
        reached.append("after")
    assert reached == []


def test_shielded_sigterm_is_raised_when_the_block_ends(sigterm_raises):
    reached = []
    with pytest.raises(Terminated):
        with shielded():
            with shielded():  # nested: held until the outermost block ends
                _sigterm_self()
                reached.append("inner")
            reached.append("outer")
    assert reached == ["inner", "outer"]
    with shielded():  # and it is raised once, not again at the next block
        reached.append("later")
    assert reached == ["inner", "outer", "later"]


def test_a_sigterm_inside_a_tracking_call_lets_the_write_finish_and_the_run_be_marked_killed(
        sigterm_raises, store, tmp_path):
    # What failed in the DDP kill test: SIGTERM inside an MLflow write left that SQLite connection
    # holding the lock, so marking the run KILLED waited 20 s, failed, and the run stayed RUNNING.
    import mlflow

    from radmtl.tracking.tracker import start_tracking

    uri, _ = store
    tracker = start_tracking(uri, "exp-term", "r", tmp_path, system_metrics=False)

    def log_while_terminated(metrics, step):
        _sigterm_self()
        tracker.client.log_metric(tracker.run_id, "step_loss_total", metrics["step_loss_total"], step=step)

    with pytest.raises(Terminated):
        tracker._call("log_metrics", log_while_terminated, {"step_loss_total": 0.5}, 7)
    tracker.end("KILLED")
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.status == "KILLED"
    assert run.data.metrics == {"step_loss_total": 0.5}  # the interrupted write completed
