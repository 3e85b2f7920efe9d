"""LiteRT (.tflite): FP32, FP16 weights, full INT8 and dynamic INT8, converted with litert-torch.

litert-torch is an optional extra with its own toolchain environment: version 0.10 pins
typing-extensions<4.13 and pydantic<2.12 (through xdsl and transformers), which would break
edgebench's own environment. So the conversion runs in a separate interpreter (a venv created with
``--system-site-packages``, so it reuses this environment's torch and onnx and adds only
litert-torch's own packages) as a subprocess speaking JSON: request on stdin, one result line on
stdout. ``EDGEBENCH_LITERT_PYTHON`` names that interpreter; by default it is
``<cache>/toolchains/litert-torch/bin/python``, or this interpreter when litert-torch imports here.

Every backend compiles from the same FP32 ONNX reference, so the toolchain first rebuilds the ONNX
graph as a torch module (``onnx_as_torch``: one torch call per ONNX node, weights from the ONNX
initialisers), which litert-torch and coremltools then convert. That also serves catalog entries
whose source is an .onnx file with no torch code at all. Quantisation is ai-edge-quantizer's, on
the converted float model: static int8 weights and activations calibrated on the catalog's set
(inputs and outputs become int8 too, what the Edge TPU compiler needs), dynamic int8, or fp16 weights.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from ...errors import BuildError, ToolchainMissing
from ..export import check_onnx
from .onnxruntime import check_options, check_precision, require_calibration
from .protocol import CompileRequest

TOOLCHAIN_PROTOCOL = 1
LITERT_TORCH_PIN = "litert-torch==0.10.0"
TOOLCHAIN_TIMEOUT_S = 1800.0


# ---- the toolchain interpreter ------------------------------------------------------------------
def default_toolchain_dir() -> Path:
    """``$EDGEBENCH_TOOLCHAINS/litert-torch``, else under the user's cache directory. Not under
    ``$EDGEBENCH_CACHE``: a toolchain is an install, shared by every build cache (and by tests that
    give each run a private cache)."""
    root = os.environ.get("EDGEBENCH_TOOLCHAINS")
    return (Path(root) if root else Path(platformdirs.user_cache_dir("edgebench")) / "toolchains") / "litert-torch"


def install_commands(directory: Path | None = None) -> list[list[str]]:
    """The commands that create the LiteRT toolchain venv (what the missing-toolchain error prints)."""
    venv = directory or default_toolchain_dir()
    # torch and onnx pinned to this environment's versions: an unpinned torch would pull a CUDA build.
    pins = [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in ("torch", "onnx")]
    return [
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        # harness itself is imported there from the source tree (PYTHONPATH): its light dependencies too.
        [str(venv / "bin" / "pip"), "install", *pins, LITERT_TORCH_PIN, "numpy", "pydantic", "PyYAML", "platformdirs"],
    ]


def toolchain_python() -> str:
    """The interpreter that has litert-torch; a BuildError that says how to make one otherwise."""
    named = os.environ.get("EDGEBENCH_LITERT_PYTHON")
    if named:
        if not Path(named).is_file():
            raise BuildError(
                f"EDGEBENCH_LITERT_PYTHON={named} does not exist",
                fix="point it at the python of a venv with litert-torch installed, or unset it",
            )
        return named
    if importlib.util.find_spec("litert_torch") is not None:
        return sys.executable
    default = default_toolchain_dir() / "bin" / "python"
    if default.is_file():
        return str(default)
    steps = " && ".join(" ".join(c) for c in install_commands())
    raise ToolchainMissing(
        "LiteRT conversion needs litert-torch, which is not installed (an optional extra, kept in its own venv "
        "because it pins typing-extensions<4.13 and pydantic<2.12)",
        fix=f"run: {steps}   (or set EDGEBENCH_LITERT_PYTHON to a python that has it)",
    )


def run_toolchain(request: Mapping[str, Any], python: str | None = None) -> dict[str, Any]:
    """Run the conversion in the toolchain interpreter; its one JSON line is the result."""
    python = python or toolchain_python()
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        done = subprocess.run(
            [python, "-c", "from harness.build.backends.litert import toolchain_main; toolchain_main()"],
            input=json.dumps(request).encode(),
            capture_output=True,
            env=env,
            timeout=TOOLCHAIN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"LiteRT conversion took longer than {TOOLCHAIN_TIMEOUT_S:.0f} s and was stopped") from None
    reply = _last_json(done.stdout)
    if reply is None or reply.get("status") != "ok":
        message = (reply or {}).get("message") or _tail(done.stderr) or f"exit {done.returncode}"
        raise BuildError(f"LiteRT conversion failed: {message}", fix=(reply or {}).get("fix"))
    return reply


def _last_json(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode("utf-8", errors="replace").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _tail(stderr: bytes) -> str:
    return " | ".join(stderr.decode("utf-8", errors="replace").strip().splitlines()[-3:])


# ---- the backend --------------------------------------------------------------------------------
class LiteRtBackend:
    """LiteRT .tflite for the CPU (XNNPACK); the Edge TPU backend compiles its INT8 model further."""

    name = "litert"
    runtime = "litert"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-dynamic")
    needs_calibration: tuple[str, ...] = ("int8",)
    recipe = 1
    build_options: tuple[str, ...] = ()
    run_options: tuple[str, ...] = ("xnnpack",)

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        return convert_tflite(request, request.out_dir / f"model-{request.precision}.tflite")

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        return {"threads": threads, "xnnpack": bool(options.get("xnnpack", True))}


def convert_tflite(request: CompileRequest, out: Path, *, python: str | None = None) -> Path:
    """Convert the request's ONNX to a .tflite at ``out`` in the toolchain interpreter."""
    check_onnx(request.onnx.path, request.onnx.input_shape)
    calibration_file = None
    if request.precision == "int8":
        calibration_file = request.out_dir / "calibration.npy"
        np.save(calibration_file, require_calibration("litert", request))
    job = {
        "protocol": TOOLCHAIN_PROTOCOL,
        "onnx": str(request.onnx.path),
        "input_name": request.onnx.input_name,
        "shape": [1, *request.onnx.input_shape[1:]],
        "precision": request.precision,
        "calibration": str(calibration_file) if calibration_file else None,
        "out": str(out),
    }
    try:
        run_toolchain(job, python)
    finally:
        if calibration_file is not None:
            calibration_file.unlink(missing_ok=True)
    if not out.is_file():
        raise BuildError(f"LiteRT conversion reported success but wrote no {out.name}")
    return out


# ---- the ONNX graph as a torch module (used here and by the Core ML backend) ---------------------
SUPPORTED_OPS = (
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv", "Div", "Flatten",
    "Gemm", "GlobalAveragePool", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "MatMul", "MaxPool",
    "Mul", "ReduceMean", "Relu", "Reshape", "Sigmoid", "Softmax", "Sub", "Tanh", "Transpose",
)  # fmt: skip


def onnx_as_torch(path: Path) -> Any:
    """A torch.nn.Module that computes the ONNX graph node by node (CNN operator set, see SUPPORTED_OPS)."""
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    unsupported = sorted({n.op_type for n in graph.node} - set(SUPPORTED_OPS))
    if unsupported:
        raise BuildError(
            f"{path.name} uses ONNX operators the LiteRT/Core ML conversion does not map: {', '.join(unsupported)}",
            fix=f"the mapped set is: {', '.join(SUPPORTED_OPS)}",
        )
    constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    initializer_names = {i.name for i in graph.initializer}
    input_name = next(i.name for i in graph.input if i.name not in initializer_names)
    output_names = [o.name for o in graph.output]

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    class OnnxGraph(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._buffer_of: dict[str, str] = {}
            for i, (name, value) in enumerate(constants.items()):
                if value.dtype.kind == "f":
                    self.register_buffer(f"w{i}", torch.from_numpy(np.array(value, dtype=np.float32)))
                    self._buffer_of[name] = f"w{i}"

        def forward(self, x: Any) -> Any:
            env: dict[str, Any] = {input_name: x}

            def tensor(name: str) -> Any:
                if name in env:
                    return env[name]
                return getattr(self, self._buffer_of[name])

            for node in graph.node:
                if node.op_type == "Constant":
                    continue
                a = attrs(node)
                ins = [n for n in node.input]
                env[node.output[0]] = _op(node.op_type, a, ins, tensor, constants, torch, F)
            outs = [env[o] for o in output_names]
            return outs[0] if len(outs) == 1 else tuple(outs)

    return OnnxGraph().eval()


def _pads(a: Mapping[str, Any], spatial: int) -> tuple[list[int], list[int]]:
    pads = list(a.get("pads", [0] * (2 * spatial)))
    return pads[:spatial], pads[spatial:]


def _op(
    op: str,
    a: Mapping[str, Any],
    ins: list[str],
    tensor: Callable[[str], Any],
    constants: Mapping[str, np.ndarray],
    torch: Any,
    F: Any,
) -> Any:
    def static(i: int) -> np.ndarray | None:
        return constants.get(ins[i]) if len(ins) > i and ins[i] else None

    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise BuildError(f"ONNX {op} with auto_pad={a['auto_pad']!r} is not mapped; re-export with explicit pads")
    if op in ("Conv", "MaxPool", "AveragePool"):
        x = tensor(ins[0])
        spatial = x.dim() - 2
        begin, end = _pads(a, spatial)
        padding: Any = begin
        if begin != end:  # asymmetric: pad explicitly, then run unpadded
            flat = [p for pair in zip(reversed(begin), reversed(end), strict=True) for p in pair]
            x = F.pad(x, flat, value=float("-inf") if op == "MaxPool" else 0.0)
            padding = [0] * spatial
        strides = list(a.get("strides", [1] * spatial))
        if op == "Conv":
            bias = tensor(ins[2]) if len(ins) > 2 and ins[2] else None
            conv = F.conv2d if spatial == 2 else F.conv1d
            return conv(
                x, tensor(ins[1]), bias, stride=strides, padding=padding,
                dilation=list(a.get("dilations", [1] * spatial)), groups=int(a.get("group", 1)),
            )  # fmt: skip
        kernel = list(a["kernel_shape"])
        ceil = bool(a.get("ceil_mode", 0))
        if op == "MaxPool":
            return F.max_pool2d(x, kernel, strides, padding, ceil_mode=ceil)
        return F.avg_pool2d(
            x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0))
        )
    if op == "Relu":
        return F.relu(tensor(ins[0]))
    if op == "Clip":
        low, high = static(1), static(2)
        lo = float(low) if low is not None else float(a.get("min", float("-inf")))
        hi = float(high) if high is not None else float(a.get("max", float("inf")))
        if lo == 0.0 and hi == 6.0:
            return F.relu6(tensor(ins[0]))
        return torch.clamp(tensor(ins[0]), lo, hi)
    if op == "Sigmoid":
        return torch.sigmoid(tensor(ins[0]))
    if op == "Tanh":
        return torch.tanh(tensor(ins[0]))
    if op == "HardSigmoid":
        return torch.clamp(tensor(ins[0]) * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0.0, 1.0)
    if op == "HardSwish":
        return F.hardswish(tensor(ins[0]))
    if op == "LeakyRelu":
        return F.leaky_relu(tensor(ins[0]), float(a.get("alpha", 0.01)))
    if op in ("Add", "Sub", "Mul", "Div"):
        fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
        return fn(tensor(ins[0]), tensor(ins[1]))
    if op == "GlobalAveragePool":
        return torch.mean(tensor(ins[0]), dim=(2, 3), keepdim=True)
    if op == "ReduceMean":
        axes = static(1)
        dims = [int(d) for d in (axes if axes is not None else a["axes"])]
        return torch.mean(tensor(ins[0]), dim=dims, keepdim=bool(a.get("keepdims", 1)))
    if op == "Reshape":
        shape = static(1)
        if shape is None:
            raise BuildError("ONNX Reshape with a computed shape is not mapped; export with a constant shape")
        return torch.reshape(tensor(ins[0]), [int(s) for s in shape])
    if op == "Flatten":
        return torch.flatten(tensor(ins[0]), int(a.get("axis", 1)))
    if op == "Gemm":
        x, w = tensor(ins[0]), tensor(ins[1])
        if a.get("transA", 0):
            x = x.t()
        if a.get("transB", 0):
            w = w.t()
        y = torch.matmul(x, w) * float(a.get("alpha", 1.0))
        if len(ins) > 2 and ins[2]:
            y = y + tensor(ins[2]) * float(a.get("beta", 1.0))
        return y
    if op == "MatMul":
        return torch.matmul(tensor(ins[0]), tensor(ins[1]))
    if op == "BatchNormalization":
        return F.batch_norm(
            tensor(ins[0]), tensor(ins[3]), tensor(ins[4]), tensor(ins[1]), tensor(ins[2]),
            training=False, eps=float(a.get("epsilon", 1e-5)),
        )  # fmt: skip
    if op == "Concat":
        return torch.cat([tensor(n) for n in ins], dim=int(a["axis"]))
    if op == "Softmax":
        return torch.softmax(tensor(ins[0]), dim=int(a.get("axis", -1)))
    if op == "Transpose":
        return tensor(ins[0]).permute(*[int(p) for p in a["perm"]])
    if op == "Identity":
        return tensor(ins[0])
    raise BuildError(f"ONNX operator {op} is not mapped")  # unreachable: SUPPORTED_OPS is checked first


# ---- inside the toolchain interpreter -----------------------------------------------------------
@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Converters print progress on stdout (from C++ too); keep stdout for the one result line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def toolchain_main() -> None:
    """Entry point in the toolchain venv: read one request on stdin, write one JSON line on stdout."""
    try:
        request = json.load(sys.stdin)
        with _stdout_to_stderr():
            details = _convert(request)
        reply: dict[str, Any] = {"status": "ok", **details}
    except BuildError as exc:
        reply = {"status": "error", "message": exc.message, "fix": exc.fix}
    except Exception as exc:  # the converter's own errors are many and untyped: report them, one line
        reply = {
            "status": "error",
            "message": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
        }
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def _convert(request: Mapping[str, Any]) -> dict[str, Any]:
    import litert_torch
    import torch

    out = Path(request["out"])
    float_path = out.with_name("float.tflite") if request["precision"] != "fp32" else out
    module = onnx_as_torch(Path(request["onnx"]))
    example = torch.zeros(tuple(request["shape"]), dtype=torch.float32)
    litert_torch.convert(module, (example,)).export(str(float_path))
    if request["precision"] == "fp32":
        return _describe(out)
    from ai_edge_quantizer import (  # type: ignore[import-not-found]  # only in the toolchain venv
        algorithm_manager,
        qtyping,
        quantizer,
        recipe,
    )

    qt = quantizer.Quantizer(str(float_path))
    if request["precision"] == "int8":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        calibration = np.load(request["calibration"])
        signature, input_key = _signature_input(float_path)
        samples = [{input_key: calibration[i : i + 1]} for i in range(len(calibration))]
        result = qt.quantize(qt.calibrate({signature: samples}))
    elif request["precision"] == "int8-dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = qt.quantize()
    else:  # fp16 weights, float compute
        qt.update_quantization_recipe(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                compute_precision=qtyping.ComputePrecision.FLOAT,
                explicit_dequantize=True,
            ),
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
        result = qt.quantize()
    result.export_model(str(out), overwrite=True)
    float_path.unlink(missing_ok=True)
    return _describe(out)


def _signature_input(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    signature = next(iter(signatures))
    return signature, signatures[signature]["inputs"][0]


def _describe(path: Path) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {
        "artifact": str(path),
        "input": {"shape": [int(d) for d in inp["shape"]], "dtype": np.dtype(inp["dtype"]).name},
        "output": {"shape": [int(d) for d in outp["shape"]], "dtype": np.dtype(outp["dtype"]).name},
    }
