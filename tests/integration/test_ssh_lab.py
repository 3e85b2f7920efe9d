"""The loopback lab end to end: lab up/down, devices check, the suite on 3 devices, a cached second run."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import main
from harness.cli.lab import devices_app, lab_app
from harness.lab.health import check_device
from harness.lab.inventory import Device, Lab, load_lab
from harness.lab.loopback import LoopbackLab, load_state, rekey, stop_server
from harness.pipeline import Pipeline
from harness.records import JobResult
from harness.store import Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RunLab = Callable[[Lab], tuple[Pipeline, dict[str, JobResult]]]


def test_lab_up_writes_a_loadable_inventory_and_down_stops_exactly_its_servers(sshd: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    first, second = tmp_path / "a" / "lab.yaml", tmp_path / "b" / "lab.yaml"
    for out in (first, second):
        done = runner.invoke(lab_app, ["up", "--devices", "2", "--out", str(out)])
        assert done.exit_code == 0, done.output
        assert f"stop: edgebench lab down --lab {out.resolve()}" in done.output

    lab = load_lab(first)
    assert [d.transport for d in lab.devices] == ["ssh", "ssh"]
    assert all(d.python == sys.executable and d.host == "127.0.0.1" for d in lab.devices)
    assert len({d.cache_dir for d in lab.devices}) == len({d.port for d in lab.devices}) == 2
    first_servers, second_servers = load_state(first).servers, load_state(second).servers
    assert all(s.pid() is not None for s in (*first_servers, *second_servers))

    done = runner.invoke(lab_app, ["down", "--lab", str(first)])
    assert done.exit_code == 0 and "stopped 2 server(s)" in done.output
    assert all(s.pid() is None for s in first_servers)
    assert all(s.pid() is not None for s in second_servers)  # the other lab is untouched
    assert "no server of this lab was running" in runner.invoke(lab_app, ["down", "--lab", str(first)]).output
    runner.invoke(lab_app, ["down", "--lab", str(second)])
    assert all(s.pid() is None for s in second_servers)


def test_devices_check_shows_healthy_degraded_offline_and_records_them(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    loop = make_lab(3, runtimes=[["onnxruntime"], ["onnxruntime", "tensorrt"], None])
    stop_server(loop.server("loop-3"))
    db = tmp_path / "health.sqlite"
    runner = CliRunner()
    done = runner.invoke(devices_app, ["check", "--lab", str(loop.lab_file), "--db", str(db)], env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert "1 healthy, 1 degraded, 1 offline" in done.output

    store = Store(db)
    health = {row["device"]: row for row in store.health()}
    store.close()
    assert {name: row["state"] for name, row in health.items()} == {
        "loop-1": "healthy",
        "loop-2": "degraded",
        "loop-3": "offline",
    }
    assert "declares runtime 'tensorrt' but it does not load" in health["loop-2"]["reason"]
    assert "connection refused" in health["loop-3"]["reason"]
    facts = health["loop-1"]["facts"]
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["runtimes"]["onnxruntime"] and facts["free_disk_mb"] > 0
    assert facts["device_facts"]["kernel"] == os.uname().release

    strict = runner.invoke(devices_app, ["check", "--lab", str(loop.lab_file), "--db", str(db), "--strict"])
    assert strict.exit_code == 1


def test_health_names_the_step_that_fails(shared_lab: LoopbackLab, tmp_path: Path) -> None:
    device = shared_lab.lab.devices[0]
    no_python = check_device(device.model_copy(update={"python": "/opt/nowhere/bin/python3"}))
    assert (no_python.state, no_python.reachable, no_python.authenticated) == ("offline", True, True)
    assert "its Python /opt/nowhere/bin/python3 does not run (exit 127" in no_python.reason

    broken = tmp_path / "site" / "numpy"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('numpy built for another CPU (simulated)')\n")
    no_numpy = check_device(device.model_copy(update={"env": {"PYTHONPATH": str(broken.parent)}}))
    assert no_numpy.state == "offline"
    assert "numpy does not import" in no_numpy.reason and "(simulated)" in no_numpy.reason

    wrong_key = check_device(device.model_copy(update={"identity": str(tmp_path / "missing_key")}))
    assert (wrong_key.state, wrong_key.authenticated) == ("offline", False)
    assert "identity file" in wrong_key.reason


def _stand_in_tegrastats(directory: Path, line: str) -> Path:
    """A platform-profile folder whose jetson-orin telemetry is a stand-in tegrastats printing ``line``."""
    tool = directory / "tegrastats"
    tool.write_text(
        f"#!{sys.executable}\nimport time\nwhile True:\n    print({line!r}, flush=True)\n    time.sleep(0.1)\n",
        encoding="utf-8",
    )
    tool.chmod(0o755)
    profiles = directory / "platforms"
    profiles.mkdir()
    (profiles / "jetson-orin.yaml").write_text(
        "schema_version: 1\nname: jetson-orin\nruntimes: {onnxruntime: [fp32]}\ntelemetry:\n  power:\n"
        f"    - {{kind: command, label: rails, unit: mW, command: ['{tool}'], parser: tegrastats}}\n",
        encoding="utf-8",
    )
    return profiles


def test_a_hot_device_with_little_disk_is_degraded_and_says_why(
    ssh_environment: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real check on a local device: its junction reads 91.5 C (a stand-in tegrastats: no Jetson
    here) and its cache disk has less free space than the check is asked to want."""
    profiles = _stand_in_tegrastats(tmp_path, "RAM 1/2MB CPU [5%@1190] GPU@61C tj@91.5C VDD_IN 9000mW/9000mW")
    monkeypatch.setenv("EDGEBENCH_PLATFORMS", str(profiles))
    cache = tmp_path / "cache"
    device = Device(name="jetson", platform="jetson-orin", transport="local", cache_dir=str(cache))
    want_mb = shutil.disk_usage(tmp_path).free / 2**20 + 10_000
    record = check_device(device, min_free_mb=want_mb)
    assert record.state == "degraded"
    assert f"MB free under {cache} (want {want_mb:.0f} MB); free space or move cache_dir" in record.reason
    assert "running hot: tj at 92 °C" in record.reason
    assert record.max_temperature_c == 91.5


def test_devices_check_reads_the_profile_sensors_of_a_stand_in_tegrastats(
    ssh_environment: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health check runs the platform profile's readers: here a stand-in for tegrastats (no Jetson
    here) reports the junction at 96 C, which no sysfs file on this machine could have shown."""
    profiles = _stand_in_tegrastats(tmp_path, "RAM 1/2MB CPU [5%@1190] GPU@61C tj@96.0C VDD_IN 9000mW/9000mW")
    monkeypatch.setenv("EDGEBENCH_PLATFORMS", str(profiles))
    device = Device(name="orin", platform="jetson-orin", transport="local", cache_dir=str(tmp_path / "cache"))
    record = check_device(device)
    assert record.state == "degraded"
    assert "running hot: tj at 96 °C" in record.reason
    assert record.temperatures_c == {"gpu": 61.0, "tj": 96.0} and record.telemetry_errors == ()


def test_three_devices_run_and_store_their_facts_and_a_second_run_uploads_nothing(
    shared_lab: LoopbackLab, run_lab: RunLab, caplog: pytest.LogCaptureFixture
) -> None:
    first, results = run_lab(shared_lab.lab)
    assert sorted(results) == ["loop-1", "loop-2", "loop-3"]
    for name, result in results.items():
        assert result.status in ("passed", "failed"), result.message
        assert result.latency is not None and result.latency.valid
        stored = [r for r in first.results_store().results(first.run_id) if r["device"] == name]
        assert len(stored) == 1 and stored[0]["n"] == result.latency.n
    facts = first.results_store().device_facts(first.run_id)
    assert sorted(facts) == ["loop-1", "loop-2", "loop-3"]
    for device_facts in facts.values():
        assert device_facts["kernel"] == os.uname().release
        assert device_facts["python_executable"] == sys.executable and device_facts["numpy"]
        assert device_facts["runtime"]["runtime"] == "onnxruntime"

    with caplog.at_level(logging.INFO, logger="harness.deploy"):
        second, results = run_lab(shared_lab.lab)
    assert all(r.status in ("passed", "failed") for r in results.values())
    for name, link in second.links.items():
        assert link.cache is not None
        assert (link.cache.stats.uploaded_files, link.cache.stats.uploaded_bytes) == (0, 0), name
        assert f"device {name}: " in caplog.text
    assert caplog.text.count("uploaded 0 bytes") >= 3


def _run_suites(
    lab: LoopbackLab, tmp_path: Path, target: Path, select: str, *extra: str
) -> tuple[str, list[dict[str, Any]]]:
    """Run suites in a child pytest against the loopback lab (digits-cnn, --quick); its stdout and stored records."""
    db = tmp_path / "suites.sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(target), "--lab", str(lab.lab_file), "--models", "digits-cnn",
         "--quick", "--db", str(db), "-k", select, "-q", "-p", "no:cacheprovider", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "EDGEBENCH_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    store = Store(db)
    records = store.results(store.resolve_run("latest"))
    store.close()
    return done.stdout, records


def test_the_latency_suite_runs_unchanged_on_a_loopback_lab(shared_lab: LoopbackLab, tmp_path: Path) -> None:
    stdout, records = _run_suites(shared_lab, tmp_path, REPO / "suites" / "test_latency.py", "onnxruntime-fp32")
    assert "3 passed" in stdout
    assert sorted(r["device"] for r in records) == ["loop-1", "loop-2", "loop-3"]
    assert all(r["valid"] for r in records)


def test_the_interleaved_suite_compares_variants_over_ssh(shared_lab: LoopbackLab, tmp_path: Path) -> None:
    """One runner process on the SSH device times every ONNX Runtime variant and the A/A copy in shuffled rounds."""
    suite = REPO / "suites" / "test_interleaved.py"
    stdout, records = _run_suites(shared_lab, tmp_path, suite, "loop-2", "--interleave", "--backends", "onnxruntime")
    assert "1 passed" in stdout
    interleaved = [r for r in records if r["kind"] == "interleaved"]
    assert sorted(r["precision"] for r in interleaved) == ["fp16", "fp32", "int8"]
    assert {r["device"] for r in interleaved} == {"loop-2"}
    for r in interleaved:
        assert r["aa_check"]["tolerance"] == 0.01 and r["interleave_mode"] in ("in_process", "separate_processes")
        assert r["valid"], r["invalid_reasons"]


def test_every_suite_runs_every_target_on_a_loopback_device(shared_lab: LoopbackLab, tmp_path: Path) -> None:
    """Issues [targets] and [parity] over real SSH: runtimes x precisions, parity and robustness per variant."""
    from harness.build.backends.litert import default_toolchain_dir

    runtimes = {"onnxruntime", "openvino"}
    if (default_toolchain_dir() / "bin" / "python").is_file():
        runtimes.add("litert")  # LiteRT conversion needs its optional toolchain venv (.ci/setup installs it)
    _, records = _run_suites(shared_lab, tmp_path, REPO / "suites", "loop-1")
    latency = [r for r in records if r["kind"] == "latency" and r["backend"] in runtimes]
    robust = [r for r in records if r["kind"] == "robustness" and r["backend"] in runtimes]
    grid = {(r["backend"], r["precision"]) for r in latency if r["valid"] and r["status"] == "passed"}
    assert grid == {(b, p) for b in runtimes for p in ("fp32", "fp16", "int8")}
    assert all(r["device"] == "loop-1" and r["top1_agreement"] >= 0.98 for r in latency)
    assert {(r["backend"], r["precision"]) for r in robust} == grid
    assert all(len(r["corruption_acc"]) == 95 and r["worst_corruption"] for r in robust)


def test_a_changed_host_key_on_one_device_fails_the_run_and_that_device_s_test(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One device of two answers with a new host key (a man-in-the-middle, or a reinstall nobody confirmed).
    The other device's jobs pass, yet `edgebench run` ends the run in error and exits 2, and under pytest
    that device's test fails: a skip would let the nightly lab go green without it."""
    loop = make_lab(2)
    rekey(loop.server("loop-1"))
    port = loop.server("loop-1").port
    db = tmp_path / "run.sqlite"
    code = main(
        ["run", "--lab", str(loop.lab_file), "--catalog", str(REPO / "models"), "--models", "digits-cnn",
         "--backends", "onnxruntime", "--kinds", "latency", "--quick", "--max-duration", "0.3",
         "--db", str(db), "--report", str(tmp_path / "run.html")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 2, out
    store = Store(db)
    run_id = store.resolve_run("latest")
    records, run = store.results(run_id), store.run_info(run_id)
    store.close()
    assert f"run: {run_id} (error)" in out and run["status"] == "error"
    assert {r["status"] for r in records if r["device"] == "loop-2"} <= {"passed", "failed"}
    refused = [r for r in records if r["device"] == "loop-1"]
    assert refused and {r["status"] for r in refused} == {"error"}
    for record in refused:
        message = record["message"]
        assert "\n" not in message and message.startswith("device 'loop-1': ")
        assert "host key CHANGED" in message and f"ssh-keygen -R '[127.0.0.1]:{port}'" in message
        assert "; fix: " in message

    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "suites" / "test_latency.py"), "--lab", str(loop.lab_file),
         "--models", "digits-cnn", "--quick", "--db", str(tmp_path / "suite.sqlite"),
         "--report", str(tmp_path / "suite.html"), "-k", "loop-1 and onnxruntime-fp32", "-q", "-rfE",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 failed" in done.stdout and "skipped" not in done.stdout
    assert re.search(
        r"^FAILED suites/test_latency\.py::test_latency\[digits-cnn/onnxruntime-fp32\S*/loop-1\]", done.stdout, re.M
    )
    assert "device 'loop-1': " in done.stdout and "host key CHANGED" in done.stdout
