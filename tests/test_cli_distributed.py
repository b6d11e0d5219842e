"""`pinlab train ... --nproc-per-node N`: the launch, its refusals, a timed-out rendezvous, an
interrupted run and its resume, through the real CLI (2 gloo processes on the CPU).

How closely 2 processes follow 1 is measured in packages/models/tests/test_models_parallel.py;
here the whole pipeline runs (validation fit, refit, files) and its validation loss curve is
held to the same 10% per epoch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pinlab_tasks.cli import run
from pinlab_tasks.distributed import worker_args

LOSS_TOLERANCE = 0.10
EPOCHS = 20
SASREC = ["--model", "sasrec", "--set", f"epochs={EPOCHS}", "--set", "eval_every=1",
          "--set", "patience=100"]  # fmt: skip
TRIAL = Path("recommender/sasrec/validation/trial-0")


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_the_launch_flags_stay_with_the_launcher() -> None:
    args = ["--threads", "1", "train", "recommender", "--data", "d", "--nproc-per-node", "2",
            "--nnodes=1", "--rdzv-timeout", "5", "--json"]  # fmt: skip
    assert worker_args(args, Path("/r")) == [
        "--threads", "1", "train", "recommender", "--data", "d", "--json", "--run", "/r",
    ]  # fmt: skip
    assert worker_args(["train", "encoder", "--run=x"], Path("/r")) == [
        "train", "encoder", "--run=x",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "bpr"], "bpr cannot train data-parallel: LearnBPR"),
        (["--model", "ease"], "ease cannot train data-parallel: it is fitted in one step"),
        (["--model", "sasrec", "--trials", "3"], "--trials searches settings"),
        (["--model", "sasrec", "--set", "dim=-1"], "bad sasrec setting"),
        (["--model", "sasrec", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint"),
        (["--model", "sasrec", "--resume"], "--resume continues a run"),
    ],
)
def test_what_cannot_run_data_parallel_exits_2_before_any_worker(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], says: str
) -> None:
    out = tmp_path / "run"
    run_flag = [] if "--resume" in args else ["--run", str(out)]
    code = run(["train", "recommender", "--data", str(tmp_path), *args, *run_flag,
                "--nproc-per-node", "2"])  # fmt: skip
    assert code == 2
    assert says in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_an_encoder_batch_that_does_not_split_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = run(["train", "encoder", "--data", str(tmp_path), "--run", str(tmp_path / "run"),
                "--set", "batch_size=63", "--nproc-per-node", "2"])  # fmt: skip
    assert code == 2
    assert "make it a multiple of 2" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_rendezvous_nobody_joins_times_out_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code = run(["train", "recommender", "--data", str(tmp_path), "--model", "sasrec",
                "--run", str(out), "--nnodes", "2", "--rdzv-endpoint",
                f"127.0.0.1:{free_port()}", "--rdzv-timeout", "2"])  # fmt: skip
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert "rendezvous" in line and "timed out after 2 s" in line and "--rdzv-timeout" in line
    assert not out.exists()


def pinlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pinlab_tasks", *args], capture_output=True, text=True,
        check=False, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data") / "tiny"
    assert pinlab("data", "synth", "--preset", "tiny", "--out", str(data)).returncode == 0
    return data


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """sasrec trained by 1 and by 2 processes: {processes: {"run", "result", "stdout"}}."""
    out: dict[int, dict[str, Any]] = {}
    for processes in (1, 2):
        root = tmp_path_factory.mktemp(f"p{processes}") / "run"
        done = pinlab("train", "recommender", "--data", str(tiny), *SASREC, "--run", str(root),
                      "--nproc-per-node", str(processes), "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        out[processes] = {"run": root, "result": json.loads(done.stdout), "stdout": done.stdout}
    return out


def losses(path: Path) -> np.ndarray:
    return np.array([json.loads(line)["train_loss"] for line in path.read_text().splitlines()])


def leftovers(root: Path) -> list[Path]:
    """Half-written files (atomic writers' hidden temporaries) and kept training states."""
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name == "training_state.pt"]


@pytest.mark.slow
def test_two_processes_train_like_one_through_the_cli(
    trained: dict[int, dict[str, Any]], tiny: Path
) -> None:
    one, two = trained[1], trained[2]
    assert two["result"]["model"] == "sasrec" and two["stdout"].count('"run_dir"') == 1
    for processes, entry in trained.items():
        record = json.loads((entry["run"] / "run.json").read_text())
        assert record["steps"][-1]["config"]["processes"] == processes
        assert (entry["run"] / "recommender/sasrec/model.pt").is_file()
        assert leftovers(entry["run"]) == []
    alone, parallel = (
        losses(one["run"] / TRIAL / "metrics.jsonl"),
        losses(two["run"] / TRIAL / "metrics.jsonl"),
    )
    assert len(alone) == len(parallel) == EPOCHS
    worst = float(np.max(np.abs(parallel - alone) / alone))
    assert worst <= LOSS_TOLERANCE, (alone, parallel)
    evaluated = pinlab("eval", "recommender", "--run", str(two["run"]), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "ndcg@10" in json.loads(evaluated.stdout)["models"]["sasrec"]


@pytest.mark.slow
def test_an_interrupted_run_leaves_whole_files_and_resumes_to_the_same_model(
    trained: dict[int, dict[str, Any]], tiny: Path, tmp_path: Path
) -> None:
    root = tmp_path / "run"
    args = ["train", "recommender", "--data", str(tiny), *SASREC, "--run", str(root),
            "--nproc-per-node", "2", "--json"]  # fmt: skip
    launcher = subprocess.Popen(
        [sys.executable, "-m", "pinlab_tasks", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = root / TRIAL / "training_state.pt"
    deadline = time.monotonic() + 600
    while not state.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(launcher.pid, signal.SIGINT)  # Ctrl-C, mid-training
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 130, err
    assert "--resume --run" in err
    assert [p for p in root.rglob("*") if ".tmp-" in p.name] == []
    assert not (root / "recommender/sasrec/model.pt").exists()

    resumed = pinlab(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert leftovers(root) == []
    # Every rank's generators were kept with the weights: the same model as never stopped.
    result, whole = json.loads(resumed.stdout), trained[2]["result"]
    np.testing.assert_allclose(
        [r["train_loss"] for r in result["history"]],
        [r["train_loss"] for r in whole["history"]],
        rtol=1e-6,
    )
    assert result["search"]["trials"][0]["curve"] == whole["search"]["trials"][0]["curve"]
