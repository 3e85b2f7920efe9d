"""The runner bundle as a device runs it: ``python -I agent.pyz run`` on the tiny ONNX model.

Every test goes through the zipapp in a fresh interpreter, so what is checked is what a device gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.agent import PROTOCOL_VERSION
from harness.build.agent_bundle import build_agent_bundle

MEAN, STD = 0.5, 0.25
EVAL_COUNT = 7  # not a multiple of the eval batch, so the last partial batch is exercised


@dataclass(frozen=True)
class Device:
    """The files a job needs, laid out as the deploy step would leave them."""

    bundle: Path
    artifact: Path
    latency: Path
    eval: Path
    eval_images: np.ndarray
    root: Path


@dataclass(frozen=True)
class Reply:
    exit_code: int
    result: dict[str, Any]
    stderr: str


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Device:
    root = tmp_path_factory.mktemp("device")
    bundle, _ = build_agent_bundle(root)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (EVAL_COUNT, 3, 16, 16), dtype=np.uint8)
    np.savez(root / "latency.npz", latency=images[:1])
    np.savez(root / "eval.npz", images=images)
    return Device(bundle, tiny_onnx, root / "latency.npz", root / "eval.npz", images, root)


def make_spec(device: Device, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "job_id": "tiny-cnn/onnxruntime-fp32-t1/local",
        "runtime": "onnxruntime",
        "artifact": str(device.artifact),
        "input": {"name": "input", "shape": [1, 3, 16, 16], "mean": [MEAN], "std": [STD]},
        "latency": {"file": str(device.latency), "key": "latency"},
        "eval": [{"name": "clean", "file": str(device.eval), "key": "images"}],
        "outputs": str(device.root / "out" / f"{len(changes)}-{sorted(changes)}.npz"),
        "options": {"threads": 1},
        "warmup": {"window": 5, "windows": 2, "min_iterations": 10, "max_iterations": 60},
        "stop": {"iterations": 200},
        "eval_batch": 3,
    }
    spec.update(changes)
    return spec


def run_agent(device: Device, spec: Any, *, block_harness: bool = False) -> Reply:
    """Run the bundle isolated (-I: no PYTHONPATH, no user site, no script dir on sys.path)."""
    argv = [sys.executable, "-I", str(device.bundle), "run"]
    if block_harness:
        # -I still sees the editable install in site-packages; make any import of harness fail outright.
        shim = (
            "import runpy, sys; sys.modules['harness'] = None; "
            f"sys.argv = [{str(device.bundle)!r}, 'run']; runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        argv = [sys.executable, "-I", "-c", shim]
    stdin = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120, cwd=device.root)
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, f"the runner must print exactly one JSON line; got {proc.stdout!r}"
    return Reply(proc.returncode, json.loads(lines[0]), proc.stderr.decode())


def reference_outputs(device: Device) -> np.ndarray:
    import onnxruntime as ort

    x = (device.eval_images.astype(np.float32) / 255.0 - MEAN) / STD
    session = ort.InferenceSession(str(device.artifact), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def test_fixed_count_run_returns_raw_samples_and_separate_cold_start(device: Device) -> None:
    reply = run_agent(device, make_spec(device), block_harness=True)
    assert reply.exit_code == 0, reply.stderr
    r = reply.result
    assert r["protocol"] == PROTOCOL_VERSION
    assert r["status"] == "ok"
    assert r["job_id"] == "tiny-cnn/onnxruntime-fp32-t1/local"
    assert r["stop_reason"] == "fixed_count"
    samples = r["samples_ns"]
    assert len(samples) == 200
    assert all(isinstance(s, int) and s > 0 for s in samples)
    # Load and the cold first call are measured apart from the timed loop and from each other.
    assert r["load_ms"] > 0 and r["first_inference_ms"] > 0
    assert r["load_ms"] != r["first_inference_ms"]
    assert 10 <= r["warmup_iterations"] <= 60
    assert isinstance(r["warmup_stable"], bool)
    assert r["duration_s"] > 0
    assert r["duration_s"] * 1e9 >= sum(samples)


def test_result_carries_the_device_and_runtime_facts(device: Device) -> None:
    import platform

    import onnxruntime

    r = run_agent(device, make_spec(device)).result
    runtime = r["runtime"]
    assert runtime["runtime"] == "onnxruntime"
    assert runtime["version"] == onnxruntime.__version__
    assert runtime["intra_op_threads"] == 1
    assert runtime["inter_op_threads"] == 1
    assert "CPUExecutionProvider" in runtime["providers"]
    facts = r["facts"]
    assert facts["python"] == platform.python_version()
    assert facts["os"] == platform.system()
    assert facts["arch"] == platform.machine()
    assert facts["cpu_count"] >= 1
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert facts["numpy"] == np.__version__


def test_onnx_runtime_inter_op_threads_switch_it_to_the_parallel_mode_and_say_so(device: Device) -> None:
    """In the sequential mode ONNX Runtime ignores inter-op threads: asking for them must change the mode."""
    options = {"threads": 1, "inter_op_threads": 2, "spin_wait": False}
    runtime = run_agent(device, make_spec(device, options=options)).result["runtime"]
    assert (runtime["inter_op_threads"], runtime["execution_mode"], runtime["spin_wait"]) == (2, "parallel", False)
    default = run_agent(device, make_spec(device)).result["runtime"]
    assert (default["inter_op_threads"], default["execution_mode"], default["spin_wait"]) == (1, "sequential", True)


def test_eval_outputs_are_written_to_the_npz_the_spec_names(device: Device) -> None:
    spec = make_spec(device)
    r = run_agent(device, spec).result
    assert r["outputs"] == spec["outputs"]
    assert r["outputs_keys"] == ["clean"]
    import hashlib

    data = Path(spec["outputs"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == r["outputs_sha256"]
    with np.load(spec["outputs"]) as npz:
        clean = npz["clean"]
    # Normalised on the device exactly as the catalog says, batched in threes, every image kept in order.
    assert clean.shape == (EVAL_COUNT, 10)
    np.testing.assert_allclose(clean, reference_outputs(device), rtol=1e-5, atol=1e-5)


def test_adaptive_stop_runs_until_the_percentiles_are_pinned_down(device: Device) -> None:
    stop = {"min_iterations": 400, "min_duration_s": 0.2, "max_duration_s": 10.0, "max_half_width": 0.5}
    r = run_agent(device, make_spec(device, stop=stop)).result
    assert r["stop_reason"] == "converged"
    # Converged means every requested percentile has an interval, P99's needing n >= 368.
    assert len(r["samples_ns"]) >= 400
    assert r["duration_s"] >= 0.2


def test_adaptive_stop_never_runs_past_max_iterations(device: Device) -> None:
    stop = {"min_iterations": 100, "max_iterations": 500, "min_duration_s": 5.0, "max_duration_s": 10.0}
    r = run_agent(device, make_spec(device, stop=stop)).result
    assert r["stop_reason"] == "max_iterations"
    assert len(r["samples_ns"]) == 500


def test_adaptive_stop_gives_up_at_the_time_cap(device: Device) -> None:
    # A half-width of 1e-9 can never be met, so only the clock ends the loop.
    stop = {"min_iterations": 50, "min_duration_s": 0.0, "max_duration_s": 0.3, "max_half_width": 1e-9}
    r = run_agent(device, make_spec(device, stop=stop)).result
    assert r["stop_reason"] == "time_cap"
    assert 0.3 <= r["duration_s"] < 5.0


def test_a_rule_asked_for_p99_alone_stops_without_waiting_for_p50() -> None:
    """Samples whose P99 is pinned down to 1% while their P50 is not within 5%: stopping on P99 alone
    (``--stop-on p99``) converges, the default rule (P50, P95, P99) keeps measuring."""
    from harness.agent.loop import converged
    from harness.agent.protocol import StopSpec

    rng = np.random.default_rng(0)
    # Half the calls at 1 ms, half at 2 ms, shuffled: the median sits on a cliff between the two
    # levels, so its interval spans both; the tail is a narrow band at 2 ms.
    samples = [int(v) for v in rng.permutation(np.repeat([1_000_000, 2_000_000], 1000)) + rng.integers(0, 10_000, 2000)]
    assert converged(samples, StopSpec(percentiles=(0.99,), max_half_width=0.01))
    assert not converged(samples, StopSpec(max_half_width=0.01))


def test_min_iterations_is_a_floor_the_time_cap_does_not_cut() -> None:
    """A slow model (5 ms a call) with a 0.1 s cap still gets its 100 calls: fewer would leave its
    percentiles without an interval. The cap then ends the loop at the first check."""
    import time

    from harness.agent.loop import timed_loop
    from harness.agent.protocol import StopSpec

    samples, reason, elapsed = timed_loop(lambda: time.sleep(0.005), StopSpec(min_iterations=100, max_duration_s=0.1))
    assert reason == "time_cap"
    assert len(samples) == 100 and elapsed >= 0.5


def test_samples_precise_enough_when_the_cap_is_reached_are_reported_as_converged() -> None:
    """A slow model whose 400-call floor outlasts the time cap, with its P50 well within target at
    that point: the stop reason says it converged, as the host's stop_decision says of the same
    samples, not that the clock ran out. (P50 alone, at 50%: a rare preempted call must not decide
    what this checks.)"""
    import time

    from harness.agent.loop import timed_loop
    from harness.agent.protocol import StopSpec
    from harness.measure.stability import StopRule, stop_decision

    stop = StopSpec(percentiles=(0.5,), min_iterations=400, min_duration_s=0.0, max_duration_s=0.05, max_half_width=0.5)
    def call() -> None:  # a steady 0.5 ms: a busy wait, since a sleep wakes late by whole ms under load
        until = time.perf_counter() + 0.0005
        while time.perf_counter() < until:
            pass

    rule = StopRule((0.5,), 0.5, min_iterations=400, min_duration_s=0.0, max_duration_s=0.05)
    # Under the suite's parallel load a busy wait is preempted at times, and a loop whose preempted
    # calls come in bursts is rightly not precise enough: the runner must then say time_cap, as the host
    # does. So each loop's reason is checked against the host's verdict on its own samples, and the
    # loop is repeated (up to five times) until one is precise enough at the cap.
    verdicts = []
    for _ in range(5):
        samples, reason, elapsed = timed_loop(call, stop)
        assert len(samples) == 400 and elapsed >= 0.05
        host = stop_decision(np.asarray(samples), elapsed, rule)
        verdicts.append((reason, host))
        if host == "converged":
            break
    assert all(reason == host for reason, host in verdicts), verdicts
    assert verdicts[-1] == ("converged", "converged"), verdicts


@pytest.mark.parametrize(
    ("call_s", "expected"),
    [(0.001, "the time cap ends it"), (0.02, "three windows run first")],
    ids=["fast-model", "slow-model"],
)
def test_a_warm_up_that_never_settles_stops_at_its_time_cap_after_three_windows(call_s: float, expected: str) -> None:
    """A warm model on a machine whose speed wanders (window medians never agree) would warm up to
    max_iterations. The time cap ends it, reported as not stable, but never before three windows have
    run: a slow model's warm-up still gets judged."""
    import time

    from harness.agent.loop import warm_up
    from harness.agent.protocol import WarmupSpec

    def call() -> None:  # a busy wait: a sleep wakes late by whole ms under load
        until = time.perf_counter() + call_s
        while time.perf_counter() < until:
            pass

    never = WarmupSpec(window=5, tolerance=-1.0, min_iterations=5, max_iterations=100_000, max_duration_s=0.1)
    started = time.monotonic()
    count, stable = warm_up(call, never)
    elapsed = time.monotonic() - started
    assert not stable and count % 5 == 0
    if expected == "the time cap ends it":
        assert 0.1 <= elapsed < 1.0 and count < 100_000, (count, elapsed)
    else:  # 15 calls of 20 ms outlast the 0.1 s cap: all three windows run, then it stops
        assert count == 15, count


@pytest.mark.parametrize("loop", ["warm-up", "timed-loop", "rounds"])
def test_thermal_readings_are_taken_between_calls_never_inside_a_timed_one(loop: str) -> None:
    """A reading takes CPU time (0.6 ms on the 2-CPU reference VM): one landing inside a timed call
    makes that call slow and fattens the tail the stop rule waits on. Here each reading takes 1 ms
    and is due every 5 ms, against calls of 0.5 ms: every reading must fall between two calls, and
    the readings must still come at the interval through warm-up, the timed loop and interleaved rounds."""
    import time

    from harness.agent.interleave import rounds
    from harness.agent.loop import timed_loop, warm_up
    from harness.agent.protocol import StopSpec, WarmupSpec
    from harness.agent.thermal import Sampler

    def spin(seconds: float) -> None:  # busy waits: a sleep would hand the CPU to a reading thread anyway
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass

    calls: list[tuple[float, float]] = []
    readings: list[tuple[float, float]] = []

    class SlowProbe:
        def read(self, out: dict[str, Any]) -> dict[str, Any]:
            started = time.perf_counter()
            spin(0.001)
            readings.append((started, time.perf_counter()))
            return out

    def call() -> None:
        started = time.perf_counter()
        spin(0.0005)
        calls.append((started, time.perf_counter()))

    sampler = Sampler(0.005, time.monotonic(), SlowProbe())  # type: ignore[arg-type]  # a stand-in Probes
    if loop == "warm-up":  # windows never agree: warm-up runs to its 600-call cap
        warm_up(call, WarmupSpec(window=10, windows=3, tolerance=-1.0, min_iterations=10, max_iterations=600), sampler)
    elif loop == "timed-loop":
        timed_loop(call, StopSpec(iterations=600), sampler)
    else:
        rounds([call, call], StopSpec(iterations=300), block=10, block_warmup=0, seed=1, sampler=sampler)
    span = calls[-1][1] - calls[0][0]
    assert len(readings) >= span / 0.006 * 0.5, (len(readings), span)  # due every 5 ms, each 1 ms long
    inside = [r for r in readings if any(c0 < r[1] and r[0] < c1 for c0, c1 in calls)]
    assert not inside, f"{len(inside)} of {len(readings)} readings overlapped a timed call"


@pytest.mark.parametrize("behind_a_shell", [False, True], ids=["direct-child", "behind-a-shell"])
def test_a_runner_whose_host_is_killed_stops_by_itself(device: Device, tmp_path: Path, behind_a_shell: bool) -> None:
    """The host starts a 60 s run in its own session (as the local transport does) and is SIGKILLed:
    nothing could clean up after it, yet the runner is gone within a few seconds. Behind a shell that
    outlives the host (as ``sh -c`` or ``timeout`` on a device would), the runner's parent does not
    change; its result pipe losing its reader is what tells it."""
    import os
    import shlex
    import signal
    import time

    spec = make_spec(device, stop={"min_iterations": 50, "max_duration_s": 60.0, "max_half_width": 1e-9})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    runner_argv = [sys.executable, "-I", str(device.bundle), "run", "--job", str(tmp_path / "spec.json")]
    if behind_a_shell:
        # The shell keeps the runner's pid in a file and waits for it, then lives on (sleep).
        pidfile = tmp_path / "runner.pid"
        script = f"echo $$ > {pidfile}.sh; {shlex.join(runner_argv)} & echo $! > {pidfile}; wait; sleep 60"
        launch = (
            f"subprocess.Popen(['sh', '-c', {script!r}], start_new_session=True, stdout=subprocess.PIPE, "
            "stderr=subprocess.PIPE)"
        )
        report = f"time.sleep(1.0); print(open({str(pidfile)!r}).read().strip(), flush=True)"
    else:
        # stderr is a pipe to the host, as the transports make it: it breaks when the host dies.
        launch = (
            f"subprocess.Popen({runner_argv!r}, start_new_session=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.PIPE)"
        )
        report = "print(child.pid, flush=True)"
    host = f"import subprocess, sys, time\nchild = {launch}\n{report}\ntime.sleep(120)\n"
    parent = subprocess.Popen([sys.executable, "-c", host], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    runner = int(parent.stdout.readline())
    time.sleep(1.5)  # the runner is loading and timing by now
    os.kill(runner, 0)  # still running while its host lives
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{runner}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state == "Z":  # exited, waiting for whoever adopted it to reap it
                break
            time.sleep(0.1)
        else:
            os.kill(runner, signal.SIGKILL)
            pytest.fail("the runner outlived its host by 10 s")
    finally:
        if behind_a_shell:
            os.killpg(int((tmp_path / "runner.pid.sh").read_text()), signal.SIGKILL)


def test_a_bad_spec_gives_an_error_result_and_a_nonzero_exit(device: Device) -> None:
    spec = make_spec(device)
    del spec["artifact"]
    reply = run_agent(device, spec)
    assert reply.exit_code != 0
    assert reply.result["status"] == "error"
    assert reply.result["job_id"] == spec["job_id"]
    assert reply.result["error"]["kind"] == "spec"
    assert "artifact" in reply.result["error"]["message"]
    assert "samples_ns" not in reply.result


def test_a_spec_that_is_not_json_gives_an_error_result(device: Device) -> None:
    reply = run_agent(device, b"{not json")
    assert reply.exit_code != 0
    assert reply.result["status"] == "error"
    assert reply.result["error"]["kind"] == "spec"
    assert "cannot read the job spec" in reply.result["error"]["message"]


def test_an_unknown_runtime_lists_the_known_ones(device: Device) -> None:
    reply = run_agent(device, make_spec(device, runtime="tensorrtx"))
    assert reply.exit_code != 0
    error = reply.result["error"]
    assert error["kind"] == "unknown_runtime"
    assert "'tensorrtx'" in error["message"]
    assert "onnxruntime" in error["message"].split("knows:")[1]


def test_a_missing_artifact_is_reported_with_its_path(device: Device) -> None:
    missing = device.root / "no-such-model.onnx"
    reply = run_agent(device, make_spec(device, artifact=str(missing)))
    assert reply.exit_code != 0
    assert reply.result["error"]["kind"] == "missing_file"
    assert str(missing) in reply.result["error"]["message"]


def test_a_model_the_runtime_rejects_is_a_runtime_error_not_a_crash(device: Device) -> None:
    broken = device.root / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    reply = run_agent(device, make_spec(device, artifact=str(broken)))
    assert reply.exit_code != 0
    assert reply.result["status"] == "error"
    assert reply.result["error"]["kind"] == "runtime_error"
    # The runtime's traceback goes to stderr, never into the JSON line on stdout.
    assert "Traceback" in reply.stderr


def test_version_and_probe_speak_the_protocol(device: Device) -> None:
    for command in ("version", "probe"):
        proc = subprocess.run(
            [sys.executable, "-I", str(device.bundle), command], capture_output=True, timeout=60, check=True
        )
        reply = json.loads(proc.stdout)
        assert reply["protocol"] == PROTOCOL_VERSION
    assert reply["runtimes"]["onnxruntime"]["available"] is True


def test_cpu_clocks_are_listed_in_cpu_number_order_on_a_twelve_cpu_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a profile the runner reads cpufreq itself; its list position names the CPU in a
    throttle reason ("CPU10 clock fell"), so cpu10 must come after cpu9, not after cpu1."""
    import glob

    from harness.agent import facts

    for cpu in range(12):
        node = tmp_path / f"cpu{cpu}" / "cpufreq"
        node.mkdir(parents=True)
        (node / "scaling_cur_freq").write_text(f"{(cpu + 1) * 100_000}\n")
    real_glob = glob.glob
    sysfs = "/sys/devices/system/cpu"
    monkeypatch.setattr(glob, "glob", lambda pattern: real_glob(pattern.replace(sysfs, str(tmp_path))))
    assert facts.cpu_frequencies_mhz() == [(cpu + 1) * 100.0 for cpu in range(12)]
