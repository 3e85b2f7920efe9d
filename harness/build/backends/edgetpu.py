"""Edge TPU (Coral): a full-INT8 .tflite from the LiteRT backend, then Google's edgetpu_compiler.

The compiler runs on the host (x86-64 Debian/Ubuntu only). Its log says how many operations were
mapped to the Edge TPU and how many fall back to the CPU; that count decides whether the board is
really used, so it is parsed, written beside the artifact (``edgetpu_compile.json``) and a model
with nothing mapped is a build error rather than a slow CPU benchmark in disguise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BuildError, ConfigError, ToolchainMissing
from .litert import convert_tflite
from .onnxruntime import check_options, check_precision
from .protocol import CompileRequest

INSTALL_HINT = (
    "install Google's Edge TPU compiler (x86-64 Debian/Ubuntu): add the apt repository "
    "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' with its key, then "
    "'apt-get install edgetpu-compiler'; or set EDGEBENCH_EDGETPU_COMPILER to its path"
)
REPORT_FILE = "edgetpu_compile.json"
COMPILE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class OperatorLine:
    operator: str
    count: int
    status: str


@dataclass(frozen=True)
class EdgeTpuCompileReport:
    """What edgetpu_compiler said about one model."""

    compiler_version: str | None
    success: bool
    total_ops: int | None
    ops_on_tpu: int | None
    ops_on_cpu: int | None
    subgraphs: int | None
    on_chip_memory: str | None
    off_chip_memory: str | None
    operators: tuple[OperatorLine, ...] = field(default_factory=tuple)

    @property
    def fully_mapped(self) -> bool:
        return self.ops_on_cpu == 0 and bool(self.ops_on_tpu)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fully_mapped"] = self.fully_mapped
        return data


def _int(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _text(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def parse_compiler_log(text: str) -> EdgeTpuCompileReport:
    """Parse edgetpu_compiler's stdout (or its .log): versions 2.x to 16.x print the same summary.

    When every operation maps, the compiler prints no "will run on" lines; the total then all ran
    on the TPU, which the operator table (every row "Mapped to Edge TPU") confirms.
    """
    total = _int(r"^Total number of operations:\s*(\d+)", text)
    on_tpu = _int(r"^Number of operations that will run on Edge TPU:\s*(\d+)", text)
    on_cpu = _int(r"^Number of operations that will run on CPU:\s*(\d+)", text)
    operators = tuple(
        OperatorLine(m.group(1), int(m.group(2)), m.group(3).strip())
        for m in re.finditer(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s{2,}(\S.*)$", text, re.MULTILINE)
    )
    if operators and on_tpu is None:
        on_tpu = sum(o.count for o in operators if o.status == "Mapped to Edge TPU")
        on_cpu = sum(o.count for o in operators if o.status != "Mapped to Edge TPU")
    elif on_tpu is None and total is not None and "Model compiled successfully" in text:
        on_tpu, on_cpu = total, 0
    return EdgeTpuCompileReport(
        compiler_version=_text(r"^Edge TPU Compiler version\s+(\S+)", text),
        success="Model compiled successfully" in text,
        total_ops=total,
        ops_on_tpu=on_tpu,
        ops_on_cpu=on_cpu,
        subgraphs=_int(r"^Number of Edge TPU subgraphs:\s*(\d+)", text),
        on_chip_memory=_text(r"^On-chip memory used for caching model parameters:\s*(\S+)", text),
        off_chip_memory=_text(r"^Off-chip memory used for streaming uncached model parameters:\s*(\S+)", text),
        operators=operators,
    )


def compiler_command(
    compiler: str,
    model: Path,
    out_dir: Path,
    *,
    min_runtime_version: int | None = None,
    num_segments: int | None = None,
) -> list[str]:
    """The edgetpu_compiler argv: -s prints the operator table the parser reads."""
    argv = [compiler, "-s", "-o", str(out_dir)]
    if min_runtime_version is not None:
        argv += ["-m", str(min_runtime_version)]
    if num_segments is not None:
        argv += ["-n", str(num_segments)]
    return [*argv, str(model)]


def find_compiler() -> str:
    import os

    named = os.environ.get("EDGEBENCH_EDGETPU_COMPILER")
    found = named if named and Path(named).is_file() else shutil.which("edgetpu_compiler")
    if not found:
        raise ToolchainMissing("edgetpu_compiler is not installed on this host", fix=INSTALL_HINT)
    return found


def compile_report(artifact: Path) -> dict[str, Any] | None:
    """The compile report written beside an Edge TPU artifact (for the results' metrics)."""
    report = artifact.parent / REPORT_FILE
    return json.loads(report.read_text()) if report.is_file() else None


class EdgeTpuBackend:
    """Coral Edge TPU: runs on the device's LiteRT with the libedgetpu delegate."""

    name = "edgetpu"
    runtime = "litert"
    precisions: tuple[str, ...] = ("int8",)
    needs_calibration: tuple[str, ...] = ("int8",)
    recipe = 1
    build_options: tuple[str, ...] = ("min_runtime_version", "num_segments")
    run_options: tuple[str, ...] = ("edgetpu_device",)

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        segments = request.options.get("num_segments")
        if segments is not None and (isinstance(segments, bool) or segments != 1):
            # With -n the compiler writes model_segment_<i>_of_<n>_edgetpu.tflite, one per Edge TPU,
            # which only Coral's PipelinedModelRunner runs, across that many Edge TPUs; the runner has
            # no pipelined runner, and one segment's latency is not the model's.
            raise ConfigError(
                f"edgetpu option num_segments={segments!r} asks for the model split into segments for "
                "several Edge TPUs (Coral's model pipelining), which this runner cannot run",
                key="options.edgetpu.num_segments",
                fix="remove num_segments (or set it to 1): the whole model then compiles for one Edge TPU",
            )
        compiler = find_compiler()  # before the (slow) conversion: a missing tool fails at once
        quantised = convert_tflite(request, request.out_dir / "model.tflite")
        argv = compiler_command(
            compiler,
            quantised,
            request.out_dir,
            min_runtime_version=request.options.get("min_runtime_version"),
            num_segments=request.options.get("num_segments"),
        )
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise BuildError(f"edgetpu_compiler took longer than {COMPILE_TIMEOUT_S:.0f} s") from None
        report = parse_compiler_log(done.stdout)
        out = request.out_dir / f"{quantised.stem}_edgetpu.tflite"
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        if done.returncode != 0:
            raise BuildError(f"edgetpu_compiler failed (exit {done.returncode}): {tail}")
        if not report.success:
            raise BuildError(
                f"edgetpu_compiler exited 0 without 'Model compiled successfully' in its output: {tail}",
                fix="run the command by hand to see why: " + " ".join(argv),
            )
        if not out.is_file():
            found = sorted(p.name for p in request.out_dir.iterdir() if p != quantised)
            raise BuildError(
                f"edgetpu_compiler reported success but wrote no {out.name} in {request.out_dir}; "
                f"it wrote: {', '.join(found) or 'nothing'}",
                fix="check the compiler's version and options (-n splits the output into segment files)",
            )
        if not report.ops_on_tpu:
            raise BuildError(
                "edgetpu_compiler mapped no operation to the Edge TPU; the model would run on the CPU",
                fix="check the model is fully INT8 and uses Edge TPU operators (see coral.ai model requirements)",
            )
        (request.out_dir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=1))
        quantised.unlink()
        return out

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        run: dict[str, Any] = {"threads": threads, "edgetpu": True}
        if options.get("edgetpu_device"):
            run["edgetpu_device"] = str(options["edgetpu_device"])
        return run
