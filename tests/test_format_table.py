"""The format table is the one place a format lives: a new format is one row (with its
runners) plus one exporter function, and export, the runtime, bench and the CLI see it.

The dummy format here is registered exactly that way: a row naming this module's
``export_copy`` and an onnxruntime runner, nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from facesketch import formats as F  # noqa: E402
from facesketch.formats import Format, Runner  # noqa: E402


def export_copy(ctx, direction: str, out_path):
    """The dummy format's exporter: the fp32 ONNX graph, under the dummy's own name."""
    from export.onnx_io import write_onnx
    return write_onnx(ctx, direction, out_path, fmt="onnx-copy")


DUMMY = Format("onnx-copy", ".copy.onnx", "cpu", ("onnx", "onnxruntime"), "fp32", 60.0,
               "test-only: the fp32 ONNX again", {}, f"{__name__}:export_copy",
               (Runner("copy-cpu", "cpu", "fp32", "runtime.backends:OrtBackend",
                       "onnxruntime CPU running the dummy format",
                       {"provider": "CPUExecutionProvider"}),))


@pytest.fixture()
def dummy_format():
    F.register(DUMMY)
    yield DUMMY
    F.unregister(DUMMY.name)


def test_every_row_names_an_exporter_and_runners_that_resolve():
    from runtime import backends as B
    for fmt in F.FORMATS.values():
        assert callable(F.resolve(fmt.exporter)), fmt.name
        assert fmt.runners, fmt.name
        for r in fmt.runners:
            assert B.BACKENDS[r.name].format == fmt.name
            assert issubclass(B.BACKENDS[r.name].cls, B.Backend)
    assert len(B.BACKENDS) == sum(len(f.runners) for f in F.FORMATS.values())


def test_a_new_format_is_one_row_plus_one_function(dummy_format, tiny_checkpoint, synthetic_data,
                                                   tmp_path):
    from app.cli import build_parser
    from export import export_bundle
    from runtime import Translator
    from runtime import backends as B
    assert "copy-cpu" in B.BACKENDS and "onnx-copy" in build_parser().format_help() + F.help_table()
    bundle = export_bundle(tiny_checkpoint, tmp_path / "b", formats="onnx-copy",
                           calibration=synthetic_data)
    assert sorted(p.name for p in bundle.glob("*.copy.onnx")) == ["photo2sketch.copy.onnx",
                                                                  "sketch2photo.copy.onnx"]
    t = Translator.load(bundle, backend="copy-cpu")
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert t.run("photo2sketch", x).shape == x.shape
    auto = Translator.load(bundle, use_cache=False)        # the only format: auto picks it
    assert auto.backend == "copy-cpu"
    t.close()
    auto.close()


def test_registering_needs_a_new_name_and_an_exporter():
    with pytest.raises(ValueError, match="exists"):
        F.register(F.FORMATS["onnx"])
    with pytest.raises(ValueError, match="exporter"):
        F.register(Format("x", ".x", "cpu", (), "fp32", 60.0, "no exporter"))
