"""Per-job SSH overhead on loopback: cached deploy + launch + collect. Target (issue [ssh-lab]): <= 0.5 s.

One job's round trips besides the measurement itself, over one open connection as the pipeline keeps
it: the cache check of the runner, a tiny model and its two data files (already on the device, so
hashed there and not sent), launching the runner (``agent.pyz version``: the device's Python, numpy
and the runner's imports, the same start-up a job pays), and fetching an outputs file of a small
model's size. The same cycle over the local transport shows what SSH itself adds.

Run: ``python -m pytest benchmarks/bench_ssh_overhead.py --benchmark-only -s``. The numbers land in
benchmarks/results/ssh_overhead.json for the README.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import save_numbers
from harness.build.agent_bundle import build_agent_bundle
from harness.build.cache import file_sha256
from harness.deploy import Deployable, DeviceCache
from harness.lab.loopback import SSHD, LoopbackLab
from harness.transport.local import LocalTransport
from harness.transport.protocol import Transport
from harness.transport.ssh import SshTransport

TARGET_S = 0.5
ROUNDS = 20
_measured: dict[str, float] = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Deployable], Path]:
    """A tiny model (56 KB), its latency and eval data (4 KB, 360 KB) and an outputs file (14 KB)."""
    tmp = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    sizes = {"onnx": 56_000, "latency.npz": 4_000, "eval.npz": 360_000}
    items = []
    bundle, sha = build_agent_bundle(tmp / "agent")
    items.append(Deployable(bundle, sha, "pyz"))
    for suffix, size in sizes.items():
        path = tmp / f"model.{suffix}"
        path.write_bytes(rng.bytes(size))
        items.append(Deployable(path, file_sha256(path), suffix))
    outputs = tmp / "outputs.npz"
    np.savez(outputs, clean=rng.standard_normal((360, 10)).astype(np.float32))
    return items, outputs


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackLab]:
    if not SSHD.is_file():
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server)")
    with LoopbackLab(1, tmp_path_factory.mktemp("lab")) as loop:
        yield loop


def _cycle(transport: Transport, python: str, root: str, items: list[Deployable], outputs: str, back: Path) -> None:
    """One job's overhead: a fresh cache check (everything present), launch the runner, collect outputs."""
    cache = DeviceCache(transport, python, root)
    paths = cache.ensure(items)
    assert cache.stats.uploaded_files == 0
    reply = transport.run([python, paths[items[0].sha256], "version"], timeout_s=60)
    assert reply.exit_code == 0, reply.stderr_text
    transport.get(outputs, back)


def _prepare(transport: Transport, python: str, root: str, items: list[Deployable], outputs: Path) -> str:
    DeviceCache(transport, python, root).ensure(items)  # the "cached" in cached deploy
    remote = f"{root}/out/outputs.npz"
    transport.put(outputs, remote)
    return remote


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_per_job_overhead(
    benchmark: Any, kind: str, lab: LoopbackLab, files: tuple[list[Deployable], Path], tmp_path: Path
) -> None:
    items, outputs = files
    device = lab.lab.devices[0]
    python = device.python_path
    transport: Transport = SshTransport.connect(device) if kind == "ssh" else LocalTransport("local")
    root = f"{device.cache_dir}/{kind}/files"
    try:
        remote = _prepare(transport, python, root, items, outputs)
        back = tmp_path / "back.npz"
        benchmark.pedantic(
            _cycle, args=(transport, python, root, items, remote, back), rounds=ROUNDS, iterations=1, warmup_rounds=2
        )
    finally:
        transport.close()
    median = statistics.median(benchmark.stats.stats.data)
    _measured[kind] = median
    print(f"\nper-job overhead over {kind}: median {median * 1000:.0f} ms over {ROUNDS} rounds")
    if kind == "ssh":
        assert median <= TARGET_S, f"SSH overhead {median:.3f} s per job is over the {TARGET_S} s target"
    if len(_measured) == 2:
        numbers: dict[str, object] = {
            "ssh_overhead_per_job_s": round(_measured["ssh"], 3),
            "local_same_cycle_s": round(_measured["local"], 3),
            "ssh_adds_s": round(_measured["ssh"] - _measured["local"], 3),
            "target_s": TARGET_S,
            "rounds": ROUNDS,
        }
        save_numbers("ssh_overhead", numbers)
        adds = _measured["ssh"] - _measured["local"]
        print(f"SSH adds {adds * 1000:.0f} ms per job to the local transport's cycle")
