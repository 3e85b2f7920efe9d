"""Faults against real sshd: in each, the faulty device's job skips (unreachable, a runtime missing) or
errors (anything else, a refused host key or login among them) with a reason a user can act on, the
other device carries on, nothing partial is stored as a valid result, and no process of ours is
left on the device (``make_lab`` fails the test if one is).

Disk full: a 256 KiB tmpfs mounted over the device's cache directory (this runs as root here; without
the right to mount, that test skips and says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.catalog import ModelEntry
from harness.lab.inventory import Device, Lab
from harness.lab.loopback import LoopbackLab, rekey, stop_server, wait_for_processes
from harness.pipeline import Pipeline
from harness.records import JobResult
from harness.store import Store

pytestmark = pytest.mark.integration

RunLab = Callable[[Lab], tuple[Pipeline, dict[str, JobResult]]]
FakeRuntime = Callable[[str, str], dict[str, str]]
HEALTHY = "loop-2"


def with_device(lab: Lab, name: str, **changes: Any) -> Lab:
    """The lab with one device's fields changed, validated again as if written in its YAML."""
    devices = tuple(
        Device.model_validate({**d.model_dump(exclude_unset=True), **changes}) if d.name == name else d
        for d in lab.devices
    )
    return lab.model_copy(update={"devices": devices})


def assert_carried_on(results: dict[str, JobResult]) -> None:
    """The healthy device's job ran to the end with samples and its facts."""
    result = results[HEALTHY]
    assert result.status in ("passed", "failed"), result.message
    assert result.latency is not None and result.latency.n >= 400
    assert result.facts.get("python_executable") == sys.executable


def assert_nothing_valid_stored(store: Store, pipeline: Pipeline, device: str) -> None:
    records = [r for r in store.results(pipeline.run_id) if r["device"] == device]
    assert records
    for record in records:
        assert record["status"] in ("error", "skipped"), record
        assert not record["valid"] and not record["n"], record
        assert store.samples_of(pipeline.run_id, record["job_id"]).size == 0


def runner_of(loop: LoopbackLab, device: str) -> str:
    """A marker in the command line of every runner on that device: its cache directory."""
    return str(loop.server(device).cache_dir)


def when_runner_starts(marker: str, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` as soon as a process under ``marker`` appears (in a thread)."""

    def watch() -> None:
        if wait_for_processes(marker, gone=False, timeout_s=60):
            action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_device_down_at_start_skips_with_reason(make_lab: Callable[..., LoopbackLab], run_lab: RunLab) -> None:
    loop = make_lab(2)
    stop_server(loop.server("loop-1"))
    pipeline, results = run_lab(loop.lab)
    assert results["loop-1"].status == "skipped"
    assert "connection refused" in results["loop-1"].message
    assert "fix:" in results["loop-1"].message
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")


def test_sshd_killed_mid_run(make_lab: Callable[..., LoopbackLab], run_lab: RunLab) -> None:
    loop = make_lab(2)
    server = loop.server("loop-1")

    def kill_sshd() -> None:
        pids = [*server.session_pids(), server.pid()]
        for pid in pids:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    watcher = when_runner_starts(runner_of(loop, "loop-1"), kill_sshd)
    pipeline, results = run_lab(loop.lab)
    watcher.join(5)
    assert results["loop-1"].status == "error"
    assert "connection was lost" in results["loop-1"].message
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")
    # The device is marked failed: its next job in this run skips instead of trying again.
    job = next(j for j in pipeline.plan() if j.id == results["loop-1"].job_id)
    again = pipeline.run_job(job)
    assert again.status == "skipped" and "connection was lost" in again.message


def test_a_stalled_connection_hits_the_timeout_and_the_runner_is_killed(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab
) -> None:
    loop = make_lab(2)
    server = loop.server("loop-1")
    stopped: list[int] = []

    def stall() -> None:
        stopped.extend(server.session_pids())
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)

    watcher = when_runner_starts(runner_of(loop, "loop-1"), stall)
    try:
        pipeline, results = run_lab(with_device(loop.lab, "loop-1", job_timeout_s=3))
    finally:
        watcher.join(5)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert stopped, "the runner never started"
    message = results["loop-1"].message
    assert results["loop-1"].status == "error"
    assert "exceeded its 3 s timeout" in message
    assert "stalled" in message and "killed over a new connection" in message
    assert wait_for_processes(runner_of(loop, "loop-1"), gone=True, timeout_s=2) == []
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")


def test_a_hanging_runner_is_killed_on_the_device(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab, fake_runtime: FakeRuntime
) -> None:
    loop = make_lab(2)
    marker = str(loop.state.directory)
    lab = with_device(loop.lab, "loop-1", env=fake_runtime("hang", marker), job_timeout_s=3)
    pipeline, results = run_lab(lab)
    assert results["loop-1"].status == "error"
    assert "exceeded its 3 s timeout" in results["loop-1"].message
    assert "were killed" in results["loop-1"].message
    # The runner and the child it started are gone at once, not when some device-side timer fires.
    assert wait_for_processes(runner_of(loop, "loop-1"), gone=True, timeout_s=2) == []
    assert wait_for_processes(marker, gone=True, timeout_s=2) == []
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")


def test_a_crashing_runner_reports_the_tail_of_its_stderr(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab, fake_runtime: FakeRuntime
) -> None:
    loop = make_lab(2)
    lab = with_device(loop.lab, "loop-1", env=fake_runtime("crash", "-"))
    pipeline, results = run_lab(lab)
    message = results["loop-1"].message
    assert results["loop-1"].status == "error"
    assert "(exit -6)" in message  # SIGABRT, reported as subprocess does for the local device
    assert "illegal instruction in the conv kernel (simulated)" in message
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")


def test_a_runtime_missing_on_the_device_skips_with_reason(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab, fake_runtime: FakeRuntime
) -> None:
    loop = make_lab(2)
    pipeline, results = run_lab(with_device(loop.lab, "loop-1", env=fake_runtime("missing", "-")))
    assert results["loop-1"].status == "skipped"
    assert "runtime 'onnxruntime' is not installed" in results["loop-1"].message
    assert "cannot open shared object file (simulated)" in results["loop-1"].message
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``tiny_disk(directory)`` mounts a 256 KiB tmpfs there (unmounted after the test)."""
    mounted: list[Path] = []

    def mount(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(directory)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip()}); needs root or CAP_SYS_ADMIN")
        mounted.append(directory)

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_a_full_disk_says_so_and_leaves_no_partial_file(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab, tiny_disk: Callable[[Path], None]
) -> None:
    loop = make_lab(2)
    cache = loop.server("loop-1").cache_dir
    tiny_disk(cache)  # the runner (20 KB) and the model fit, the data files do not
    pipeline, results = run_lab(loop.lab)
    message = results["loop-1"].message
    assert results["loop-1"].status in ("error", "skipped")
    assert "disk is full" in message and "KiB free" in message
    assert "fix: free space on the device" in message
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")


def test_a_corrupted_cache_file_is_detected_and_uploaded_again(
    make_lab: Callable[..., LoopbackLab],
    run_lab: RunLab,
    digits: list[ModelEntry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = make_lab(1)
    _, results = run_lab(loop.lab)
    artifact = results["loop-1"].artifact_sha256
    assert artifact is not None
    (cached,) = loop.server("loop-1").cache_dir.glob(f"files/{artifact}.*")
    cached.write_bytes(b"\0" * cached.stat().st_size)  # same size, wrong bytes: only the hash can tell

    with caplog.at_level(logging.INFO, logger="harness.deploy"):
        second, results = run_lab(loop.lab)
    stats = second.links["loop-1"].cache
    assert stats is not None
    assert (stats.stats.corrupt_files, stats.stats.uploaded_files) == (1, 1)
    assert f"failed their sha256 check and are uploaded again: {cached.name}" in caplog.text
    assert results["loop-1"].status in ("passed", "failed"), results["loop-1"].message
    assert results["loop-1"].latency is not None and results["loop-1"].latency.valid


def assert_refused_for_the_run(pipeline: Pipeline, result: JobResult, problem: str) -> None:
    """A refused login is an error, not a skip: for the device's later jobs too, and for the whole run."""
    assert result.status == "error"
    assert result.message.startswith("device 'loop-1': ") and problem in result.message
    assert "\n" not in result.message
    job = next(j for j in pipeline.plan() if j.id == result.job_id)
    again = pipeline.run_job(job)
    assert again.status == "error", again.message
    assert "earlier in this run" in again.message and problem in again.message and "fix: " in again.message
    # The healthy device passed, yet the run is not: one device answering with the wrong key fails it.
    assert pipeline.finish() == "error"
    assert pipeline.results_store().run_info(pipeline.run_id)["status"] == "error"


def test_a_changed_host_key_is_refused_and_fails_the_run(make_lab: Callable[..., LoopbackLab], run_lab: RunLab) -> None:
    loop = make_lab(2)
    known_hosts = loop.state.known_hosts.read_text()
    rekey(loop.server("loop-1"))
    pipeline, results = run_lab(loop.lab)
    message = results["loop-1"].message
    assert "host key CHANGED" in message and "man-in-the-middle" in message
    assert "fix: if the device was reinstalled, confirm the new fingerprint with its owner, then run: " in message
    assert f"ssh-keygen -R '[127.0.0.1]:{loop.server('loop-1').port}'" in message
    assert loop.state.known_hosts.read_text() == known_hosts  # refused, never replaced
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")
    assert_refused_for_the_run(pipeline, results["loop-1"], "host key CHANGED")


def test_an_unknown_host_key_is_refused_and_fails_the_run(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab, tmp_path: Path
) -> None:
    loop = make_lab(2)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    pipeline, results = run_lab(with_device(loop.lab, "loop-1", known_hosts=str(empty)))
    message = results["loop-1"].message
    # (a machine with an /etc/ssh/ssh_known_hosts names it too: "nor in ...")
    assert re.search(rf"is not in {re.escape(str(empty))}( nor in [^;]+)?; edgebench never adds host keys", message)
    assert "fix: check that fingerprint with the device's owner, then run: ssh-keyscan " in message
    assert empty.read_text() == ""  # refused, never added
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")
    assert_refused_for_the_run(pipeline, results["loop-1"], "never adds host keys")


def test_a_wrong_key_is_a_clear_authentication_error(
    make_lab: Callable[..., LoopbackLab], run_lab: RunLab, tmp_path: Path
) -> None:
    loop = make_lab(2)
    stranger = tmp_path / "stranger_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    pipeline, results = run_lab(with_device(loop.lab, "loop-1", identity=str(stranger)))
    message = results["loop-1"].message
    assert "authentication failed" in message and str(stranger) in message
    port = loop.server("loop-1").port
    assert f"fix: authorize the key on the device (ssh-copy-id -i {stranger}.pub -p {port}" in message
    assert_carried_on(results)
    assert_nothing_valid_stored(pipeline.results_store(), pipeline, "loop-1")
    assert_refused_for_the_run(pipeline, results["loop-1"], "authentication failed")
