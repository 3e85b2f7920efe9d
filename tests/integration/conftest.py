"""Fixtures for tests against real OpenSSH servers on loopback, built on harness.lab.loopback.

Each test that breaks something gets its own small lab (``make_lab``); tests that only use one share a
session lab. When a test's labs stop, no process that ran under their devices may be left: the runner's
command line holds the device's cache directory, inside the lab's directory, which is how we find them.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.catalog import ModelEntry, load_catalog
from harness.lab.inventory import Lab
from harness.lab.loopback import SSHD, LoopbackLab, wait_for_processes
from harness.pipeline import MeasureSettings, Pipeline
from harness.records import JobResult
from harness.store import Store

REPO = Path(__file__).resolve().parents[2]
# The throttling self-check (a calibration workload before and after, cool-down and retry) is about
# measurement fidelity and is tested elsewhere; on this shared machine it would only add 30 s cool-downs.
SETTINGS = MeasureSettings(
    min_iterations=400, min_duration_s=0.2, max_duration_s=3, calibration_reps=0, throttle_retries=0
)


@pytest.fixture(scope="session")
def ssh_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One build cache for the SSH tests (shared by xdist workers), a private home, no SSH agent by accident."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEBENCH_CACHE", str(shared / "edgebench-ssh-cache"))
        mp.setenv("EDGEBENCH_HOME", str(tmp_path_factory.mktemp("edgebench-home")))
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield


@pytest.fixture(scope="session")
def sshd(ssh_environment: None) -> Path:
    if not SSHD.is_file():
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server); these tests need a real sshd")
    return SSHD


@pytest.fixture
def make_lab(sshd: Path, tmp_path: Path) -> Iterator[Callable[..., LoopbackLab]]:
    """``make_lab(n, **options)``: a running loopback lab for this test; after it, fail on leftovers."""
    labs: list[LoopbackLab] = []

    def make(n: int = 2, **options: Any) -> LoopbackLab:
        directory = tmp_path / f"lab{len(labs)}"
        directory.mkdir()
        lab = LoopbackLab(n, directory, **options).__enter__()
        labs.append(lab)
        return lab

    yield make
    # Look while the servers still run: stopping one kills what its sessions still hold, hiding leftovers.
    time.sleep(0.3)  # and not before a process forked at the very end had time to show up
    left = [p for lab in labs for p in wait_for_processes(str(lab.state.directory), gone=True, timeout_s=15)]
    for lab in labs:
        lab.__exit__(None, None, None)
    assert not left, f"processes left on the lab's devices after the test: {left}"


@pytest.fixture(scope="session")
def shared_lab(sshd: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackLab]:
    """A 3-device lab for tests that do not break anything; after the last of them, fail on leftovers."""
    with LoopbackLab(3, tmp_path_factory.mktemp("shared-lab")) as lab:
        yield lab
        # As make_lab: look while the servers still run, and not before a late fork had time to show up.
        time.sleep(0.3)
        left = wait_for_processes(str(lab.state.directory), gone=True, timeout_s=15)
    assert not left, f"processes left on the shared lab's devices after its tests: {left}"


@pytest.fixture(scope="session")
def digits(ssh_environment: None) -> list[ModelEntry]:
    return load_catalog(REPO / "models", "digits-cnn")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "results.sqlite")
    yield db
    db.close()


@pytest.fixture
def run_lab(digits: list[ModelEntry], store: Store) -> Iterator[Callable[[Lab], tuple[Pipeline, dict[str, JobResult]]]]:
    """``pipeline, results = run_lab(lab)``: digits-cnn on ONNX Runtime FP32 on every device, by device.

    The pipeline stays open (its devices connected) until the test ends, so a test can run more jobs.
    """
    pipelines: list[Pipeline] = []

    def run(lab: Lab) -> tuple[Pipeline, dict[str, JobResult]]:
        pipeline = Pipeline(lab, digits, store, settings=SETTINGS, project_dir=REPO)
        pipelines.append(pipeline)
        jobs = [j for j in pipeline.plan() if (j.variant.backend, j.variant.precision) == ("onnxruntime", "fp32")]
        results = {job.device.name: pipeline.run_job(job) for job in jobs}
        return pipeline, results

    yield run
    for pipeline in pipelines:
        pipeline.finish()


FAKE_ONNXRUNTIME = textwrap.dedent(
    '''\
    """A stand-in for onnxruntime that misbehaves as EDGEBENCH_FAKE_ORT says: missing, hang or crash."""
    import os
    import subprocess
    import sys
    import time

    MODE = os.environ.get("EDGEBENCH_FAKE_ORT", "")
    if MODE == "missing":
        raise ImportError("libonnxruntime.so.1: cannot open shared object file (simulated)")
    __version__ = "0.0-fake"


    class SessionOptions:
        def __init__(self):
            if MODE == "hang":
                # A child of its own as well: the kill must take the runner's whole session.
                marker = os.environ.get("EDGEBENCH_FAKE_MARKER", "")
                subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
                time.sleep(600)
            if MODE == "crash":
                sys.stderr.write("fake onnxruntime: illegal instruction in the conv kernel (simulated)\\n")
                sys.stderr.flush()
                os.abort()
    '''
)


@pytest.fixture
def fake_runtime(tmp_path: Path) -> Callable[[str, str], dict[str, str]]:
    """``env = fake_runtime(mode, marker)``: a device env that puts a misbehaving onnxruntime first."""
    directory = tmp_path / "fake-site"
    (directory / "onnxruntime").mkdir(parents=True)
    (directory / "onnxruntime" / "__init__.py").write_text(FAKE_ONNXRUNTIME, encoding="utf-8")

    def env(mode: str, marker: str) -> dict[str, str]:
        return {"PYTHONPATH": str(directory), "EDGEBENCH_FAKE_ORT": mode, "EDGEBENCH_FAKE_MARKER": marker}

    return env
