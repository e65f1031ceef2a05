"""The ``facesketch`` command. It only parses arguments and calls the packages' APIs.

Heavy imports (torch, onnxruntime, flask) happen inside each subcommand, so
``facesketch --help`` is instant and a torch-free box can still run
``translate``, ``bench`` and ``serve``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import formats

log = logging.getLogger("facesketch")


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


# ----------------------------------------------------------------- handlers
def cmd_train(a: argparse.Namespace) -> int:
    if a.nproc and a.nproc > 1:
        from training.launch import launch
        return launch(a.nproc, sys.argv[1:])
    from training.config import TrainConfig
    from training.trainer import train
    keys = ("out", "data", "photos", "sketches", "size", "blocks", "epochs", "batch_size",
            "max_images", "holdout", "device", "precision", "compile", "seed", "resume",
            "max_steps", "lr", "log_every", "ngf", "ndf", "compile_mode")
    cfg = TrainConfig(**{k: getattr(a, k) for k in keys if getattr(a, k) is not None},
                      progress=not a.no_progress)
    out = train(cfg)
    print(f"checkpoint: {out}")
    return 0


def cmd_import_reference(a: argparse.Namespace) -> int:
    from training.checkpoint import import_reference
    out = import_reference(a.g_a, a.g_b, a.out, size=a.size)
    print(f"checkpoint: {out}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from webui.config import WebConfig
    from webui.serve import default_model, serve
    model = a.model or str(default_model())
    cfg = WebConfig(model=model, backend=a.backend, server=a.server or "")
    cfg.validate()
    return serve(cfg, host=a.host, port=a.port, threads=a.threads, share=a.share)


# ----------------------------------------------------------------- parser
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `facesketch train`; also `python -m training` (torchrun) uses them."""
    p.add_argument("--data", help="folder in a known layout (CUFS, Kaggle, CycleGAN trainA/trainB)")
    p.add_argument("--photos", help="folder of photos (with --sketches, instead of --data)")
    p.add_argument("--sketches", help="folder of sketches")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--size", type=int, help="image size (default 128)")
    p.add_argument("--blocks", type=int, help="residual blocks in each generator (default 3)")
    p.add_argument("--epochs", type=int, help="epochs: constant LR for half, then linear decay")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-images", type=int, help="use at most N images per domain")
    p.add_argument("--holdout", type=int, help="images per domain held back for samples/validation")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile G and D")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode (reduce-overhead = CUDA graphs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out exactly where it stopped")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) at this global step")
    p.add_argument("--log-every", type=int, help="steps between loss read-backs")
    p.add_argument("--nproc", type=int, help="processes (torchrun/DDP); GPUs or CPU (gloo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Network widths (reference: 64); hidden, for tiny test and debugging runs.
    p.add_argument("--ngf", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ndf", type=int, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facesketch",
                                description="Face photo <-> sketch translation with CycleGAN.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a CycleGAN on photo and sketch folders")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("import-reference", help="convert reference CycleGAN generators (.pth)")
    r.add_argument("g_a", help="latest_net_G_A.pth (photo -> sketch)")
    r.add_argument("g_b", help="latest_net_G_B.pth (sketch -> photo)")
    r.add_argument("--out", required=True, help="checkpoint folder to write")
    r.add_argument("--size", type=int, default=256, help="image size the model was trained at")
    r.set_defaults(func=cmd_import_reference)

    sv = sub.add_parser("serve", help="serve the web page and API (waitress)")
    sv.add_argument("--model", help="bundle folder (or checkpoint); default bundles/default, "
                    "else the packaged model")
    sv.add_argument("--backend", default="auto", help="runtime backend (default: auto, the fastest measured)")
    sv.add_argument("--server", help="Triton Inference Server HOST:PORT (HTTP) for --backend triton")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=5000, help="port (default 5000; 0 = any free port)")
    sv.add_argument("--threads", type=int, default=8, help="waitress worker threads (default 8)")
    sv.add_argument("--share", action="store_true",
                    help="also open a public ngrok link (token from the NGROK_AUTHTOKEN env variable)")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(a.func(a) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        if a.verbose:
            raise
        print(f"facesketch {a.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
