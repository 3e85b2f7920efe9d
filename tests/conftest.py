"""Shared fixtures: a private cache and home per test, a tiny ONNX classifier and a catalog around it.

The tiny model is built with onnx.helper (no torch export), so tests that run the whole pipeline spend
their time in the harness, not in a model.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.measure.stats import summarize
from harness.records import JobResult
from harness.store import RunInfo

# The README runs the tests as `.venv/bin/python -m pytest` without activating the venv: put the
# interpreter's scripts (the `edgebench` console script) on PATH, as activation would.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

# A shell without job control starts a background job (`pytest ... &`, a CI step run that way) with
# SIGINT ignored, and every process it starts inherits that: `edgebench run` would not stop on Ctrl-C
# and _thread.interrupt_main() would do nothing, so the Ctrl-C tests would measure the launcher, not
# edgebench. Deliver SIGINT as an interactive session does; a Python handler is reset to the default
# across exec, so the processes the tests start get Python's own handler too.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY_SHAPE = (1, 3, 16, 16)
TINY_CLASSES = 10
TINY_EVAL_COUNT = 8


def build_tiny_onnx(path: Path) -> Path:
    """Conv(3->4, 3x3) + Relu + GlobalAveragePool + Flatten + Gemm(4->10), dynamic batch, opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
    conv_b = rng.standard_normal(4).astype(np.float32) * 0.1
    fc_w = rng.standard_normal((TINY_CLASSES, 4)).astype(np.float32)
    fc_b = rng.standard_normal(TINY_CLASSES).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", TINY_CLASSES])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_catalog_yaml(name: str = "tiny-cnn", *, budgets: str = "") -> str:
    text = f"""\
        schema_version: 1
        name: {name}
        description: A four-filter CNN built with onnx.helper for the tests.
        pretrained: false
        source: {{kind: onnx, path: tiny.onnx}}
        input:
          name: input
          shape: [1, 3, 16, 16]
          layout: NCHW
          dtype: float32
          normalization: {{mean: [0.5], std: [0.25]}}
        num_classes: {TINY_CLASSES}
        eval: {{dataset: random-smooth, count: {TINY_EVAL_COUNT}, seed: 1}}
        """
    return textwrap.dedent(text) + textwrap.dedent(budgets)


def local_lab_yaml(cache_dir: Path, *, name: str = "testlab") -> str:
    return textwrap.dedent(
        f"""\
        schema_version: 1
        name: {name}
        devices:
          - name: local
            platform: generic-linux
            transport: local
            python: {sys.executable}
            runtimes: [onnxruntime]
            cache_dir: {cache_dir}
            threads: 1
        """
    )


# The fields issue 2 item 11 promises in every `edgebench results --format json` record.
RECORD_FIELDS = (
    "run_id", "model", "model_sha256", "device", "backend", "precision", "input_shape", "n", "p50_ms",
    "p95_ms", "p99_ms", "p50_ci_ms", "p95_ci_ms", "p99_ci_ms", "mean_ms", "std_ms", "first_inference_ms",
    "valid", "invalid_reasons", "status", "message",
)


def make_result(
    run_id: str,
    job_id: str = "tiny-cnn/onnxruntime-fp32/local",
    *,
    n: int = 500,
    seed: int = 0,
    metrics: dict[str, Any] | None = None,
) -> JobResult:
    """A passed latency result with ``n`` lognormal samples around 2.4 ms, as the pipeline records it."""
    samples = np.ceil(np.random.default_rng(seed).lognormal(np.log(2.4e6), 0.05, n)).astype(np.int64)
    model, variant, device = job_id.split("/")
    return JobResult(
        run_id=run_id,
        job_id=job_id,
        model=model,
        model_sha256="ab" * 32,
        artifact_sha256="cd" * 32,
        device=device,
        platform="generic-linux",
        backend=variant.split("-")[0],
        runtime=variant.split("-")[0],
        precision="fp32",
        input_shape=(1, 3, 16, 16),
        threads=1,
        status="passed",
        message="within budget",
        started_at="2026-11-24T10:00:00.000+00:00",
        finished_at="2026-11-24T10:00:02.000+00:00",
        latency=summarize(samples),
        samples_ns=samples,
        first_inference_ms=3.5,
        load_ms=12.0,
        facts={"os": "Linux", "cpu_model": "test CPU", "runtime": {"runtime": "onnxruntime", "version": "1"}},
        metrics={"stop_reason": "converged", "warmup_iterations": 60, **(metrics or {})},
    )


def make_run(run_id: str, started_at: str = "2026-11-24T10:00:00.000+00:00") -> RunInfo:
    return RunInfo(id=run_id, started_at=started_at, host="testhost", harness_version="0.1.0", lab_name="testlab")


@pytest.fixture(scope="session")
def record_fields() -> tuple[str, ...]:
    return RECORD_FIELDS


@pytest.fixture(name="make_result", scope="session")
def make_result_fixture() -> Callable[..., JobResult]:
    return make_result


@pytest.fixture(name="make_run", scope="session")
def make_run_fixture() -> Callable[..., RunInfo]:
    return make_run


@pytest.fixture(scope="session")
def run_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], Any]], tuple[Path, Any]]:
    """Run an expensive setup once per test session, even across xdist workers; share its JSON result.

    ``run_once(name, produce)`` calls ``produce(directory)`` in the first worker that asks, under a file
    lock, stores what it returns as JSON, and gives every worker ``(directory, result)``.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, shared by the workers

    def run(name: str, produce: Callable[[Path], Any]) -> tuple[Path, Any]:
        root = base / f"once-{name}"
        with (base / f"once-{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            marker = root / "result.json"
            if not marker.exists():
                root.mkdir(exist_ok=True)
                marker.write_text(json.dumps(produce(root)), encoding="utf-8")
            return root, json.loads(marker.read_text(encoding="utf-8"))

    return run


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier's .onnx file, built once per session (per xdist worker)."""
    return build_tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture
def edgebench_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """EDGEBENCH_CACHE and EDGEBENCH_HOME in tmp dirs, so no test touches the user's cache or data."""
    cache = tmp_path / "cache"
    home = tmp_path / "home"
    cache.mkdir()
    home.mkdir()
    monkeypatch.setenv("EDGEBENCH_CACHE", str(cache))
    monkeypatch.setenv("EDGEBENCH_HOME", str(home))
    monkeypatch.delenv("EDGEBENCH_DEBUG", raising=False)
    return tmp_path


@pytest.fixture
def tiny_catalog(tmp_path: Path, tiny_onnx: Path) -> Path:
    """A catalog directory with one entry, tiny-cnn, pointing at the tiny ONNX file."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    (directory / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    (directory / "tiny-cnn.yaml").write_text(tiny_catalog_yaml(), encoding="utf-8")
    return directory


@pytest.fixture(name="tiny_catalog_yaml", scope="session")
def tiny_catalog_yaml_fixture() -> Callable[..., str]:
    """The tiny-cnn catalog entry's text, as a function of its name and an optional budgets block."""
    return tiny_catalog_yaml


@pytest.fixture(scope="session")
def local_lab_text() -> Callable[[Path], str]:
    """A one-device local lab's text, as a function of the device's cache directory."""
    return local_lab_yaml


@pytest.fixture
def local_lab(tmp_path: Path) -> Path:
    """A one-device local lab whose device cache lives in the test's tmp dir."""
    path = tmp_path / "lab.yaml"
    path.write_text(local_lab_yaml(tmp_path / "device"), encoding="utf-8")
    return path


@pytest.fixture
def subprocess_env(edgebench_env: Path) -> Iterator[dict[str, str]]:
    """The environment for an `edgebench` subprocess: the tmp cache and home, one thread per runtime."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("EDGEBENCH_DEBUG", None)
    yield env
