"""The inventory files a user starts from load, and what a user gets wrong in one is named precisely."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harness.agent.runtimes import known as runner_runtimes
from harness.errors import ConfigError
from harness.lab.inventory import Device, load_lab

DEVICES = Path(__file__).resolve().parents[2] / "devices"
FIVE_PLATFORMS = {"jetson-orin", "coral-devboard", "intel-nuc", "snapdragon-linux", "mac"}


def test_the_example_lab_has_one_device_of_each_platform() -> None:
    lab = load_lab(DEVICES / "example-lab.yaml")
    assert sorted(d.platform for d in lab.devices) == sorted(FIVE_PLATFORMS)
    for device in lab.devices:
        assert device.transport == "ssh" and device.host
        assert device.python is not None and device.python.startswith("/"), "no login shell: an absolute Python"
        assert device.runtimes, f"{device.name} declares its runtimes"
        assert set(device.runtimes) <= set(runner_runtimes()), f"{device.name}: runtimes the runner knows"


def test_the_example_labs_measure_block_and_device_options_are_valid() -> None:
    from harness.pipeline import measure_settings

    lab = load_lab(DEVICES / "example-lab.yaml")
    settings = measure_settings(lab)
    assert (settings.min_duration_s, settings.max_duration_s, settings.max_half_width) == (20, 60, 0.03)
    nuc = lab.device("nuc13-01")
    assert nuc.cpus == (0, 2, 4, 6) and dict(nuc.backend_options("openvino"))["streams"] == 1


def test_the_example_lab_reaches_the_coral_board_through_an_ssh_config_alias() -> None:
    coral = load_lab(DEVICES / "example-lab.yaml").device("coral-01")
    assert coral.host == "coral-01" and coral.user is None and coral.port is None  # all from ~/.ssh/config


def test_the_embedded_local_lab_loads() -> None:
    (device,) = load_lab(DEVICES / "local.yaml").devices
    assert device.transport == "local"


def _lab(tmp_path: Path, device_lines: str) -> Path:
    path = tmp_path / "lab.yaml"
    body = textwrap.indent(textwrap.dedent(device_lines), "    ")
    path.write_text(f"schema_version: 1\nname: t\ndevices:\n  - name: d1\n{body}", encoding="utf-8")
    return path


def test_a_misspelt_key_is_named_with_its_line(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\nkeep_alive_s: 5\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    assert info.value.one_line().startswith(f"{path}:7: devices[0].keep_alive_s: unknown key")


def test_an_env_name_a_shell_cannot_export_is_refused_at_load(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\nenv:\n  LD-LIBRARY-PATH: /opt/lib\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    text = info.value.one_line()
    assert text.startswith(f"{path}:8: devices[0].env.LD-LIBRARY-PATH: ") and "'LD-LIBRARY-PATH' is not valid" in text
    assert text.endswith("fix: use letters, digits and _ only, not starting with a digit, e.g. LD_LIBRARY_PATH")


def test_ssh_defaults() -> None:
    device = Device(name="d", platform="generic-linux", host="h")
    assert (device.connect_timeout_s, device.keepalive_s, device.cache_dir) == (10.0, 15.0, "~/.cache/edgebench")
    assert device.python_path == "python3"


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), st.text(max_size=40))
def test_any_shell_name_is_a_valid_env_key(name: str, value: str) -> None:
    assert Device(name="d", platform="mac", host="h", env={name: value}).env == {name: value}


@given(st.text(min_size=1, max_size=20).filter(lambda s: not s.isidentifier() or not s.isascii()))
def test_names_that_are_not_shell_identifiers_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        Device(name="d", platform="mac", host="h", env={name: "x"})


def _measure_lab(tmp_path: Path, measure: str, device_lines: str = "platform: intel-nuc\nhost: nuc\n") -> Path:
    path = tmp_path / "lab.yaml"
    block = textwrap.indent(textwrap.dedent(measure), "  ")
    body = textwrap.indent(textwrap.dedent(device_lines), "    ")
    path.write_text(f"schema_version: 1\nname: t\nmeasure:\n{block}devices:\n  - name: d1\n{body}", encoding="utf-8")
    return path


def test_the_measure_block_sets_the_stop_rule_and_unset_keys_keep_their_defaults(tmp_path: Path) -> None:
    from harness.pipeline import MeasureSettings, measure_settings

    lab = load_lab(_measure_lab(tmp_path, "min_duration_s: 30\nmax_duration_s: 120\nmax_half_width: 0.02\n"))
    settings = measure_settings(lab)
    assert (settings.min_duration_s, settings.max_duration_s, settings.max_half_width) == (30, 120, 0.02)
    assert settings.min_iterations == MeasureSettings().min_iterations
    assert settings.spec()["stop"] == {
        "min_iterations": 400,
        "min_duration_s": 30,
        "max_duration_s": 120,
        "max_half_width": 0.02,
        "percentiles": [0.5, 0.95, 0.99],
    }


def test_the_measure_block_sets_the_warm_up_caps_the_runner_gets(tmp_path: Path) -> None:
    from harness.agent.protocol import WarmupSpec
    from harness.pipeline import MeasureSettings, measure_settings

    lab = load_lab(_measure_lab(tmp_path, "warmup_max_duration_s: 1.5\nwarmup_max_iterations: 300\n"))
    warmup = measure_settings(lab).spec()["warmup"]
    assert warmup == {"window": 20, "max_iterations": 300, "max_duration_s": 1.5}
    assert MeasureSettings().spec()["warmup"]["max_duration_s"] == WarmupSpec().max_duration_s == 3.0
    with pytest.raises(ConfigError) as info:
        load_lab(_measure_lab(tmp_path, "warmup_max_duration_s: 0\n"))
    assert "warmup_max_duration_s" in info.value.one_line()


def test_the_stop_rule_pins_the_percentiles_the_lab_or_the_flag_names(tmp_path: Path) -> None:
    from harness.pipeline import measure_settings, stop_on_flag

    lab = load_lab(_measure_lab(tmp_path, "stop_on: [P99]\n"))
    assert measure_settings(lab).spec()["stop"]["percentiles"] == [0.99]
    flagged = measure_settings(lab, stop_on=stop_on_flag("P50, p95"))
    assert flagged.spec()["stop"]["percentiles"] == [0.5, 0.95], "the flag wins, any case, spaces allowed"
    assert stop_on_flag(None) is None


@pytest.mark.parametrize(
    ("text", "message"), [("p99.9", "'p99.9' is not a reported percentile"), (",", "no percentile to stop on")]
)
def test_a_stop_percentile_the_results_do_not_report_is_refused_naming_the_flag(
    tmp_path: Path, text: str, message: str
) -> None:
    from harness.pipeline import measure_settings, stop_on_flag

    with pytest.raises(ConfigError) as info:
        measure_settings(load_lab(_measure_lab(tmp_path, "batch: 1\n")), stop_on=stop_on_flag(text))
    assert info.value.key == "--stop-on" and message in str(info.value)
    assert info.value.one_line().endswith("fix: use one or more of p50, p90, p95, p99")


def test_a_bad_stop_percentile_in_the_lab_file_names_the_file_and_key(tmp_path: Path) -> None:
    from harness.pipeline import measure_settings

    path = _measure_lab(tmp_path, "stop_on: [p99, p100]\n")
    with pytest.raises(ConfigError) as info:
        measure_settings(load_lab(path))
    assert info.value.file == path.resolve() and info.value.key == "measure.stop_on"
    assert "'p100' is not a reported percentile" in str(info.value)


def test_flags_beat_quick_and_quick_beats_the_lab_file(tmp_path: Path) -> None:
    from harness.pipeline import measure_settings

    lab = load_lab(_measure_lab(tmp_path, "min_duration_s: 30\nmax_duration_s: 120\nbatch: 4\n"))
    quick = measure_settings(lab, quick=True)
    assert (quick.min_duration_s, quick.max_duration_s, quick.batch) == (0.5, 5.0, 4)
    flagged = measure_settings(lab, quick=True, max_duration_s=2.0, batch=None)
    assert (flagged.max_duration_s, flagged.batch) == (2.0, 4), "a flag left out (None) changes nothing"


def test_a_misspelt_measure_key_is_named_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_lab(_measure_lab(tmp_path, "max_duration_s: 20\nmin_duraton_s: 5\n"))
    assert info.value.line == 5 and info.value.key == "measure.min_duraton_s"
    assert "unknown key" in str(info.value)


def test_a_minimum_duration_past_the_cap_names_where_it_was_set(tmp_path: Path) -> None:
    from harness.pipeline import measure_settings

    path = _measure_lab(tmp_path, "min_duration_s: 30\n")
    with pytest.raises(ConfigError) as info:
        measure_settings(load_lab(path))  # the default cap is 8 s
    assert info.value.file == path.resolve() and info.value.key == "measure.min_duration_s"
    assert "longer than the time cap 8 s" in str(info.value) and "--max-duration" in info.value.one_line()
    with pytest.raises(ConfigError) as flag:
        measure_settings(load_lab(_measure_lab(tmp_path, "batch: 1\n")), min_duration_s=10.0)
    assert flag.value.key == "--min-duration" and flag.value.file is None


def test_device_options_name_their_backend_and_option_or_list_the_known_ones(tmp_path: Path) -> None:
    ok = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\ncpus: [2, 3]\noptions:\n  openvino: {streams: 2}\n")
    device = load_lab(ok).devices[0]
    assert device.cpus == (2, 3)
    assert device.backend_options("openvino") == (("streams", 2),) and device.backend_options("litert") == ()
    with pytest.raises(ConfigError) as info:
        load_lab(_lab(tmp_path, "platform: intel-nuc\nhost: nuc\noptions:\n  openvino: {stream: 2}\n"))
    assert info.value.key == "devices[0].options.openvino.stream" and info.value.line == 8
    assert "openvino has no option 'stream'" in str(info.value) and "streams" in info.value.one_line()
    with pytest.raises(ConfigError) as backend:
        load_lab(_lab(tmp_path, "platform: intel-nuc\nhost: nuc\noptions:\n  openvno: {streams: 2}\n"))
    assert backend.value.key == "devices[0].options.openvno" and "onnxruntime, openvino" in backend.value.one_line()
    with pytest.raises(ConfigError, match=r"devices\[0\]\.cpus: CPU ids must be distinct"):
        load_lab(_lab(tmp_path, "platform: intel-nuc\nhost: nuc\ncpus: [1, 1]\n"))


def test_a_cap_alone_lowers_the_default_minimum_instead_of_contradicting_it(tmp_path: Path) -> None:
    from harness.pipeline import measure_settings

    lab = load_lab(_measure_lab(tmp_path, "batch: 1\n"))
    assert measure_settings(lab, max_duration_s=0.3).min_duration_s == 0.3
    assert measure_settings(lab, quick=True, max_duration_s=0.2).min_duration_s == 0.2


@pytest.mark.parametrize(
    ("line", "key", "got", "fix"),
    [
        ('port: "22"', "port", "(got '22')", "write a whole number, without quotes"),
        ("threads: true", "threads", "(got True)", "write a number: true and false are not numbers"),
        ("threads: 2.5", "threads", "(got 2.5)", "write a whole number, without a fraction"),
        ("cpus: [0, '1']", "cpus[1]", "(got '1')", "write a whole number, without quotes"),
        ("job_timeout_s: .inf", "job_timeout_s", "(got inf)", "write a finite number (not .inf or .nan)"),
        ("python: python3", "python", "(got 'python3')", "write the interpreter's full path, e.g. /usr/bin/python3"),
        ("python: ~/venv/bin/python", "python", "(got '~/venv/bin/python')", "write the interpreter's full path"),
    ],
    ids=["quoted-port", "bool-threads", "fraction-threads", "quoted-cpu", "inf-timeout", "bare-python", "tilde-python"],
)
def test_device_values_the_docs_rule_out_are_refused_with_the_fix(
    tmp_path: Path, line: str, key: str, got: str, fix: str
) -> None:
    path = _lab(tmp_path, f"platform: intel-nuc\nhost: nuc\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    text = info.value.one_line()
    assert text.startswith(f"{path}:7: devices[0].{key}: "), text
    assert got in text and f"; fix: {fix}" in text


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_an_infinite_or_nan_measure_value_is_refused(tmp_path: Path, value: str) -> None:
    path = _measure_lab(tmp_path, f"max_duration_s: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    assert info.value.line == 4 and info.value.key == "measure.max_duration_s"
    assert info.value.one_line().endswith("fix: write a finite number (not .inf or .nan)")


def test_a_misspelt_runtime_is_refused_listing_the_runners_runtimes(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\nruntimes:\n  - openvino\n  - onnxruntim\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    known = ", ".join(runner_runtimes())
    assert (
        info.value.one_line()
        == f"{path}:9: devices[0].runtimes[1]: unknown runtime 'onnxruntim'; fix: use one of: {known}"
    )


def test_a_backend_name_in_runtimes_says_which_runtime_runs_it(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: coral-devboard\nhost: coral\nruntimes: [edgetpu]\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    assert info.value.key == "devices[0].runtimes[0]" and "unknown runtime 'edgetpu'" in info.value.message
    assert "fix: edgetpu variants run on the litert runtime: list litert" in info.value.one_line()


def test_the_lab_remembers_its_file(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\nthreads: 4\nport: 2222\n")
    lab = load_lab(path)
    assert lab.lab_file == path.resolve() and lab.devices[0].threads == 4 and lab.devices[0].port == 2222
