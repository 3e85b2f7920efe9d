"""Planning: catalog x device x platform profile -> variants, each with its FP32 reference planned first."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.catalog import load_entry
from harness.errors import UnknownNameError
from harness.lab.inventory import Device
from harness.lab.platforms import PlatformProfile, load_platform
from harness.plan import plan_variants
from harness.records import Variant

REPO = Path(__file__).resolve().parents[2]


def _device(platform: str = "generic-linux", **fields: object) -> Device:
    return Device.model_validate({"name": "d", "platform": platform, "transport": "local", **fields})


def _profile(name: str = "generic-linux") -> PlatformProfile:
    return load_platform(name, directory=REPO / "devices" / "platforms")


def test_local_device_gets_three_runtimes_by_three_precisions() -> None:
    digits = load_entry(REPO / "models" / "digits-cnn.yaml")
    device = _device(runtimes=["onnxruntime", "openvino", "litert"], threads=2)
    ids = [v.id for v in plan_variants(digits, device, _profile())]
    assert ids == [f"{b}-{p}-t2" for b in ("onnxruntime", "openvino", "litert") for p in ("fp32", "fp16", "int8")]


def test_input_sizes_and_threads_multiply_and_every_variant_has_its_reference_first() -> None:
    mobilenet = load_entry(REPO / "models" / "mobilenetv2-style.yaml")
    variants = plan_variants(mobilenet, _device(), _profile("intel-nuc"), backends={"openvino"})
    assert len(variants) == 3 * 3  # sizes 224 (the catalog's own), 160, 128 x fp32/fp16/int8, threads [4]
    assert {v.size for v in variants} == {None, 160, 128}
    assert {v.threads for v in variants} == {4}
    for i, variant in enumerate(variants):
        assert variant.reference() in variants[: i + 1]


def test_device_runtimes_filter_backends_by_their_runtime() -> None:
    digits = load_entry(REPO / "models" / "digits-cnn.yaml")
    # QNN runs on the onnxruntime runtime: a device declaring only onnxruntime gets qnn and onnxruntime.
    variants = plan_variants(
        digits, _device("snapdragon-linux", runtimes=["onnxruntime"]), _profile("snapdragon-linux")
    )
    assert {v.backend for v in variants} == {"qnn", "onnxruntime"}
    assert Variant("qnn", "fp32", None, 4) in variants  # the reference is planned even if the profile lists fp16/int8
    assert plan_variants(digits, _device("mac", runtimes=[]), _profile("mac")) == []


def test_accelerator_backends_plan_one_thread_setting_and_edgetpu_has_no_fp32() -> None:
    digits = load_entry(REPO / "models" / "digits-cnn.yaml")
    jetson = plan_variants(digits, _device("jetson-orin", threads=6), _profile("jetson-orin"))
    assert {v.threads for v in jetson if v.backend == "tensorrt"} == {None}
    assert {v.threads for v in jetson if v.backend == "onnxruntime"} == {6}
    coral = plan_variants(digits, _device("coral-devboard"), _profile("coral-devboard"), backends={"edgetpu"})
    assert [v.id for v in coral] == ["edgetpu-int8-t4"]


def test_unknown_backend_in_the_filter_lists_the_known_ones() -> None:
    digits = load_entry(REPO / "models" / "digits-cnn.yaml")
    with pytest.raises(UnknownNameError, match="unknown backend 'tflite'"):
        plan_variants(digits, _device(), _profile(), backends={"tflite"})


def test_a_devices_backend_options_reach_its_variants_and_their_references() -> None:
    digits = load_entry(REPO / "models" / "digits-cnn.yaml")
    device = _device(
        runtimes=["openvino", "litert"], options={"openvino": {"streams": 1, "hint": "latency"}, "litert": {}}
    )
    variants = plan_variants(digits, device, _profile())
    openvino = [v for v in variants if v.backend == "openvino"]
    assert openvino and all(dict(v.options) == {"streams": 1, "hint": "latency"} for v in openvino)
    assert openvino[1].id.endswith("-hint=latency-streams=1")
    assert openvino[1].reference() == openvino[0], "the FP32 reference runs with the same options"
    assert all(v.options == () for v in variants if v.backend == "litert")


def test_the_edge_tpu_reference_takes_the_devices_litert_options_not_its_own() -> None:
    device = _device("coral-devboard", options={"edgetpu": {"num_segments": 2}, "litert": {"xnnpack": False}})
    edgetpu = Variant("edgetpu", "int8", options=device.backend_options("edgetpu"))
    assert edgetpu.reference(device.backend_options) == Variant("litert", "fp32", options=(("xnnpack", False),))


def test_a_model_whose_input_sizes_omit_its_own_size_is_still_planned_at_its_catalog_shape(tmp_path: Path) -> None:
    """Before, input_sizes: [160, 128] on a 224 model planned no catalog-shape variant, and the default
    (catalog shape only) run and pytest session dropped the model without a word."""
    text = (REPO / "models" / "mobilenetv2-style.yaml").read_text(encoding="utf-8")
    assert "input_sizes: [224, 160, 128]" in text
    entry = tmp_path / "mobilenetv2-style.yaml"
    entry.write_text(text.replace("input_sizes: [224, 160, 128]", "input_sizes: [160, 128]"), encoding="utf-8")
    model = load_entry(entry)
    variants = plan_variants(model, _device(), _profile("intel-nuc"), backends={"openvino"})
    assert [v.size for v in variants] == [None] * 3 + [160] * 3 + [128] * 3, "the catalog shape first"
    assert [v.id for v in variants if v.size is None] == ["openvino-fp32-t4", "openvino-fp16-t4", "openvino-int8-t4"]


def test_input_sizes_listing_the_catalog_side_plan_it_once() -> None:
    mobilenet = load_entry(REPO / "models" / "mobilenetv2-style.yaml")  # input_sizes: [224, 160, 128]
    sizes = [v.size for v in plan_variants(mobilenet, _device(), _profile("intel-nuc"), backends={"openvino"})]
    assert sizes == [None] * 3 + [160] * 3 + [128] * 3
