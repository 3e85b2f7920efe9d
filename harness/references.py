"""The host FP32 reference: the exported ONNX model run in-process, deterministically, on the eval sets.

One thread and the default CPU provider, so the same inputs give the same logits on any host;
results are cached on disk by the hash of the model and of the data file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .build.cache import key_of
from .build.data import normalise
from .build.export import OnnxModel
from .catalog import ModelEntry
from .paths import cache_dir

BATCH = 64


def host_reference(
    onnx: OnnxModel, entry: ModelEntry, data_path: Path, data_sha: str, keys: list[str]
) -> dict[str, np.ndarray]:
    """FP32 logits of the reference model for each key of an eval npz, as (N, classes) float32."""
    target = cache_dir() / "references" / f"{key_of({'onnx': onnx.sha256, 'data': data_sha, 'v': 1})[:32]}.npz"
    if target.is_file():
        with np.load(target) as cached:
            if all(k in cached.files for k in keys):
                return {k: cached[k] for k in keys}
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx.path), so, providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    with np.load(data_path) as data:
        for key in keys:
            images = data[key]
            parts = [
                np.asarray(session.run(None, {onnx.input_name: normalise(images[i : i + BATCH], entry)})[0])
                for i in range(0, len(images), BATCH)
            ]
            out[key] = np.concatenate(parts).reshape(len(images), -1).astype(np.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **out)  # type: ignore[arg-type]
    tmp.replace(target)
    return out
