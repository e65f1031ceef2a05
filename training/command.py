"""``facesketch train`` and ``python -m training``: one entry point for both."""

from __future__ import annotations


def run_train(a, argv: list[str]) -> int:
    """With ``--nproc N > 1`` start torchrun (``argv``: the train arguments it passes
    on, training.launch), else train in this process."""
    if a.nproc and a.nproc > 1:
        from .launch import launch
        return launch(a.nproc, argv)
    from .config import config_from_args
    from .trainer import train
    out = train(config_from_args(a))
    print(f"checkpoint: {out}")
    return 0
