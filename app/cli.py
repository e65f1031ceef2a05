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

from facesketch import formats
from facesketch.command import run_handler

log = logging.getLogger("facesketch")


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


# ----------------------------------------------------------------- handlers
def cmd_train(a: argparse.Namespace) -> int:
    from training.command import run_train
    return run_train(a, sys.argv[1:])


def cmd_import_reference(a: argparse.Namespace) -> int:
    from training.checkpoint import import_reference
    out = import_reference(a.g_a, a.g_b, a.out, size=a.size)
    print(f"checkpoint: {out}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from webui.config import WebConfig
    from webui.serve import default_model, serve
    model = a.model or str(default_model())
    cfg = WebConfig(model=model, backend=a.backend, server=a.server or "",
                    allow_partial=a.allow_partial, align=a.align)
    cfg.validate()
    return serve(cfg, host=a.host, port=a.port, threads=a.threads, share=a.share)


DEFAULT_BUNDLE = Path("bundles") / "default"
MAKE_BUNDLE = ("make one with `facesketch export runs/NAME --out bundles/default` "
               "(or pass --model BUNDLE)")


def _default_model(allow_checkpoint: bool) -> Path:
    """bundles/default; for translate also the packaged checkpoint; else a clear error."""
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    if allow_checkpoint:
        from facesketch.models import DEFAULT_MODEL
        if (DEFAULT_MODEL / "model.safetensors").is_file():
            log.info("no bundles/default: using the packaged model %s (needs torch)", DEFAULT_MODEL)
            return DEFAULT_MODEL
    raise FileNotFoundError(f"no --model given and no bundle at {DEFAULT_BUNDLE}; {MAKE_BUNDLE}")


def cmd_export(a: argparse.Namespace) -> int:
    from export import export_bundle
    out = export_bundle(a.checkpoint, a.out, formats=a.formats, size=a.size, max_batch=a.max_batch,
                        calibration=a.calibration)
    import json
    m = json.loads((out / "manifest.json").read_text())
    print(f"bundle: {out}")
    print(f"  {'format':<14}{'direction':<14}{'MB':>8}{'PSNR dB':>10}  file")
    for e in m["files"]:
        mb = (e["bytes"] + sum(c["bytes"] for c in e.get("companions", []))) / 1e6
        print(f"  {e['format']:<14}{e['direction']:<14}{mb:>8.2f}{e['parity']['psnr_db']:>10.1f}  {e['path']}")
    for name, why in {**m.get("skipped", {}), **m.get("refused", {})}.items():
        print(f"  {name:<14}{'skipped' if name in m.get('skipped', {}) else 'REFUSED'}: {why}")
    return 0


def cmd_translate(a: argparse.Namespace) -> int:
    from facesketch.imageio import IMAGE_SUFFIXES, ImageError, list_images, save_png
    from runtime import Translator
    inputs: list[Path] = []
    for item in a.inputs:
        p = Path(item)
        if p.is_dir():
            inputs += list_images(p)
        elif p.is_file():
            inputs.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    if not inputs:
        raise FileNotFoundError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {' '.join(a.inputs)}")
    model = Path(a.model) if a.model else _default_model(allow_checkpoint=True)
    t = Translator.load(model, backend=a.backend, device=a.device, server=a.server,
                        allow_partial=a.allow_partial)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for p in inputs:
        try:
            r = t.translate(p, direction=a.direction, align=a.align, paste=a.paste)
        except ImageError as exc:
            print(f"{p}: skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        dst = out / f"{p.stem}.{r.direction}.png"
        save_png(r.image, dst)
        conf = f" (confidence {r.confidence:.2f})" if r.confidence is not None else ""
        face = f", face: {r.face}" + (f" at {r.face_box}" if r.face_box else "") if a.align != "off" else ""
        print(f"{p} -> {dst}  [{r.domain}{conf}, {r.direction}, {r.backend}, {r.latency_ms:.1f} ms{face}]")
    return 1 if failed else 0


def cmd_bench(a: argparse.Namespace) -> int:
    from runtime.bench import default_json_path, run_bench
    model = Path(a.model) if a.model else _default_model(allow_checkpoint=False)
    json_out = a.json or default_json_path()
    run_bench(model, backends=a.backends.split(",") if a.backends else None,
              batch_sizes=a.batch_sizes, json_out=json_out, runs=a.runs, device=a.device)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate, markdown
    from facesketch.sysinfo import write_result
    report = evaluate(a.model, a.data, photos=a.photos, sketches=a.sketches, limit=a.limit,
                      backend=a.backend, device=a.device, batch_size=a.batch_size, grid=a.grid,
                      align=a.align)
    table = markdown(report)
    print(table, end="")
    if a.json:
        write_result(report, a.json)
        print(f"report: {a.json}")
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table)
        print(f"table: {a.markdown}")
    if report["grid"]["path"]:
        print(f"grid: {report['grid']['path']}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(model=a.model, bundle=a.bundle, data=a.data, inputs=a.inputs, serve=not a.no_serve,
             host=a.host, port=a.port)
    return 0


# ----------------------------------------------------------------- parser
def _add_train(sub) -> None:

    t = sub.add_parser("train", help="train a CycleGAN on photo and sketch folders")
    from training.config import add_train_arguments   # torch-free: the options only
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)


def _add_import_reference(sub) -> None:
    r = sub.add_parser("import-reference", help="convert reference CycleGAN generators (.pth)")
    r.add_argument("g_a", help="latest_net_G_A.pth (photo -> sketch)")
    r.add_argument("g_b", help="latest_net_G_B.pth (sketch -> photo)")
    r.add_argument("--out", required=True, help="checkpoint folder to write")
    r.add_argument("--size", type=int, default=256, help="image size the model was trained at")
    r.set_defaults(func=cmd_import_reference)


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="serve the web page and API (waitress)")
    sv.add_argument("--model", help="bundle folder (or checkpoint); default bundles/default, "
                    "else the packaged model")
    sv.add_argument("--backend", default="auto", help="runtime backend (default: auto, the fastest measured)")
    sv.add_argument("--server", help="Triton Inference Server HOST:PORT (HTTP) for --backend triton")
    sv.add_argument("--allow-partial", action="store_true",
                    help="when a bundle file fails its sha256 check, run the intact engines "
                         "(with a warning) instead of stopping with an error")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=5000, help="port (default 5000; 0 = any free port)")
    sv.add_argument("--threads", type=int, default=8, help="waitress worker threads (default 8)")
    _add_align(sv, "auto", "the page and the API's default (a request's 'align' field overrides it)")
    sv.add_argument("--share", action="store_true",
                    help="also open a public ngrok link (token from the NGROK_AUTHTOKEN env variable)")
    sv.set_defaults(func=cmd_serve)


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="export a checkpoint into a bundle of verified engines",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Export a checkpoint (or a run folder: its best/ checkpoint) "
                        "into a bundle folder: manifest.json plus one file per direction and format, "
                        "each checked against PyTorch fp32 on real images.\n\nformats:\n"
                        + formats.help_table())
    ex.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="checkpoint or run folder")
    ex.add_argument("--out", required=True, help="bundle folder to write, e.g. bundles/default")
    ex.add_argument("--formats", default="all", help="comma list of formats, or all (default)")
    ex.add_argument("--size", type=int, help="image size (default: the checkpoint's)")
    ex.add_argument("--max-batch", type=int, default=32, help="largest batch (TensorRT profile; default 32)")
    ex.add_argument("--calibration", help="folder of real images for int8 calibration and parity "
                    "(photos/sketches layout, or one folder); default: the checkpoint's training data")
    ex.set_defaults(func=cmd_export)


def _add_align(p, default: str, what: str) -> None:
    p.add_argument("--align", default=default, choices=("auto", "off"),
                   help=f"auto: find the largest face and frame it like the training data before "
                        f"translating ({what}); off: the whole image (default {default})")


def _add_translate(sub) -> None:
    tr = sub.add_parser("translate", help="translate images (photo <-> sketch)")
    tr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    tr.add_argument("--model", help="bundle folder (or checkpoint); default bundles/default")
    tr.add_argument("--direction", default="auto", choices=("auto",) + formats.DIRECTIONS,
                    help="default auto: detect whether each input is a photo or a sketch")
    tr.add_argument("--backend", default="auto",
                    help="auto (fastest measured here, cached), a backend name or a format name")
    tr.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    tr.add_argument("--server", help="Triton Inference Server HOST:PORT (HTTP) for --backend triton")
    tr.add_argument("--allow-partial", action="store_true",
                    help="when a bundle file fails its sha256 check, run the intact engines "
                         "(with a warning) instead of stopping with an error")
    tr.add_argument("--out", default="translated", help="output folder (default ./translated)")
    _add_align(tr, "auto", "the result is the framed face")
    tr.add_argument("--paste", action="store_true",
                    help="with --align auto: put the translated face back into the whole picture")
    tr.set_defaults(func=cmd_translate)


def _add_bench(sub) -> None:
    be = sub.add_parser("bench", help="benchmark every backend of a bundle on this machine")
    be.add_argument("--model", help="bundle folder; default bundles/default")
    be.add_argument("--backends", help="comma list of backend or format names (default: all loadable)")
    be.add_argument("--batch-sizes", type=_csv_ints, default=[1, 8], help="default 1,8")
    be.add_argument("--runs", type=int, default=20, help="timed rounds at batch 1 (default 20)")
    be.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    be.add_argument("--json", help="results file (default benchmarks/results/bench_<machine>.json "
                    "when run in the repository)")
    be.set_defaults(func=cmd_bench)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="SSIM/FSIM/PSNR of both directions on paired test data")
    ev.add_argument("--model", required=True, help="bundle folder or checkpoint")
    ev.add_argument("--data", help="folder with test_photos/ + test_sketches/ (CUFS) or testA/ + testB/")
    ev.add_argument("--photos", help="folder of photos (with --sketches, instead of --data)")
    ev.add_argument("--sketches", help="folder of the sketches, same file names as the photos")
    ev.add_argument("--json", help="write the full report (per image, per subset) here")
    ev.add_argument("--markdown", help="write the Markdown table here")
    ev.add_argument("--grid", help="write an image grid PNG (input | ours | artist) here")
    ev.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    ev.add_argument("--backend", default="auto", help="auto, a backend name or a format name")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ev.add_argument("--batch-size", type=int, default=8, help="images per engine call (default 8)")
    ev.add_argument("--align", choices=("auto", "off"),
                    help="score the largest face's region (found on each photo, cut from photo and "
                         "sketch alike), translating the aligned crop (auto) or the whole image "
                         "(off); default: whole images, the literature's protocol")
    ev.set_defaults(func=cmd_evaluate)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the main job on the bundled model: export, bench, web UI")
    d.add_argument("--model", help="checkpoint (default: the embedded model)")
    d.add_argument("--bundle", default="bundles/default", help="bundle folder to (re)use")
    d.add_argument("--data", help="photos+sketches folder to check the engines on "
                   "(default: ../shared/data/cufs if present, else generated examples)")
    d.add_argument("--inputs", nargs="*", help="images to translate (default: examples)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=5000)
    d.add_argument("--no-serve", action="store_true", help="stop after the bench table")
    d.set_defaults(func=cmd_demo)


SUBCOMMANDS = (_add_train, _add_import_reference, _add_serve, _add_export, _add_translate, _add_bench, _add_evaluate, _add_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facesketch",
                                description="Face photo <-> sketch translation with CycleGAN.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_handler(a.func, a, f"facesketch {a.command}")


if __name__ == "__main__":
    sys.exit(main())
