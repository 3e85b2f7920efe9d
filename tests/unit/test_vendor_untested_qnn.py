"""QNN (Snapdragon): the HTP provider options (untested here: needs a Snapdragon with QNN), the same
artifacts run for real through the runner's ONNX Runtime adapter on the CPU execution provider, and that
adapter's refusal, for real, to open the QNN options where the provider is missing.

The artifacts' fixed batch (QNN takes no dynamic shape) and CPU fallback being off are checked with real
onnx/ONNX Runtime: the fallback refusal with ONNX Runtime's Azure provider, which this build has and
which runs no node, standing in for QNN meeting operators it cannot run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from harness.agent.runtimes import RuntimeMissing, onnxruntime_rt
from harness.build.backends import get_backend
from harness.build.backends.protocol import CompileRequest
from harness.build.export import OnnxModel
from harness.errors import ConfigError

SHAPE = (1, 3, 16, 16)


def _dims(path: Path) -> list[list[int | str]]:
    """Each graph input's and output's dimensions: an int where fixed, the symbol's name where dynamic."""
    graph = onnx.load(str(path)).graph
    return [
        [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    ]


def _compile(tiny_onnx: Path, tmp_path: Path, precision: str, shape: tuple[int, ...] = SHAPE) -> Path:
    calibration = np.random.default_rng(1).standard_normal((32, *shape[1:])).astype(np.float32)
    onnx_model = OnnxModel(tiny_onnx, "s", "s", "input", shape)
    request = CompileRequest(onnx_model, precision, tmp_path, calibration=calibration)
    return get_backend("qnn").compile(request)


def test_untested_here_needs_snapdragon_htp_provider_options() -> None:
    options = get_backend("qnn").runner_options("fp16", 4, {"performance_mode": "sustained_high_performance"})
    # QNN alone and CPU fallback off: nodes QNN cannot run fail the session instead of running on the CPU.
    assert options["providers"] == ["QNNExecutionProvider"]
    assert options["session_config"] == {"session.disable_cpu_ep_fallback": "1"}
    assert options["provider_options"][0] == {
        "backend_path": "libQnnHtp.so",
        "htp_performance_mode": "sustained_high_performance",
        "htp_graph_finalization_optimization_mode": "3",
        "enable_htp_fp16_precision": "1",
    }
    int8 = get_backend("qnn").runner_options("int8", 4, {})["provider_options"][0]
    assert int8["enable_htp_fp16_precision"] == "0" and int8["htp_performance_mode"] == "burst"


def test_bad_performance_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"performance_mode='turbo'.*burst, balanced"):
        get_backend("qnn").runner_options("int8", 4, {"performance_mode": "turbo"})


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_cpu_path_runs_the_qnn_artifact_for_real(tiny_onnx: Path, tmp_path: Path, precision: str) -> None:
    calibration = np.random.default_rng(1).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    artifact = _compile(tiny_onnx, tmp_path, precision)
    if precision == "int8":
        assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(artifact)).graph.node}
    options = get_backend("qnn").runner_options(precision, 1, {"provider": "cpu"})
    session = onnxruntime_rt.open_session(str(artifact), "input", options)
    session.bind(calibration[:1])
    session.run_bound()
    assert session.infer(calibration[:4]).shape == (4, 10)
    described = session.describe()
    assert described["providers"] == ["CPUExecutionProvider"]
    assert described["input_shape"] == [1, 3, 16, 16] and described["cpu_ep_fallback"] is True


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_qnn_artifact_has_a_fixed_batch_for_real(tiny_onnx: Path, tmp_path: Path, precision: str) -> None:
    """The reference ONNX has a dynamic batch, which QNN cannot take: the artifact's input and output are fixed
    at the latency input's batch."""
    assert _dims(tiny_onnx) == [["batch", 3, 16, 16], ["batch", 10]]
    assert _dims(_compile(tiny_onnx, tmp_path, precision)) == [[1, 3, 16, 16], [1, 10]]


def test_qnn_fixes_the_batch_the_torch_export_dim_leaves_dynamic(tmp_path: Path) -> None:
    """The exporter reference_onnx uses (torch.export with a batch Dim), for real: the QNN artifact is static."""
    import torch

    from harness.build.export import _export

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10)
    ).eval()
    reference = tmp_path / "reference.onnx"
    _export(model, torch.zeros(SHAPE), reference, "input")
    assert isinstance(_dims(reference)[0][0], str)  # dynamic, as every reference export is
    out = tmp_path / "out"
    out.mkdir()
    artifact = _compile(reference, out, "fp32")
    assert _dims(artifact) == [[1, 3, 16, 16], [1, 10]]
    x = np.random.default_rng(2).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    options = get_backend("qnn").runner_options("fp32", 1, {"provider": "cpu"})
    session = onnxruntime_rt.open_session(str(artifact), "input", options)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.infer(x), expected, rtol=1e-4, atol=1e-5)


def test_fixed_batch_eval_pass_feeds_every_image_and_matches_the_dynamic_model(tiny_onnx: Path, tmp_path: Path) -> None:
    """The runner's eval batches (32 by default) reach a batch-1 model one image at a time, for real: the outputs
    are the dynamic reference's, row for row, also for a batch that is not a multiple of the model's."""
    artifact = _compile(tiny_onnx, tmp_path, "fp32")
    x = np.random.default_rng(3).standard_normal((7, *SHAPE[1:])).astype(np.float32)
    fixed = onnxruntime_rt.open_session(str(artifact), "input", {})
    dynamic = onnxruntime_rt.open_session(str(tiny_onnx), "input", {})
    np.testing.assert_array_equal(fixed.infer(x), dynamic.infer(x))


def test_fixed_batch_eval_pass_pads_a_short_last_chunk(tmp_path: Path, tiny_onnx: Path) -> None:
    """A model fixed at batch 4 gets 7 images as 4 + 3 (padded to 4, the padding's outputs dropped)."""
    artifact = _compile(tiny_onnx, tmp_path, "fp32", shape=(4, *SHAPE[1:]))
    assert _dims(artifact)[0] == [4, 3, 16, 16]
    x = np.random.default_rng(4).standard_normal((7, *SHAPE[1:])).astype(np.float32)
    got = onnxruntime_rt.open_session(str(artifact), "input", {}).infer(x)
    np.testing.assert_allclose(got, onnxruntime_rt.open_session(str(tiny_onnx), "input", {}).infer(x), rtol=1e-6)


def test_latency_batch_other_than_the_fixed_one_is_refused_with_the_batch_to_use(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    artifact = _compile(tiny_onnx, tmp_path, "int8")
    session = onnxruntime_rt.open_session(str(artifact), "input", {})
    with pytest.raises(RuntimeError, match=r"fixed batch of 1, not 4; measure it with batch 1"):
        session.bind(np.zeros((4, *SHAPE[1:]), np.float32))


def test_runs_here_cpu_fallback_off_refuses_a_session_whose_nodes_would_run_on_the_cpu(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    """Real ONNX Runtime: with the QNN options' session config, a provider that cannot run the model's nodes
    (Azure here, standing in for QNN) makes the session refuse, naming the setting; with the old options
    (CPU listed after it, fallback on) the same session opens and the CPU runs every node, unseen."""
    import onnxruntime as ort

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has no Azure provider to stand in for a QNN that cannot run the model")
    artifact = str(_compile(tiny_onnx, tmp_path, "int8"))
    options = get_backend("qnn").runner_options("int8", 1, {})
    options.update(providers=["AzureExecutionProvider"], provider_options=[{}])
    with pytest.raises(RuntimeError) as refused:
        onnxruntime_rt.open_session(artifact, "input", options)
    assert "AzureExecutionProvider cannot run every node of model-qdq.onnx" in str(refused.value)
    assert "session.disable_cpu_ep_fallback=1" in str(refused.value)
    old = {"threads": 1, "providers": ["AzureExecutionProvider", "CPUExecutionProvider"]}
    silent = onnxruntime_rt.open_session(artifact, "input", old)
    assert silent.describe()["cpu_ep_fallback"] is True
    assert silent.infer(np.zeros(SHAPE, np.float32)).shape == (1, 10)  # it ran: on the CPU, under the other name


def test_runs_here_the_default_qnn_options_refuse_to_fall_back_to_the_cpu(tiny_onnx: Path) -> None:
    """Real ONNX Runtime without the QNN execution provider (this machine's): the runner's adapter refuses,
    naming the missing provider, instead of timing the CPU under the NPU's name (ONNX Runtime itself falls
    back to the next provider in the list with no more than a warning)."""
    import onnxruntime as ort

    if "QNNExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the QNN execution provider: nothing is missing to refuse")
    options = get_backend("qnn").runner_options("int8", 1, {})
    with pytest.raises(RuntimeMissing, match=r"has no QNNExecutionProvider \(available: .*CPUExecutionProvider"):
        onnxruntime_rt.open_session(str(tiny_onnx), "input", options)
