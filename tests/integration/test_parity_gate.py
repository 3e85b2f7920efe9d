"""Parity, robustness and shadow comparison through the real pipeline and runner (ONNX Runtime, local device)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from harness.catalog import load_catalog
from harness.lab.inventory import Device, Lab
from harness.pipeline import MeasureSettings, Pipeline
from harness.records import Job, JobResult, Variant
from harness.store import Store

MODELS = Path(__file__).resolve().parents[2] / "models"
QUICK = MeasureSettings(min_iterations=400, min_duration_s=0.2, max_duration_s=2.0, calibration_reps=0)


def _catalog(tmp: Path, **entries: Mapping[str, object]) -> Path:
    """A catalog of digits-cnn variants: each keyword is a model name, its value overrides the YAML."""
    base = yaml.safe_load((MODELS / "digits-cnn.yaml").read_text())
    directory = tmp / "models"
    directory.mkdir()
    for name, override in {"digits-cnn": {}, **entries}.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump({**base, "name": name, **override}))
    return directory


def _pipeline(tmp: Path, catalog: Path, model: str) -> Pipeline:
    lab = Lab(name="local", devices=(Device(name="local", platform="generic-linux", transport="local", threads=2),))
    return Pipeline(
        lab,
        load_catalog(catalog, model),
        Store(tmp / "results.sqlite"),
        catalog=load_catalog(catalog),
        backends={"onnxruntime"},
        settings=QUICK,
    )


def _run(pipeline: Pipeline, precision: str, kind: str = "latency") -> JobResult:
    job = next(j for j in pipeline.plan([kind]) if j.variant.precision == precision)
    return pipeline.result_for(job)


def test_int8_calibrated_on_constant_images_fails_the_parity_gate(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, **{"digits-broken": {"calibration": {"dataset": "constant", "count": 64}}})
    pipeline = _pipeline(tmp_path, catalog, "digits-broken")
    sound = _run(pipeline, "fp32")
    broken = _run(pipeline, "int8")
    pipeline.finish()
    assert not sound.failed("parity"), sound.failed("parity")
    failures = " ".join(broken.failed("parity"))
    assert broken.status == "failed"
    assert "top-1 drop" in failures and "95% CI" in failures and "exceeds budget 1.0 pp" in failures
    drop = broken.metrics["top1_drop_pp"]
    interval = broken.metrics["top1_drop_ci_pp"]
    assert isinstance(interval, list)
    low, high = interval
    assert isinstance(drop, float) and drop > 10 and low <= drop <= high
    # The same variant is also compared with the FP32 variant measured on the device itself.
    assert broken.metrics["device_fp32_top1_agreement"] == pytest.approx(broken.metrics["top1_agreement"], abs=0.01)


def test_robustness_reports_every_corruption_and_names_the_worst_when_over_budget(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, **{"digits-strict": {"budgets": {"mce": 0.5}}})
    pipeline = _pipeline(tmp_path, catalog, "digits-strict")
    result = _run(pipeline, "int8", kind="robustness")
    pipeline.finish()
    assert result.kind == "robustness"
    cells = result.metrics["corruption_acc"]
    assert isinstance(cells, dict) and len(cells) == 19 * 5
    worst = result.metrics["worst_corruption"]
    assert worst in {name.rsplit("-", 1)[0] for name in cells}
    (message,) = result.failed("robustness")
    assert message.startswith("mCE ") and "exceeds budget 0.5" in message and f"worst corruption {worst}" in message


def test_a_candidate_is_compared_with_the_production_model_on_the_same_device(tmp_path: Path) -> None:
    candidate = {"source": {"kind": "torch", "factory": "harness.zoo.digits:digits_cnn", "args": {"seed": 1}}}
    catalog = _catalog(tmp_path, **{"digits-candidate": {**candidate, "production": "digits-cnn"}})
    pipeline = _pipeline(tmp_path, catalog, "digits-candidate")
    result = _run(pipeline, "fp32")
    production = pipeline.result_for(
        Job(load_catalog(catalog, "digits-cnn")[0], Variant("onnxruntime", "fp32", threads=2), pipeline.lab.devices[0])
    )
    pipeline.finish()
    m = result.metrics
    assert m["production_model"] == "digits-cnn"
    # Two trainings with different seeds agree on most, not all, held-out digits.
    assert 0.9 < float(m["production_top1_agreement"]) < 1.0  # type: ignore[arg-type]
    interval, delta = m["production_acc_delta_ci_pp"], m["production_acc_delta_pp"]
    assert isinstance(interval, list) and isinstance(delta, float)
    low, high = interval
    assert low <= delta <= high
    assert result.latency is not None and production.latency is not None
    expected = result.latency.p50.value_ms - production.latency.p50.value_ms
    assert m["production_p50_delta_ms"] == pytest.approx(expected)


def test_a_candidate_less_accurate_than_production_fails_its_production_budget(tmp_path: Path) -> None:
    # Trained for one epoch instead of thirty: less accurate than the production model on the same digits.
    undertrained = {"kind": "torch", "factory": "harness.zoo.digits:digits_cnn", "args": {"seed": 1, "epochs": 1}}
    budgets = {"production_top1_drop_pp": 0.5, "production_p99_ratio": 20.0}
    entry = {"source": undertrained, "production": "digits-cnn", "budgets": {"top1_drop_pp": 1.0, **budgets}}
    catalog = _catalog(tmp_path, **{"digits-undertrained": entry})
    pipeline = _pipeline(tmp_path, catalog, "digits-undertrained")
    result = _run(pipeline, "fp32")
    pipeline.finish()
    m = result.metrics
    drop = -float(m["production_acc_delta_pp"])  # type: ignore[arg-type]
    assert drop > 0.5, m
    assert result.status == "failed"
    # The accuracy budget fails, naming both top-1s; a P99 within 20x production's passes.
    (message,) = result.failed("production")
    assert " pp below production's " in message and message.endswith("over budget production_top1_drop_pp 0.5 pp")
    assert m["production_gated"] == ["production_top1_drop_pp", "production_p99_ratio"]
    assert message in result.message  # the job's message names the failure a release engineer reads
