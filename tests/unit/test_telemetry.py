"""Platform telemetry: tegrastats / powermetrics parsing, sysfs and streaming command probes, the spec, CPU share.

The tegrastats and powermetrics lines here follow the formats NVIDIA's tegrastats documentation and
Apple's powermetrics(1) describe (neither tool exists on this machine); the command probes run a
stand-in script that prints such lines, since the real tools need a Jetson or a Mac.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from harness.agent.protocol import ProbeSpec, SpecError, ThermalSpec, parse_thermal
from harness.agent.telemetry import CommandProbe, Probes, parse_powermetrics, parse_tegrastats
from harness.agent.thermal import CpuShareWindow, CpuTicks
from harness.lab.platforms import load_platform
from harness.measure.throttle import assess_throttle

REPO = Path(__file__).resolve().parents[2]

# Jetson AGX Orin, JetPack 6 (absent sensors read -256C; rails are instant/average mW).
ORIN = (
    "12-01-2026 07:40:12 RAM 5523/30593MB (lfb 5x4MB) SWAP 0/15296MB (cached 0MB) "
    "CPU [12%@1190,8%@1190,3%@1190,0%@1190,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 45%@[612,612] "
    "VIC_FREQ 729 APE 174 CV0@-256C CPU@47.5C SOC2@44.1C SOC0@45.3C CV1@-256C GPU@44.5C tj@47.5C "
    "SOC1@45.1C CV2@-256C VDD_GPU_SOC 3182mW/3100mW VDD_CPU_CV 795mW/780mW VIN_SYS_5V0 3319mW/3300mW "
    "VDDQ_VDD2_1V8AO 503mW/500mW"
)
# Jetson Nano / TX1 era: one clock for all cores, rails without units.
NANO = (
    "RAM 1766/3964MB (lfb 197x4MB) SWAP 0/2048MB (cached 0MB) cpu [24%,15%,off,10%]@1224 EMC_FREQ 0% "
    "GR3D_FREQ 3%@76 PLL@21C CPU@25C PMIC@100C GPU@23.5C AO@33.5C thermal@24.5C POM_5V_IN 2545/2547 "
    "POM_5V_GPU 0/0 POM_5V_CPU 549/529"
)
# Apple silicon, `powermetrics --samplers cpu_power,gpu_power,ane_power,thermal -i 500`: one sample.
MAC = """
**** Processor usage ****

E-Cluster HW active frequency: 1020 MHz
E-Cluster HW active residency:  18.32% (600 MHz:  71% 972 MHz: 5.1%)
P-Cluster HW active frequency: 3228 MHz
P-Cluster HW active residency:  41.03% (660 MHz:   0% 3228 MHz: 100%)

CPU Power: 4213 mW
GPU Power: 56 mW
ANE Power: 0 mW
Combined Power (CPU + GPU + ANE): 4269 mW

**** GPU usage ****

GPU HW active frequency: 389 MHz
GPU HW active residency:   3.12% (389 MHz: 3.1% 486 MHz:   0%)
GPU Power: 56 mW

**** Thermal pressure ****

Current pressure level: Nominal
"""


def test_tegrastats_orin_line_gives_temperatures_clocks_and_rails() -> None:
    r = parse_tegrastats(ORIN)
    assert r["temperatures_c"] == {
        "cpu": 47.5,
        "soc2": 44.1,
        "soc0": 45.3,
        "gpu": 44.5,
        "tj": 47.5,
        "soc1": 45.1,
    }  # the -256C sensors (CV0..CV2 are off) are left out, not read as a 300 C drop
    assert r["cpu_freq_mhz"] == [1190.0] * 4 + [None] * 4
    assert r["clocks_mhz"]["gr3d"] == 612.0 and r["clocks_mhz"]["emc"] == 2133.0
    assert r["power_mw"] == {
        "VDD_GPU_SOC": 3182.0,
        "VDD_CPU_CV": 795.0,
        "VIN_SYS_5V0": 3319.0,
        "VDDQ_VDD2_1V8AO": 503.0,
    }


def test_tegrastats_older_format_one_clock_for_all_cores() -> None:
    r = parse_tegrastats(NANO)
    assert r["cpu_freq_mhz"] == [1224.0, 1224.0, None, 1224.0]
    assert r["clocks_mhz"]["gr3d"] == 76.0
    assert r["temperatures_c"]["gpu"] == 23.5 and r["temperatures_c"]["pmic"] == 100.0
    assert r["power_mw"]["POM_5V_IN"] == 2545.0


def test_tegrastats_garbage_is_an_empty_reading_not_an_error() -> None:
    r = parse_tegrastats("tegrastats: unknown option -- x")
    assert r == {"temperatures_c": {}, "cpu_freq_mhz": [], "clocks_mhz": {}, "power_mw": {}}


def test_powermetrics_sample_gives_power_clocks_and_pressure() -> None:
    r = parse_powermetrics(MAC)
    assert r["power_mw"] == {"cpu": 4213.0, "gpu": 56.0, "ane": 0.0, "combined_cpu_gpu_ane": 4269.0}
    assert r["clocks_mhz"] == {"e_cluster": 1020.0, "p_cluster": 3228.0, "gpu": 389.0}
    assert r["thermal_pressure"] == "Nominal"


def test_powermetrics_on_an_intel_mac_reads_package_watts_and_die_temperature() -> None:
    r = parse_powermetrics(
        "Intel energy model derived package power (CPUs+GT+SA): 3.20W\nCPU die temperature: 65.3 C\n"
    )
    assert r["power_mw"] == {"package": pytest.approx(3200.0)}
    assert r["temperatures_c"] == {"cpu": 65.3}


def _sysfs(tmp_path: Path) -> Path:
    for i, (kind, milli) in enumerate([("cpu-thermal", 41000), ("gpu-thermal", 39500), ("cpu-thermal", 40000)]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "temp").write_text(f"{milli}\n")
        (zone / "type").write_text(kind + "\n")
    for cpu, khz in [(0, 1800000), (1, 1200000), (10, 900000)]:
        freq = tmp_path / f"cpu{cpu}" / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_cur_freq").write_text(f"{khz}\n")
    apex = tmp_path / "apex_0"
    apex.mkdir()
    (apex / "temp").write_text("52000\n")
    return tmp_path


def test_sysfs_probes_scale_name_and_order_their_files(tmp_path: Path) -> None:
    root = _sysfs(tmp_path)
    probes = Probes(
        [
            ProbeSpec("sysfs", "zone", "C", path=f"{root}/thermal_zone*/temp", name_file="type", scale=0.001),
            ProbeSpec("sysfs", "apex", "C", path=f"{root}/apex_*/temp", scale=0.001),
            ProbeSpec("sysfs", "cpu", "MHz", path=f"{root}/cpu*/cpufreq/scaling_cur_freq", scale=0.001),
        ]
    )
    probes.start()
    reading = probes.read({"t_s": 0.0})
    # Two zones of one type both count; the Apex sensor is named by the directory the glob matched.
    assert reading["temperatures_c"] == {
        "cpu_thermal": 41.0,
        "gpu_thermal": 39.5,
        "cpu_thermal_2": 40.0,
        "apex_0": 52.0,
    }
    assert reading["cpu_freq_mhz"] == [1800.0, 1200.0, 900.0]  # cpu10 after cpu1, not between cpu1 and cpu2
    assert probes.errors() == []


def test_a_sysfs_glob_that_matches_nothing_says_so(tmp_path: Path) -> None:
    probes = Probes([ProbeSpec("sysfs", "apex", "C", path=f"{tmp_path}/apex_*/temp", scale=0.001)])
    probes.start()
    assert probes.read({})["temperatures_c"] == {}
    assert probes.errors() == [f"apex: nothing matches {tmp_path}/apex_*/temp"]


def _stand_in(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "tegrastats"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_stand_in_tegrastats_streams_into_the_newest_reading(tmp_path: Path) -> None:
    """A stand-in for tegrastats (no Jetson here) prints a line every 50 ms with a rising CPU temperature."""
    script = _stand_in(
        tmp_path,
        "import sys, time\n"
        f"line = {ORIN!r}\n"
        "for i in range(1000):\n"
        "    print(line.replace('CPU@47.5C', 'CPU@%.1fC' % (47.5 + i)), flush=True)\n"
        "    time.sleep(0.05)\n",
    )
    probes = Probes(
        [ProbeSpec("command", "rails", "mW", command=(str(script), "--interval", "50"), parser="tegrastats")]
    )
    probes.start()
    try:
        deadline = time.monotonic() + 10
        first = probes.read({})
        while "cpu" not in first["temperatures_c"] and time.monotonic() < deadline:
            time.sleep(0.02)
            first = probes.read({})
        later = probes.read({})
        while (
            later["temperatures_c"].get("cpu", 0.0) <= first["temperatures_c"].get("cpu", 0.0)
            or probes.records()["rails"] < 3
        ) and time.monotonic() < deadline:
            time.sleep(0.02)
            later = probes.read({})
    finally:
        probes.stop()
    assert later["temperatures_c"]["cpu"] > first["temperatures_c"]["cpu"]
    assert later["power_mw"]["VDD_CPU_CV"] == 795.0 and later["cpu_freq_mhz"][0] == 1190.0
    assert probes.records()["rails"] >= 3 and probes.errors() == []


def test_the_first_record_of_a_slow_starting_tool_is_waited_for(tmp_path: Path) -> None:
    """A stand-in that, like tegrastats, prints its first line one interval (0.4 s) after it starts."""
    script = _stand_in(tmp_path, f"import time\ntime.sleep(0.4)\nprint({NANO!r}, flush=True)\ntime.sleep(30)\n")
    slow = ProbeSpec("command", "rails", "mW", command=(str(script),), parser="tegrastats")
    missing = ProbeSpec("command", "other", "mW", command=(str(tmp_path / "absent"),), parser="tegrastats")
    probes = Probes([slow, missing])
    probes.start()
    timeout_s = 30.0  # the only time bound: waiting it out means waiting for the tool that cannot start
    try:
        started = time.monotonic()
        probes.wait_for_first_records(timeout_s=timeout_s)
        waited = time.monotonic() - started
        reading = probes.read({})  # taken at once: a wait that returned before the first record has none
    finally:
        probes.stop()
    assert reading["temperatures_c"]["gpu"] == 23.5, "returned before the slow tool's first record"
    assert probes.records() == {"rails": 1, "other": 0}
    assert waited < timeout_s, "waited out the timeout for the tool that cannot start"
    (error,) = probes.errors()
    assert error.startswith("other: cannot start ")


def test_a_sensor_that_first_appears_during_the_loop_is_judged_from_there() -> None:
    """A tool whose first record lands after the "before" reading still has its rise judged."""
    first = parse_tegrastats(ORIN)
    hot = parse_tegrastats(ORIN.replace("tj@47.5C", "tj@70.0C"))
    verdict = assess_throttle({"thermal": {"before": {}, "during": [first, hot], "after": hot}})
    assert verdict.reasons == ("tj rose 22.5 C during the run (limit 15 C): not at thermal steady state",)


def test_a_missing_vendor_tool_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    probe = CommandProbe(
        ProbeSpec("command", "rails", "mW", command=(str(tmp_path / "tegrastats"),), parser="tegrastats")
    )
    probe.start()
    probe.stop()
    assert probe.error is not None and probe.error.startswith("rails: cannot start ")


def _run_until_exit(probe: CommandProbe) -> None:
    probe.start()
    deadline = time.monotonic() + 10
    while not probe.exited() and time.monotonic() < deadline:
        time.sleep(0.02)
    probe.stop()


def test_a_root_tool_run_by_a_lab_user_goes_through_sudo_n_and_says_how_to_allow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root: the probe runs ``sudo -n <tool>``. A stand-in sudo on PATH (the real one would ask this
    machine's sudoers) records its argv and refuses as sudo does without a NOPASSWD rule."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sudo-argv.json"
    sudo = bin_dir / "sudo"
    sudo.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "print('sudo: a password is required', file=sys.stderr)\nsys.exit(1)\n"
    )
    sudo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    tool = "/usr/bin/powermetrics"
    probe = CommandProbe(
        ProbeSpec("command", "cpu-gpu-ane", "mW", command=(tool, "-i", "500"), parser="powermetrics", needs_root=True)
    )
    assert probe.argv() == ["sudo", "-n", tool, "-i", "500"]
    _run_until_exit(probe)
    assert json.loads(calls.read_text()) == ["-n", tool, "-i", "500"]  # what sudo itself was given
    assert probe.error == (
        "cpu-gpu-ane: /usr/bin/powermetrics gave no reading: sudo: a password is required; "
        "allow it without a password (sudoers NOPASSWD) for the lab user"
    )


def test_a_root_tool_run_as_root_starts_directly_and_reports_its_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root: no sudo; a stand-in powermetrics (no Mac here) that fails says why in its own words."""
    said = "powermetrics: unrecognized sampler"
    script = _stand_in(tmp_path, f"import sys\nprint({said!r}, file=sys.stderr)\nsys.exit(1)\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    probe = CommandProbe(
        ProbeSpec("command", "cpu-gpu-ane", "mW", command=(str(script),), parser="powermetrics", needs_root=True)
    )
    assert probe.argv() == [str(script)]
    _run_until_exit(probe)
    assert probe.error == f"cpu-gpu-ane: {script} gave no reading: {said}"


def test_stand_in_powermetrics_blocks_are_split_at_each_sample_header(tmp_path: Path) -> None:
    """A stand-in for powermetrics (no Mac here): three samples, CPU power rising, then it waits."""
    script = _stand_in(
        tmp_path,
        "import time\n"
        f"block = {MAC!r}\n"
        "for i in range(3):\n"
        "    print('*** Sampled system activity (Tue Dec  1 07:40:12 2026 +0000) (502.31ms elapsed) ***')\n"
        "    print(block.replace('CPU Power: 4213 mW', 'CPU Power: %d mW' % (4000 + i)), flush=True)\n"
        "print('*** Sampled system activity (next) ***', flush=True)\n"
        "time.sleep(30)\n",
    )
    probes = Probes([ProbeSpec("command", "cpu-gpu-ane", "mW", command=(str(script),), parser="powermetrics")])
    probes.start()
    try:
        deadline = time.monotonic() + 10
        while probes.records().get("cpu-gpu-ane", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        reading = probes.read({})
    finally:
        probes.stop()
    assert reading["power_mw"]["cpu"] == 4002.0 and reading["thermal_pressure"] == "Nominal"


def test_thermal_spec_reads_the_profile_readers_and_names_a_bad_one() -> None:
    readers = [
        r.spec() for r in load_platform("jetson-orin", directory=REPO / "devices" / "platforms").telemetry.readers()
    ]
    spec = parse_thermal({"interval_s": 0.5, "readers": readers})
    assert isinstance(spec, ThermalSpec) and spec.interval_s == 0.5
    assert [(p.kind, p.parser) for p in spec.readers] == [
        ("sysfs", None),
        ("sysfs", None),
        ("sysfs", None),
        ("command", "tegrastats"),
    ]
    assert spec.readers[-1].command == ("tegrastats", "--interval", "500")
    with pytest.raises(SpecError, match=r"thermal\.readers\[0\] needs a command and a parser"):
        jtop = {"kind": "command", "label": "x", "unit": "mW", "command": ["x"], "parser": "jtop"}
        parse_thermal({"readers": [jtop]})
    with pytest.raises(SpecError, match=r"thermal\.readers\[0\]\.scale must be float"):
        parse_thermal({"readers": [{"kind": "sysfs", "label": "x", "unit": "C", "path": "/x", "scale": "big"}]})


def test_a_gpu_clock_drop_and_raised_thermal_pressure_count_as_throttling() -> None:
    tegra = parse_tegrastats(ORIN)
    slower = parse_tegrastats(ORIN.replace("GR3D_FREQ 45%@[612,612]", "GR3D_FREQ 99%@[306,306]"))
    verdict = assess_throttle({"thermal": {"before": tegra, "during": [tegra, slower], "after": slower}})
    assert verdict.throttled and verdict.reasons == ("GR3D clock fell 50% during the run (limit 10%)",)
    assert verdict.power_mw["VDD_CPU_CV"] == 795.0
    # EMC (memory) clocks follow their own demand and are not judged.
    emc = parse_tegrastats(ORIN.replace("EMC_FREQ 0%@2133", "EMC_FREQ 0%@665"))
    assert not assess_throttle({"thermal": {"before": tegra, "during": [tegra, emc], "after": emc}}).throttled
    mac = parse_powermetrics(MAC)
    hot = parse_powermetrics(MAC.replace("Nominal", "Heavy"))
    verdict = assess_throttle({"thermal": {"before": mac, "during": [mac, hot], "after": mac}})
    assert verdict.reasons == ("thermal pressure Heavy during the run (powermetrics; nominal expected)",)


def test_a_cpu_share_window_of_a_few_clock_ticks_per_cpu_is_not_read_as_a_share() -> None:
    """/proc counts whole 10 ms ticks on every CPU: a window of a few ticks per CPU reads 0% or 100% by rounding
    alone, so it gives no share and stays open; the next reading then covers its stretch too."""
    start = CpuTicks(machine_busy=1_000, machine_total=4_000, own=300)
    window = CpuShareWindow(cpus=2, start=start)
    # 2 CPUs, 4 ticks (20 ms), all of them another process's: not "other processes used 100%".
    assert window.share(CpuTicks(1_004, 4_004, 300)) is None
    # 50 ticks (0.25 s) since the start, not since the short reading: 30 busy, 10 of them ours.
    assert window.share(CpuTicks(1_030, 4_050, 310)) == 0.4
    assert window.start == CpuTicks(1_030, 4_050, 310)  # that window closed; the next opens here
    # This process's own ticks can round above the machine's: a share is never below 0.
    assert window.share(CpuTicks(1_040, 4_100, 330)) == 0.0


def test_the_ticks_a_cpu_share_needs_grow_with_the_cpu_count() -> None:
    """50 ticks are 0.25 s on 2 CPUs but 8 ms on 64, where one tick of rounding per CPU swamps the share."""
    start = CpuTicks(machine_busy=10_000, machine_total=40_000, own=3_000)
    fifty = CpuTicks(10_030, 40_050, 3_010)
    assert CpuShareWindow(cpus=2, start=start).share(fifty) == 0.4
    assert CpuShareWindow(cpus=64, start=start).share(fifty) is None
    # 1,600 ticks on 64 CPUs are 0.25 s: 800 busy, 400 of them ours.
    assert CpuShareWindow(cpus=64, start=start).share(CpuTicks(10_800, 41_600, 3_400)) == 0.25


def test_the_sampler_reads_real_proc_counters_into_a_share_or_none() -> None:
    """On Linux the sampler's windows read /proc for real: back-to-back samples are (all but always) too
    short a window and carry None; one taken after a busy second carries a share in 0..1."""
    from harness.agent.thermal import MIN_TICKS_PER_CPU, Sampler

    sampler = Sampler(interval_s=0.0, origin=time.monotonic())
    sampler._sample()
    sampler._sample()
    # Four times the window a share needs at 100 Hz, spent on this CPU so the clock ticks for sure.
    until = time.monotonic() + 4 * MIN_TICKS_PER_CPU / 100
    while time.monotonic() < until:
        pass
    sampler._sample()
    shares = [s["foreign_cpu"] for s in sampler.samples]
    assert all(share is None or 0.0 <= share <= 1.0 for share in shares[:2]), shares
    assert isinstance(shares[2], float) and 0.0 <= shares[2] <= 1.0, shares
