"""Write the photo/sketch CNN (training.domain_cnn.DomainNet) as the ONNX file the
torch-free core runs (facesketch.domain.CNN_PATH), its fit summary in metadata_props."""

from __future__ import annotations

import json
from pathlib import Path

from .context import quiet


def write_domain_onnx(net, path: str | Path, summary: dict) -> Path:
    """ONNX with dynamic batch, height and width; checked, then renamed into place."""
    import onnx
    import torch
    from torch.export import Dim
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    probe = torch.zeros(1, 3, 96, 120)
    with quiet():
        prog = torch.onnx.export(net, (probe,), None, input_names=["image"], output_names=["logit"],
                                 dynamo=True, optimize=True, verbose=False,
                                 dynamic_shapes=({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},))
    model = prog.model_proto
    meta = {"facesketch.domain.version": str(summary["version"]),
            "facesketch.domain.summary": json.dumps({k: v for k, v in summary.items() if k != "history"})}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model, full_check=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
