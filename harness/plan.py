"""Plan variants: a catalog model x a device's platform profile -> backend x precision x size x threads.

Every planned variant has its FP32 reference in the plan too (``Variant.reference()``: the same
backend, size and threads at fp32), listed before the variants compared with it, so parity always
finds its reference on the same device. A backend whose runtime the device does not declare is left
out; a device that declares no runtimes gets everything its platform runs.
"""

from __future__ import annotations

from .build.backends import BACKENDS, get_backend
from .catalog import ModelEntry
from .errors import UnknownNameError
from .lab.inventory import Device
from .lab.platforms import PlatformProfile
from .records import Variant

# Backends whose runner ignores a CPU thread count (the accelerator does the work): one thread
# setting, the runtime's own, instead of one variant per count that would all measure the same.
THREADLESS_BACKENDS = frozenset({"tensorrt", "coreml"})


def input_sizes(model: ModelEntry) -> tuple[int | None, ...]:
    """The input sizes to plan: the catalog's own shape (None) first, then the other square sides.

    The catalog shape is planned whether or not input_sizes lists its side: a run plans only it by
    default, and a model whose input_sizes left it out would otherwise vanish from that run unseen.
    """
    height, width = model.input.size
    others = (s for s in model.input_sizes if not (s == height and s == width))
    return tuple(dict.fromkeys((None, *others)))


def plan_variants(
    model: ModelEntry, device: Device, profile: PlatformProfile, *, backends: set[str] | None = None
) -> list[Variant]:
    """Every variant of ``model`` the device runs, FP32 references first within each backend and size."""
    if backends is not None:
        for name in sorted(backends - set(BACKENDS)):
            raise UnknownNameError("backend", name, list(BACKENDS))
    if device.threads is not None:
        thread_counts: tuple[int | None, ...] = (device.threads,)
    else:
        thread_counts = profile.threads
    variants: list[Variant] = []
    for name, precisions in profile.runtimes.items():
        if backends is not None and name not in backends:
            continue
        backend = get_backend(name)
        if device.runtimes is not None and backend.runtime not in device.runtimes:
            continue
        counts = (None,) if name in THREADLESS_BACKENDS else thread_counts
        # The reference first; a backend that cannot build fp32 (the Edge TPU) has none of its own.
        ordered = sorted(dict.fromkeys(precisions), key=lambda p: p != "fp32")
        if "fp32" not in ordered and "fp32" in backend.precisions:
            ordered.insert(0, "fp32")
        for size in input_sizes(model):
            for threads in counts:
                options = device.backend_options(name)
                variants.extend(Variant(name, precision, size, threads, options) for precision in ordered)
    return variants
