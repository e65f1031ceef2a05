"""Multi-process training: ``facesketch train --nproc N`` runs torchrun for you.

``launch(n, argv)`` starts ``python -m torch.distributed.run --standalone
--nproc-per-node n -m training <the same train arguments minus --nproc>``, i.e.
exactly what a user would type by hand, as a subprocess:

* ``--standalone``: a single-node c10d rendezvous on ``localhost:0``, so the
  operating system picks free ports (no MASTER_PORT clashes with other runs);
* each worker is ``python -m training`` (training/__main__.py), which takes the
  options of ``facesketch train`` and calls the same trainer: DDP over NCCL on
  GPUs, gloo on CPU (training/trainer.py reads RANK/WORLD_SIZE/LOCAL_RANK);
* Ctrl-C is passed to torchrun once, which passes it to every worker: the
  workers agree on the step to stop after, rank 0 writes a resumable
  checkpoint, and the run resumes later with any number of processes.

Also here: ``write_rank_digest``, an undocumented test hook. With
``FACESKETCH_DEBUG_RANK_DIGEST=DIR`` every rank writes ``DIR/rank<R>.<when>.json``
holding digests of its four networks, so a test can check that DDP keeps the
ranks' weights identical and that a resumed run starts from the saved weights.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("facesketch.launch")

DIGEST_ENV = "FACESKETCH_DEBUG_RANK_DIGEST"
_GLOBAL_FLAGS = {"-v", "--verbose"}


def inside_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def train_arguments(argv: list[str]) -> tuple[list[str], bool]:
    """The ``facesketch train`` options in ``argv``, without ``--nproc``.

    ``argv`` is either the command line after the program name
    (``[-v] train --data ... --nproc 2``) or the train options alone. Returns
    (options, verbose).
    """
    argv = list(argv)
    verbose = False
    i = 0
    while i < len(argv) and argv[i] in _GLOBAL_FLAGS:
        verbose = True
        i += 1
    if i < len(argv) and argv[i] == "train":
        argv = argv[i + 1:]
    elif i:
        argv = argv[i:]
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == "--nproc":
            skip = True
            continue
        if tok.startswith("--nproc="):
            continue
        if tok in _GLOBAL_FLAGS:
            verbose = True
            continue
        out.append(tok)
    return out, verbose


def _option(args: list[str], name: str) -> str | None:
    for i, tok in enumerate(args):
        if tok == name and i + 1 < len(args):
            return args[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _check_devices(nproc: int, args: list[str]) -> None:
    """One process per GPU: refuse more processes than GPUs before starting anything."""
    device = _option(args, "--device") or "auto"
    if device == "cpu":
        return
    import torch
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and n_gpu == 0:
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    if n_gpu and nproc > n_gpu:
        raise ValueError(f"--nproc {nproc} asks for one process per GPU, but this machine has "
                         f"{n_gpu} GPU(s); use --nproc {n_gpu}, or --device cpu for gloo on CPU")


def command(nproc: int, args: list[str], verbose: bool = False) -> list[str]:
    """The torchrun command line ``launch`` runs (for docs and logs)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "-m", "training", *(["-v"] if verbose else []), *args]


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``facesketch train`` on ``nproc`` processes under torchrun; returns its exit status."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if inside_torchrun():
        raise RuntimeError("already running under torchrun (RANK/WORLD_SIZE are set): "
                           "drop --nproc, torchrun's --nproc-per-node sets the process count")
    args, verbose = train_arguments(argv)
    _check_devices(nproc, args)
    env = dict(os.environ)
    # gloo on CPU: share the cores instead of every process using all of them
    # (torchrun would otherwise set 1 thread per process, with a warning).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = command(nproc, args, verbose)
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    # Own session: a terminal Ctrl-C reaches only this process, which hands it to
    # torchrun exactly once (torchrun forwards it to the workers, each in its own
    # session). A second signal to torchrun would cut its graceful shutdown short.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    interrupted = False
    old_term = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                if not interrupted:
                    interrupted = True
                    log.warning("interrupt: the workers finish their step and rank 0 writes a "
                                "resumable checkpoint (torchrun kills them after its "
                                "--shutdown-timeout, 30 s by default)")
                    proc.send_signal(signal.SIGINT)
                else:
                    log.warning("still waiting for the workers to write their checkpoint")
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if interrupted:
        return 130
    if rc:
        log.error("torchrun exited with status %d (the failing rank's traceback is above)", rc)
    return rc


# ----------------------------------------------------------------- test hook
def write_rank_digest(run: Any, when: str) -> None:
    """With FACESKETCH_DEBUG_RANK_DIGEST=DIR, write this rank's weight digests to DIR.

    ``generators`` is computed exactly like ``weights_sha256`` in model.json
    (training.checkpoint.save_model), so rank 1's digest can be compared with
    the checkpoint rank 0 wrote. ``shard_A`` names the photos this rank trains
    on in the current epoch.
    """
    folder = os.environ.get(DIGEST_ENV)
    if not folder:
        return
    import torch

    from .checkpoint import tensors_digest

    def digest(names: tuple[str, ...]) -> str:
        return tensors_digest({f"{n}.{k}": v.to(torch.float32)
                               for n in names for k, v in getattr(run, n).state_dict().items()})

    order = run.epoch_order(run.epoch, len(run.train_A))
    shard = order[run.step_in_epoch * run.cfg.batch_size:run.steps_per_epoch * run.cfg.batch_size]
    rec = {"rank": run.rank, "world": run.world, "pid": os.getpid(), "when": when, "epoch": run.epoch,
           "step_in_epoch": run.step_in_epoch, "global_step": run.global_step,
           "generators": digest(("G_A", "G_B")), "discriminators": digest(("D_A", "D_B")),
           "shard_A": [run.train_A.names[i] for i in shard]}
    path = Path(folder) / f"rank{run.rank}.{when}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
