"""`facesketch demo` on a box with no data: examples it makes itself, then reuse."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")


@pytest.mark.slow
def test_demo_without_data_exports_translates_and_reuses(tiny_checkpoint, tmp_path, monkeypatch):
    import app.demo as demo
    monkeypatch.setattr(demo, "CUFS", tmp_path / "no-data-here")
    lines: list[str] = []
    bundle = demo.run_demo(model=tiny_checkpoint, bundle=tmp_path / "b", serve=False, echo=lines.append)
    manifest = json.loads((bundle / "manifest.json").read_text())
    formats = {f["format"] for f in manifest["files"]}
    assert {"onnx", "torch"} <= formats
    assert "example inputs" in manifest["calibration"]["source"] or "examples" in manifest["calibration"]["source"]
    outs = sorted(p.name for p in (tmp_path / "b-demo").glob("*.png"))
    # the example "sketch" is this tiny random model's drawing of the photo (noise), so
    # which direction "auto" gives it is the detector's guess; the photo is a real photo
    assert len(outs) == 2 and outs[0] == "photos_example_photo2sketch.png"
    assert outs[1] in ("sketches_example_sketch2photo.png", "sketches_example_photo2sketch.png")
    assert any(line.startswith("auto picks") for line in "\n".join(lines).splitlines())
    # Second run: the bundle is current and is reused, not exported again.
    mtime = (bundle / "manifest.json").stat().st_mtime_ns
    lines.clear()
    demo.run_demo(model=tiny_checkpoint, bundle=tmp_path / "b", serve=False, echo=lines.append)
    assert any("up to date" in line for line in lines)
    assert (bundle / "manifest.json").stat().st_mtime_ns == mtime
