"""``python -m training``: the worker torchrun starts, with ``facesketch train``'s options.

    torchrun --standalone --nproc-per-node 2 -m training --data ../shared/data/cufs --out runs/ddp

(``facesketch train --nproc 2 ...`` runs exactly that.) Run without torchrun it
trains in one process, like ``facesketch train``; ``--nproc N`` launches torchrun.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from facesketch.command import run_handler

    from .config import add_train_arguments
    from .command import run_train

    p = argparse.ArgumentParser(prog="python -m training",
                                description="Train a CycleGAN (the torchrun/DDP worker entry point; "
                                            "same options as `facesketch train`).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_train_arguments(p)
    a = p.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format=f"%(levelname)s [rank {rank}] %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else list(argv)
    return run_handler(lambda ns: run_train(ns, args), a, f"training (rank {rank})")


if __name__ == "__main__":
    sys.exit(main())
