"""An NHWC model gets the same pixels as its NCHW twin, transposed, and is normalised along its channel axis.

Before, the host read an NHWC shape [1, 8, 8, 3] as 8 channels of 8 x 3 pixels: eval images were scrambled,
calibration was normalised along the height axis, and the corrupted eval sets failed to build. Users bring
such models as ONNX files (source: {kind: onnx}); the host reference here runs one in real onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.agent import protocol
from harness.agent.loop import preprocess
from harness.build.data import (
    calibration_inputs,
    corrupted_eval_file,
    eval_file,
    latency_file,
    normalise,
    to_uint8,
)
from harness.build.export import OnnxModel
from harness.catalog import ModelEntry
from harness.errors import ConfigError
from harness.references import host_reference
from harness.zoo.datasets import load_dataset

MEAN = (0.1, 0.5, 0.9)
STD = (0.2, 0.3, 0.4)


def _entry(shape: list[int], layout: str, *, count: int = 4, **extra: Any) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "name": f"tiny-{layout.lower()}",
            "pretrained": False,
            "source": {"kind": "onnx", "path": "tiny.onnx"},
            "input": {"shape": shape, "layout": layout, "normalization": {"mean": list(MEAN), "std": list(STD)}},
            "num_classes": 10,
            "eval": {"dataset": "random-smooth", "count": count, "seed": 1},
            "calibration": {"dataset": "random-smooth", "count": count, "seed": 2},
            **extra,
        }
    )


NCHW = _entry([1, 3, 8, 8], "NCHW")
NHWC = _entry([1, 8, 8, 3], "NHWC")


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_an_nhwc_model_gets_the_nchw_eval_and_latency_images_transposed(edgebench_env: Path) -> None:
    nchw = _npz(eval_file(NCHW, NCHW.input.shape).path)["clean"]
    nhwc = _npz(eval_file(NHWC, NHWC.input.shape).path)["clean"]
    assert nchw.shape == (4, 3, 8, 8) and nhwc.shape == (4, 8, 8, 3)
    assert np.array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    expected = to_uint8(load_dataset("random-smooth", count=4, seed=1, shape=(3, 8, 8)).images)
    assert np.array_equal(nchw, expected), "the data set's own images, from the entry's channels and size"
    latency = _npz(latency_file(NHWC, NHWC.input.shape).path)["latency"]
    assert np.array_equal(latency, nhwc[:1])


def test_an_nhwc_model_at_another_input_size_gets_square_images_of_that_size(edgebench_env: Path) -> None:
    nhwc = _npz(eval_file(NHWC, (1, 12, 12, 3)).path)["clean"]
    nchw = _npz(eval_file(NCHW, (1, 3, 12, 12)).path)["clean"]
    assert np.array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_nhwc_calibration_is_normalised_along_the_last_axis() -> None:
    pixels = to_uint8(load_dataset("random-smooth", count=4, seed=2, shape=(3, 8, 8)).images)
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    expected = (pixels.transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255) - mean) / std
    nhwc = calibration_inputs(NHWC, NHWC.input.shape)
    nchw = calibration_inputs(NCHW, NCHW.input.shape)
    assert nhwc is not None and nchw is not None
    np.testing.assert_allclose(nhwc, expected, rtol=1e-6, atol=1e-6)
    assert np.array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_the_host_and_the_runner_normalise_nhwc_pixels_alike() -> None:
    pixels = to_uint8(np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32))
    spec = protocol.InputSpec(name="input", shape=(1, 8, 8, 3), layout="NHWC", mean=MEAN, std=STD)
    device = preprocess(pixels, spec)
    assert np.array_equal(device, normalise(pixels, NHWC))
    np.testing.assert_allclose(device[..., 2], (pixels[..., 2] / np.float32(255) - 0.9) / 0.4, rtol=1e-5, atol=1e-6)


def test_the_runner_names_the_key_when_the_means_do_not_fit_the_channels() -> None:
    """Before, the job failed with numpy's bare "cannot reshape array of size 3 into shape (1,1,1,1)"."""
    spec = protocol.InputSpec(name="input", shape=(1, 1, 8, 8), mean=(0.485, 0.456, 0.406), std=(0.5,))
    with pytest.raises(ValueError) as info:
        preprocess(np.zeros((2, 1, 8, 8), np.uint8), spec)
    assert str(info.value) == (
        "input.mean has 3 values but the images [2, 1, 8, 8] (NCHW) have 1 channel; "
        "fix: give one value or one per channel in the catalog's input.normalization.mean"
    )


def test_host_normalise_refuses_values_that_do_not_fit_instead_of_resizing_them() -> None:
    """An entry built without validation (model_construct) reaches normalise with 2 means for 3 channels."""
    spec = NCHW.input.model_copy(update={"normalization": NCHW.input.normalization.model_construct(mean=(0.1, 0.5))})
    entry = NCHW.model_copy(update={"input": spec})
    with pytest.raises(ConfigError) as info:
        normalise(np.zeros((1, 3, 8, 8), np.uint8), entry)
    assert info.value.key == "input.normalization.mean"
    assert "has 2 values but the images have 3 channels (layout NCHW)" in info.value.message


def test_an_nhwc_model_gets_every_corrupted_eval_set_as_the_nchw_one_transposed(edgebench_env: Path) -> None:
    """Before, the corruptions read an NHWC [1, 32, 32, 3] batch as 32 channels and refused it."""
    nchw_entry, nhwc_entry = _entry([1, 3, 32, 32], "NCHW", count=2), _entry([1, 32, 32, 3], "NHWC", count=2)
    nchw = _npz(corrupted_eval_file(nchw_entry, nchw_entry.input.shape).path)
    nhwc = _npz(corrupted_eval_file(nhwc_entry, nhwc_entry.input.shape).path)
    assert sorted(nhwc) == sorted(nchw) and len(nhwc) > 1
    for key, images in nchw.items():
        assert images.shape == (2, 3, 32, 32)
        assert np.array_equal(nhwc[key], images.transpose(0, 2, 3, 1)), key


def _nhwc_twin(nchw_onnx: Path, out: Path) -> Path:
    """The tiny NCHW classifier behind a Transpose: the same network taking NHWC input, as users export them."""
    import onnx
    from onnx import helper

    model = onnx.load(str(nchw_onnx))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["input_nchw" if name == "input" else name for name in node.input]
    graph.node.insert(0, helper.make_node("Transpose", ["input"], ["input_nchw"], perm=[0, 3, 1, 2]))
    (declared,) = graph.input
    dims = declared.type.tensor_type.shape.dim
    batch, channels, height, width = (d.dim_param or d.dim_value for d in dims)
    graph.input.remove(declared)
    graph.input.append(helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [batch, height, width, channels]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def test_an_nhwc_onnx_model_gets_the_same_host_reference_logits_as_its_nchw_twin(
    edgebench_env: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    """Real onnxruntime on the exported graphs: scrambled or wrongly normalised NHWC data gives other logits."""
    nhwc_onnx = _nhwc_twin(tiny_onnx, tmp_path / "tiny-nhwc.onnx")
    nchw_entry, nhwc_entry = _entry([1, 3, 16, 16], "NCHW"), _entry([1, 16, 16, 3], "NHWC")
    logits = []
    for entry, path in ((nchw_entry, tiny_onnx), (nhwc_entry, nhwc_onnx)):
        data = eval_file(entry, entry.input.shape)
        model = OnnxModel(path, path.name, path.name, "input", entry.input.shape)
        logits.append(host_reference(model, entry, data.path, data.sha256, ["clean"])["clean"])
    assert logits[0].shape == (4, 10)
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-5, atol=1e-5)
