"""Multi-process training through the real launcher: torchrun + DDP (gloo on CPU).

The 2-process runs use FACESKETCH_DEBUG_RANK_DIGEST, a test hook that makes every
rank write digests of its networks (and the photos of its data shard) at the start
and at the end of its run, so the ranks' weights can be compared with each other
and with the checkpoint rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import cli

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- launcher plumbing (fast)
def test_launcher_passes_train_options_minus_nproc():
    from training.launch import command, train_arguments
    args, verbose = train_arguments(["-v", "train", "--data", "d", "--nproc", "2", "--out", "r",
                                     "--nproc=3", "--max-steps", "4"])
    assert args == ["--data", "d", "--out", "r", "--max-steps", "4"] and verbose
    # the options alone (as `python -m training --nproc 2 ...` passes them)
    assert train_arguments(["--out", "train", "--nproc", "2"]) == (["--out", "train"], False)
    cmd = command(2, args)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("-m", 3):] == ["-m", "training", *args]


def test_worker_takes_the_same_options_as_facesketch_train():
    import argparse
    sub = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    from training.__main__ import main as worker_main
    from training.config import TrainConfig, add_train_arguments
    worker = argparse.ArgumentParser()
    add_train_arguments(worker)
    opts = lambda p: {s for a in p._actions for s in a.option_strings}  # noqa: E731
    assert opts(sub) == opts(worker)
    assert {"--nproc", "--resume", "--ngf", "--ndf"} <= opts(worker)
    # options are declared once, in TrainConfig: every command-line field is an option
    import dataclasses
    fields = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)
              if f.metadata.get("flag", True)}
    assert fields <= opts(worker) and len(fields) >= 30
    with pytest.raises(SystemExit):
        worker_main(["--out", "x", "--arch", "nonsense"])       # choices come from the field


def test_launch_refuses_to_nest_inside_torchrun(monkeypatch):
    from training.launch import launch
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RuntimeError, match="already running under torchrun"):
        launch(2, ["train", "--out", "x", "--nproc", "2"])
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        launch(0, ["--out", "x"])


# ----------------------------------------------------------------- real runs on CUFS
TINY = ["--size", "32", "--blocks", "1", "--ngf", "8", "--ndf", "8", "--max-images", "8",
        "--holdout", "2", "--device", "cpu", "--no-progress", "--log-every", "1", "--seed", "5"]


def _env(digests: Path) -> dict[str, str]:
    return dict(os.environ, FACESKETCH_DEBUG_RANK_DIGEST=str(digests), PYTHONPATH=str(REPO),
                OMP_NUM_THREADS="1")


def _digest(folder: Path, rank: int, when: str) -> dict:
    path = folder / f"rank{rank}.{when}.json"
    assert path.is_file(), f"rank {rank} wrote no {when} digest"
    return json.loads(path.read_text())


def _run(cmd: list[str], env: dict[str, str], timeout: float = 180) -> str:
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.cufs
def test_two_process_ddp_keeps_ranks_identical_and_one_process_resumes(tmp_path, cufs):
    from training import checkpoint as ckpt
    out, d2, d1 = tmp_path / "run", tmp_path / "digests2", tmp_path / "digests1"
    common = ["--data", str(cufs), "--out", str(out), *TINY]

    # 2 processes via `facesketch train --nproc 2` (-> training.launch -> torchrun -> DDP/gloo)
    text = _run([sys.executable, "-m", "app.cli", "train", "--nproc", "2", *common,
                 "--max-steps", "2"], _env(d2))
    assert "torch.distributed.run" in text and "world 2" in text
    r0s, r1s = _digest(d2, 0, "start"), _digest(d2, 1, "start")
    r0, r1 = _digest(d2, 0, "end"), _digest(d2, 1, "end")
    assert (r0["world"], r1["world"]) == (2, 2)
    # each rank trains on its own shard of the epoch
    assert r0s["shard_A"] and r1s["shard_A"] and not set(r0s["shard_A"]) & set(r1s["shard_A"])
    # identical weights on both ranks, at the start and after training ...
    for key in ("generators", "discriminators"):
        assert r0s[key] == r1s[key]
        assert r0[key] == r1[key]
        assert r0[key] != r0s[key], f"{key} did not train"
    assert r0["global_step"] == r1["global_step"] == 2
    # ... and the checkpoint rank 0 wrote holds what rank 1 holds
    cfg = ckpt.read_config(out)
    assert cfg["weights_sha256"] == r1["generators"]
    assert cfg["train"]["world_size"] == 2
    meta = ckpt.load_state(out / ckpt.STATE_FILE)[1]
    assert (meta["world_size"], meta["global_step"]) == (2, 2)

    # resume the 2-process checkpoint in 1 process (python -m training, no torchrun)
    _run([sys.executable, "-m", "training", *common, "--resume", "--max-steps", "4"], _env(d1))
    s, e = _digest(d1, 0, "start"), _digest(d1, 0, "end")
    assert s["world"] == 1
    # weights (all four networks) load from the 2-process checkpoint; the step count continues
    assert (s["generators"], s["discriminators"]) == (r0["generators"], r0["discriminators"])
    assert s["global_step"] == 2 and e["global_step"] == 4
    # the epoch continues where the two ranks stopped: 2 steps x 2 ranks done, the rest follows
    assert s["step_in_epoch"] == 4
    assert set(s["shard_A"]) == set(r0s["shard_A"][2:]) | set(r1s["shard_A"][2:])
    assert e["generators"] != s["generators"]
    assert ckpt.read_config(out)["weights_sha256"] == e["generators"]
    meta = ckpt.load_state(out / ckpt.STATE_FILE)[1]
    assert (meta["world_size"], meta["global_step"]) == (1, 4)
    steps = [json.loads(line)["global_step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def _start_two_ranks(out: Path, dg: Path, cufs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app.cli", "train", "--nproc", "2", "--data", str(cufs),
           "--out", str(out), *TINY, "--epochs", "50"]
    # SIGINT back to its default: a shell's background job (`pytest ... &`) starts with it
    # ignored, which Python then keeps, so the launcher would never see the Ctrl-C
    proc = subprocess.Popen(cmd, env=_env(dg), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    log = out / "log.jsonl"
    while not (log.is_file() and log.read_text().count("\n") >= 3
               and (dg / "rank1.start.json").is_file()):
        if proc.poll() is not None:
            raise AssertionError(f"launcher exited early:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for training to start")
        time.sleep(0.05)
    return proc


def _check_stopped_together(out: Path, dg: Path) -> None:
    from training import checkpoint as ckpt
    r0, r1 = _digest(dg, 0, "end"), _digest(dg, 1, "end")
    assert r0["global_step"] == r1["global_step"] >= 3
    assert r0["generators"] == r1["generators"] and r0["discriminators"] == r1["discriminators"]
    meta = ckpt.load_state(out / ckpt.STATE_FILE)[1]
    assert meta["global_step"] == r0["global_step"]
    assert ckpt.read_config(out)["weights_sha256"] == r1["generators"]


@pytest.mark.slow
@pytest.mark.cufs
def test_ctrl_c_on_the_launcher_writes_a_resumable_checkpoint(tmp_path, cufs):
    """SIGINT to `facesketch train --nproc 2`: torchrun passes it on once, rank 0 writes a
    resumable checkpoint, the launcher exits 130."""
    out, dg = tmp_path / "run", tmp_path / "digests"
    proc = _start_two_ranks(out, dg, cufs)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text[-4000:]
    assert "resumable checkpoint" in text
    _check_stopped_together(out, dg)


@pytest.mark.slow
@pytest.mark.cufs
def test_a_stop_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, cufs):
    """A signal that reaches the ranks at different steps (here: rank 1 only) must not leave
    rank 0 waiting in an all-reduce nobody joins: the ranks vote, all stop, rank 0 saves."""
    out, dg = tmp_path / "run", tmp_path / "digests"
    proc = _start_two_ranks(out, dg, cufs)
    os.kill(_digest(dg, 1, "start")["pid"], signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, text[-4000:]
    _check_stopped_together(out, dg)
