"""Every target runnable here, for real: compile on the host, run in the runner subprocess on devices/local.yaml.

digits-cnn x (ONNX Runtime, OpenVINO, LiteRT) x (fp32, fp16, int8), planned from the generic-linux
profile, each through Pipeline.run_job: the real compile step, the real runner as a local subprocess,
the host's statistics and parity. And the bad inputs a user meets first: each is a one-line error
raised before anything is deployed.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from harness.build.backends.litert import toolchain_python
from harness.catalog import load_catalog, load_entry
from harness.errors import BuildError
from harness.lab.inventory import Lab, load_lab
from harness.lab.platforms import load_platform
from harness.pipeline import MeasureSettings, Pipeline
from harness.plan import plan_variants
from harness.records import Job, JobResult, Variant
from harness.store import Store

REPO = Path(__file__).resolve().parents[2]
SETTINGS = MeasureSettings(min_iterations=300, min_duration_s=0.3, max_duration_s=8.0, warmup_max_iterations=200)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _litert_available() -> bool:
    try:
        toolchain_python()
    except BuildError:
        return False
    return True


def _local_lab(tmp: Path) -> Lab:
    """devices/local.yaml as shipped, with its device cache moved into the test's tmp dir."""
    lab = load_lab(REPO / "devices" / "local.yaml")
    device = lab.devices[0].model_copy(update={"cache_dir": str(tmp / "device")})
    return lab.model_copy(update={"devices": (device,)})


@dataclass(frozen=True)
class DigitsRun:
    results: dict[str, JobResult]  # by variant id
    artifacts: dict[str, Path]  # the compiled file each variant ran, by variant id


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DigitsRun]:
    """All planned digits-cnn variants on the local device, run once for the module, with their artifacts."""
    tmp = tmp_path_factory.mktemp("targets")
    lab = _local_lab(tmp)
    device = lab.devices[0]
    model = load_entry(REPO / "models" / "digits-cnn.yaml")
    profile = load_platform(device.platform, directory=REPO / "devices" / "platforms")
    backends = {"onnxruntime", "openvino"} | ({"litert"} if _litert_available() else set())
    variants = plan_variants(model, device, profile, backends=backends)
    pipeline = Pipeline(lab, [model], Store(tmp / "results.sqlite"), settings=SETTINGS)
    try:
        results, artifacts = {}, {}
        for v in variants:
            job = Job(model, v, device)
            results[v.id] = pipeline.run_job(job)
            artifacts[v.id], sha = pipeline.compile(job)  # the build cache's copy: no second build
            assert sha == results[v.id].artifact_sha256, f"{v.id}: the cached artifact is not the one that ran"
        yield DigitsRun(results, artifacts)
    finally:
        pipeline.finish()


@pytest.fixture(scope="module")
def digits_results(digits_run: DigitsRun) -> dict[str, JobResult]:
    return digits_run.results


def _skip_unless_planned(backend: str) -> None:
    if backend == "litert" and not _litert_available():
        pytest.skip("LiteRT toolchain not installed here (litert-torch, see docs/targets.md); .ci/setup installs it")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_each_runtime_runs_three_precisions_with_valid_statistics(
    digits_results: dict[str, JobResult], backend: str
) -> None:
    _skip_unless_planned(backend)
    for precision in ("fp32", "fp16", "int8"):
        job_id = Variant(backend, precision, threads=2).id
        assert job_id in digits_results, f"{job_id} was not planned: {sorted(digits_results)}"
        result = digits_results[job_id]
        assert result.status in ("passed", "failed"), f"{job_id}: {result.message}"
        assert result.runtime == backend
        assert result.latency is not None and result.latency.valid, f"{job_id}: {result.latency}"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_int8_agrees_with_fp32_on_digits(digits_results: dict[str, JobResult], backend: str) -> None:
    """INT8 keeps >= 98% top-1 agreement with the FP32 model, on the device and against the host."""
    _skip_unless_planned(backend)
    result = digits_results[Variant(backend, "int8", threads=2).id]
    assert result.status != "error", result.message
    metrics = result.flat()
    assert metrics["top1_agreement"] >= 0.98
    assert metrics["device_fp32_top1_agreement"] >= 0.98
    assert metrics["top1_acc"] >= 0.9


def test_openvino_fp32_requests_f32_and_matches_host_onnx_runtime(digits_results: dict[str, JobResult]) -> None:
    """The runner asks OpenVINO for f32 inference, and the FP32 logits match the host's ONNX Runtime within 1e-4.

    On a CPU with bf16 OpenVINO would run an FP32 IR in bf16 without the hint; this EPYC has no bf16, so it
    applies f32 with or without it. What can be checked here is the request, and logits at a tolerance bf16
    could not meet: f32 is off by about 1e-5 here, while rounding only the weights and input to bf16 moves
    these logits (up to about 38) by 0.1.
    """
    result = digits_results[Variant("openvino", "fp32", threads=2).id]
    runtime = result.facts["runtime"]
    assert runtime["requested"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert runtime["applied"]["INFERENCE_PRECISION_HINT"] == "f32"  # here f32 with or without the request
    assert runtime["applied"]["INFERENCE_NUM_THREADS"] == "2"
    metrics = result.flat()
    assert metrics["max_abs_err"] < 1e-4, f"FP32 logits off the host ONNX Runtime by {metrics['max_abs_err']:.2e}"
    assert metrics["top1_agreement"] == 1.0


def _onnx_contents(path: Path) -> tuple[set[int], set[str]]:
    """The element types of an ONNX file's initializers and its op types."""
    model = onnx.load(str(path))
    return {t.data_type for t in model.graph.initializer}, {n.op_type for n in model.graph.node}


def _ir_contents(path: Path) -> tuple[set[str], set[str]]:
    """The element types of an IR's constants and its layer types, read from the zip's model.xml."""
    xml = zipfile.ZipFile(path).read("model.xml").decode()
    consts = re.findall(r'<layer [^>]*type="Const"[^>]*>\s*<data [^>]*element_type="(\w+)"', xml)
    return set(consts), set(re.findall(r'<layer [^>]*type="(\w+)"', xml))


def _tflite_contents(path: Path) -> set[str]:
    """The dtypes of a .tflite model's tensors, read by the LiteRT interpreter the runner uses."""
    from ai_edge_litert.interpreter import Interpreter

    return {np.dtype(t["dtype"]).name for t in Interpreter(model_path=str(path)).get_tensor_details()}


QDQ = {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_fp16_and_int8_artifacts_are_what_they_claim(digits_run: DigitsRun, backend: str) -> None:
    """Each precision's file holds that precision (no silent fallback to the FP32 file): FP16 weights in
    float16, INT8 quantise nodes or int8 tensors, FP32 neither."""
    _skip_unless_planned(backend)
    fp32, fp16, int8 = (digits_run.artifacts[Variant(backend, p, threads=2).id] for p in ("fp32", "fp16", "int8"))
    if backend == "onnxruntime":
        (types32, ops32), (types16, _), (types8, ops8) = (_onnx_contents(a) for a in (fp32, fp16, int8))
        assert onnx.TensorProto.FLOAT16 not in types32 and not ops32 & QDQ
        assert onnx.TensorProto.FLOAT16 in types16 and onnx.TensorProto.FLOAT not in types16
        assert ops8 >= QDQ and types8 & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    elif backend == "openvino":
        (consts32, layers32), (consts16, _), (_, layers8) = (_ir_contents(a) for a in (fp32, fp16, int8))
        assert "f16" not in consts32 and "FakeQuantize" not in layers32
        assert "f16" in consts16
        assert layers8 & {"FakeQuantize", "FakeConvert"}
    else:
        dtypes32, dtypes16, dtypes8 = (_tflite_contents(a) for a in (fp32, fp16, int8))
        assert "float16" not in dtypes32 and "int8" not in dtypes32
        assert "float16" in dtypes16
        assert "int8" in dtypes8


def _batches(tmp_path: Path, backend: str, batches: tuple[int, ...]) -> dict[int, JobResult]:
    lab = _local_lab(tmp_path)
    model = load_entry(REPO / "models" / "digits-cnn.yaml")
    results = {}
    for batch in batches:
        settings = MeasureSettings(
            iterations=400, warmup_max_iterations=100, batch=batch, throttle_retries=0, calibration_reps=0
        )
        pipeline = Pipeline(lab, [model], Store(tmp_path / f"b{batch}.sqlite"), settings=settings)
        try:
            results[batch] = pipeline.run_job(Job(model, Variant(backend, "fp32", threads=1), lab.devices[0]))
        finally:
            pipeline.finish()
    return results


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_batch_of_sixteen_is_timed_on_the_runtime(tmp_path: Path, backend: str) -> None:
    """batch: 16 reaches the runtime: the timed call takes sixteen images, and the eval pass still agrees with
    the host reference image for image (parity holds).

    The digits CNN costs about 0.03-0.1 ms a call, mostly fixed overhead, and this VM's P50 at batch 1 moves
    between runs by up to 1.7x (slow bursts). So the check uses batch 16 (compute dominates: 3-5x a single
    image here) and the fastest call, which a burst of slow calls cannot lower."""
    results = _batches(tmp_path, backend, (1, 16))
    one, many = results[1], results[16]
    assert many.status == "passed", many.message
    assert many.metrics["batch"] == 16 and many.flat()["top1_agreement"] >= 0.99
    assert one.latency is not None and many.latency is not None
    assert many.latency.min_ms > 2 * one.latency.min_ms, "sixteen images take longer than one"


def test_a_litert_model_converted_at_batch_one_says_so_when_asked_for_four(tmp_path: Path) -> None:
    """litert-torch fixes the sample batch in the graph's reshapes: batch 4 is a one-line error with the fix."""
    if not _litert_available():
        pytest.skip("LiteRT toolchain not installed here (litert-torch, see docs/targets.md)")
    four = _batches(tmp_path, "litert", (4,))[4]
    assert four.status == "error" and "\n" not in four.message
    assert "this .tflite cannot run at batch 4 (its graph fixes batch 1" in four.message
    assert "measure it with batch 1" in four.message


# ---- bad input: one line, before anything is deployed -------------------------------------------
@pytest.fixture
def tiny_pipeline(tmp_path: Path, edgebench_env: Path, tiny_catalog: Path) -> Iterator[Pipeline]:
    lab = _local_lab(tmp_path)
    pipeline = Pipeline(lab, load_catalog(tiny_catalog), Store(tmp_path / "r.sqlite"), settings=SETTINGS)
    yield pipeline
    pipeline.finish()


def _run(pipeline: Pipeline, catalog_file: Path, variant: Variant) -> JobResult:
    model = load_entry(catalog_file)
    result = pipeline.run_job(Job(model, variant, pipeline.lab.devices[0]))
    assert result.status == "error"
    assert "\n" not in result.message
    assert pipeline.links["local"].transport is None, "nothing may be deployed for bad input"
    return result


def test_corrupt_onnx_is_a_one_line_error_before_deploy(tiny_pipeline: Pipeline, tiny_catalog: Path) -> None:
    (tiny_catalog / "tiny.onnx").write_bytes(b"\x08\x07 this is not protobuf \xff\xfe")
    result = _run(tiny_pipeline, tiny_catalog / "tiny-cnn.yaml", Variant("openvino", "fp32"))
    assert "is not a valid ONNX model" in result.message


def test_input_shape_that_does_not_match_the_catalog(tiny_pipeline: Pipeline, tiny_catalog: Path) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(entry.read_text().replace("shape: [1, 3, 16, 16]", "shape: [1, 3, 20, 20]"))
    result = _run(tiny_pipeline, entry, Variant("onnxruntime", "fp16"))
    assert "input shape [1, 3, 20, 20] does not match the model's input" in result.message
    assert "input.shape" in result.message


def test_precision_the_runtime_does_not_support(tiny_pipeline: Pipeline, tiny_catalog: Path) -> None:
    result = _run(tiny_pipeline, tiny_catalog / "tiny-cnn.yaml", Variant("openvino", "int4"))
    assert result.message == (
        "precision: openvino does not support precision 'int4'; fix: use one of: fp32, fp16, int8"
    )
