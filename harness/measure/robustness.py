"""Robustness of one variant to image corruptions: corruption errors, mCE and the shift of its confidence.

Definitions follow Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019. With ``E(c, s)`` the top-1 error under corruption ``c`` at severity ``s``
and ``E_ref`` the normalising model's,

    CE(c)          = sum_s E(c, s) / sum_s E_ref(c, s)
    relative CE(c) = sum_s (E(c, s) - E_clean) / sum_s (E_ref(c, s) - E_ref_clean)

and mCE, relative mCE are their means over the 15 benchmark corruptions. The four extra corruptions are
reported per corruption but kept out of the means, as in the paper, so an mCE stays comparable with
published ones.

The normaliser is the FP32 model of the same run: CE 1.0 then means "as robust as the unquantised
model", which is the question an INT8 release asks, and it needs no ImageNet-C download. The paper's
AlexNet normaliser is used only when no reference is given and the data set is ImageNet.

A ratio with a zero or negative denominator is not a number anyone should gate on: CE is undefined when
the reference made no errors under a corruption, and relative CE when the reference's error did not
rise above its clean error. Those are reported as nan, left out of the means, and the reason is kept in
``RobustnessReport.excluded``.

Entropies are in nats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "CorruptionCell",
    "RobustnessReport",
    "cell_from_logits",
    "robustness_delta",
    "robustness_report",
]

_ORDER: Final[dict[str, int]] = {name: i for i, name in enumerate(CORRUPTIONS + EXTRA_CORRUPTIONS)}
_PAPER_SEVERITIES: Final[frozenset[int]] = frozenset(range(1, 6))

# AlexNet's top-1 error on ImageNet-C per corruption, averaged over severities 1-5: the normaliser of
# Hendrycks & Dietterich (ICLR 2019). The 15 benchmark values are the ones AugMix (Hendrycks et al., ICLR
# 2020; github.com/google-research/augmix, imagenet.py, ALEXNET_ERR) takes "from
# github.com/hendrycks/robustness". The four extras are not in the paper's mCE; their values come from
# ImageNet-C evaluation scripts that carry all 19 under the same attribution (independent copies agree
# to six digits), so they are less firmly sourced than the 15.
# Read-only: a module constant every report normalises by must not be edited in place.
ALEXNET_ERRORS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "gaussian_noise": 0.886428,
        "shot_noise": 0.894468,
        "impulse_noise": 0.922640,
        "defocus_blur": 0.819880,
        "glass_blur": 0.826268,
        "motion_blur": 0.785948,
        "zoom_blur": 0.798360,
        "snow": 0.866816,
        "frost": 0.826572,
        "fog": 0.819324,
        "brightness": 0.564592,
        "contrast": 0.853204,
        "elastic_transform": 0.646056,
        "pixelate": 0.717840,
        "jpeg_compression": 0.606500,
        "speckle_noise": 0.845388,
        "gaussian_blur": 0.787108,
        "spatter": 0.717512,
        "saturate": 0.658248,
    }
)
# AlexNet's clean top-1 error, for relative CE. The paper's table prints 43.5%; the weights its code
# loads (torchvision alexnet-owt-4df8aa71) are documented at 56.522% top-1 accuracy.
ALEXNET_CLEAN_ERROR: Final[float] = 1.0 - 0.56522


@dataclass(frozen=True)
class CorruptionCell:
    """One variant's result on one corruption at one severity."""

    corruption: str
    severity: int
    top1_acc: float
    mean_confidence: float
    mean_entropy: float

    def __post_init__(self) -> None:
        where = f"cell {self.corruption!r} severity {self.severity!r}"
        if not self.corruption:
            raise ValueError("a corruption cell needs a corruption name, e.g. 'gaussian_noise'")
        if isinstance(self.severity, bool) or not isinstance(self.severity, int) or self.severity < 1:
            raise ValueError(f"{where}: severity must be a positive integer, 1..5 for ImageNet-C")
        if not 0.0 <= self.top1_acc <= 1.0:
            raise ValueError(f"{where}: top1_acc={self.top1_acc!r} is a share and must lie in 0..1")
        if not 0.0 <= self.mean_confidence <= 1.0:
            raise ValueError(f"{where}: mean_confidence={self.mean_confidence!r} must lie in 0..1")
        if not self.mean_entropy >= 0.0:
            raise ValueError(f"{where}: mean_entropy={self.mean_entropy!r} must be >= 0 nats")


@dataclass(frozen=True)
class RobustnessReport:
    """What a variant's corruption cells say about its robustness, normalised by a reference model.

    ``excluded`` maps each corruption left out of ``mce`` or ``rel_mce`` to the reason. ``mce`` and
    ``rel_mce`` are nan when no benchmark corruption has a defined value.
    """

    clean_acc: float
    cells: tuple[CorruptionCell, ...]
    ce: Mapping[str, float]
    mce: float
    relative_ce: Mapping[str, float]
    rel_mce: float
    worst_corruption: str
    confidence_shift: Mapping[str, float]
    entropy_shift: Mapping[str, float]
    excluded: Mapping[str, str]


@dataclass(frozen=True)
class _Summary:
    acc: float
    confidence: float
    entropy: float


def _summarise(logits: npt.ArrayLike, labels: npt.ArrayLike, what: str) -> _Summary:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"{what} logits must be shaped (N, C) with N, C >= 1; got shape {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(
            f"{what} labels must be shaped ({z.shape[0]},), one per row of logits; got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} labels must be integer class indices; got dtype {y.dtype}")
    if ((y < 0) | (y >= z.shape[1])).any():
        raise ValueError(f"{what} labels must lie in 0..{z.shape[1] - 1} for {z.shape[1]} classes")
    bad = int((~np.isfinite(z)).sum())
    if bad:
        raise ValueError(
            f"{what} logits contain {bad} non-finite values; robustness needs finite outputs "
            "(check the variant's parity first: an FP16 overflow shows there)"
        )
    # log_softmax subtracts the row maximum first, so logits in the thousands do not overflow.
    log_p = log_softmax(z, axis=1)
    p = np.exp(log_p)
    entropy = -np.sum(p * log_p, axis=1)
    return _Summary(
        acc=float(np.mean(np.argmax(z, axis=1) == y)),
        confidence=float(np.mean(np.max(p, axis=1))),
        # Rounding can leave a one-hot row a hair below zero.
        entropy=float(max(np.mean(entropy), 0.0)),
    )


def cell_from_logits(
    corruption: str, severity: int, logits: npt.ArrayLike, labels: npt.ArrayLike
) -> CorruptionCell:
    """Score one corruption at one severity from the variant's (N, C) logits on the corrupted images."""
    s = _summarise(logits, labels, f"{corruption!r} severity {severity}")
    return CorruptionCell(corruption, severity, s.acc, min(s.confidence, 1.0), s.entropy)


def _ordered(names: Iterable[str]) -> list[str]:
    """Benchmark order first, then extras, then any other names alphabetically: reports read the same."""
    return sorted(set(names), key=lambda name: (_ORDER.get(name, len(_ORDER)), name))


def _grid(cells: Sequence[CorruptionCell], what: str) -> dict[str, dict[int, CorruptionCell]]:
    grid: dict[str, dict[int, CorruptionCell]] = {}
    for cell in cells:
        by_severity = grid.setdefault(cell.corruption, {})
        if cell.severity in by_severity:
            raise ValueError(
                f"{what} has two cells for {cell.corruption!r} severity {cell.severity}; "
                "give each corruption and severity once"
            )
        by_severity[cell.severity] = cell
    return grid


def _same_severities(name: str, have: Mapping[int, object], want: Iterable[int], what: str, fix: str) -> None:
    want_set = set(want)
    if set(have) != want_set:
        raise ValueError(
            f"{name!r}: candidate severities {sorted(have)} but {what} has {sorted(want_set)}; {fix}"
        )


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


def robustness_report(
    clean_logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    cells: Sequence[CorruptionCell],
    reference: Sequence[CorruptionCell] | None,
    reference_clean_acc: float | None,
    dataset: str | None = None,
) -> RobustnessReport:
    """Normalise a variant's corruption cells by a reference model into CE, mCE and their relative forms.

    ``reference`` is the FP32 model's cells from the same run, with ``reference_clean_acc`` its clean
    accuracy; every corruption of the candidate must be there at the same severities. Without a reference
    and with ``dataset == "imagenet"`` the published AlexNet errors normalise instead, which needs all
    five severities of each corruption.
    """
    clean = _summarise(clean_logits, labels, "clean")
    if not cells:
        raise ValueError("no corruption cells: run at least one corruption and severity")
    grid = _grid(cells, "cells")

    ref_grid: dict[str, dict[int, CorruptionCell]] | None = None
    if reference is not None:
        if reference_clean_acc is None or not 0.0 <= reference_clean_acc <= 1.0:
            raise ValueError(
                f"reference_clean_acc={reference_clean_acc!r}: with reference cells, pass the reference "
                "model's clean top-1 accuracy (0..1) too; relative CE needs it"
            )
        ref_grid = _grid(reference, "reference")
        missing = [name for name in _ordered(grid) if name not in ref_grid]
        if missing:
            raise ValueError(
                f"reference has no cells for {', '.join(missing)}; run the reference (FP32) model on the "
                "same corruptions as the candidate"
            )
        ref_clean_err = 1.0 - reference_clean_acc
    elif dataset == "imagenet":
        if reference_clean_acc is not None:
            raise ValueError(
                "reference_clean_acc was given without reference cells; pass both, or neither to "
                "normalise by the published AlexNet errors"
            )
        ref_clean_err = ALEXNET_CLEAN_ERROR
    else:
        raise ValueError(
            "a reference (FP32 run) is needed to normalise corruption errors: pass its cells as "
            "reference= and its clean accuracy as reference_clean_acc=; the published AlexNet errors "
            f"apply only with dataset='imagenet' (got dataset={dataset!r})"
        )

    clean_err = 1.0 - clean.acc
    ce: dict[str, float] = {}
    rel: dict[str, float] = {}
    excluded: dict[str, str] = {}
    mean_acc: dict[str, float] = {}
    conf_shift: dict[str, float] = {}
    ent_shift: dict[str, float] = {}

    for name in _ordered(grid):
        by_severity = grid[name]
        severities = sorted(by_severity)
        errs = [1.0 - by_severity[s].top1_acc for s in severities]
        reasons: list[str] = []
        if ref_grid is not None:
            _same_severities(
                name, by_severity, ref_grid[name], "reference", "run both models at the same severities"
            )
            ref_errs = [1.0 - ref_grid[name][s].top1_acc for s in severities]
        elif name in ALEXNET_ERRORS:
            _same_severities(
                name,
                by_severity,
                _PAPER_SEVERITIES,
                "the AlexNet normaliser",
                "AlexNet's errors are averages over severities 1-5; run all five or pass a reference",
            )
            ref_errs = [ALEXNET_ERRORS[name]] * len(severities)
        else:
            ref_errs = []
            reasons.append("no published AlexNet error to normalise it")

        ce_value = rel_value = math.nan
        if ref_errs:
            ce_den = math.fsum(ref_errs)
            rel_den = math.fsum(e - ref_clean_err for e in ref_errs)
            if ce_den > 0.0:
                ce_value = math.fsum(errs) / ce_den
            else:
                reasons.append("CE undefined: the reference made no errors under it")
            if rel_den > 0.0:
                rel_value = math.fsum(e - clean_err for e in errs) / rel_den
            else:
                reasons.append(
                    "relative CE undefined: the reference's error did not rise above its clean error "
                    f"(summed rise {rel_den * 100:+.2f} pp)"
                )
        if name not in CORRUPTIONS:
            kind = (
                "extra ImageNet-C corruption" if name in EXTRA_CORRUPTIONS else "not an ImageNet-C corruption"
            )
            reasons.insert(0, f"{kind}: reported, but not part of mCE")
        if reasons:
            excluded[name] = "; ".join(reasons)

        ce[name] = ce_value
        rel[name] = rel_value
        cell_list = [by_severity[s] for s in severities]
        mean_acc[name] = math.fsum(c.top1_acc for c in cell_list) / len(cell_list)
        conf_shift[name] = math.fsum(c.mean_confidence for c in cell_list) / len(cell_list) - clean.confidence
        ent_shift[name] = math.fsum(c.mean_entropy for c in cell_list) / len(cell_list) - clean.entropy

    benchmark = [name for name in ce if name in CORRUPTIONS]
    # min() keeps the first of equal values, and the dict is in benchmark order, so ties resolve stably.
    worst = min(mean_acc, key=lambda name: mean_acc[name])
    return RobustnessReport(
        clean_acc=clean.acc,
        cells=tuple(c for name in _ordered(grid) for c in (grid[name][s] for s in sorted(grid[name]))),
        ce=ce,
        mce=_mean(ce[name] for name in benchmark),
        relative_ce=rel,
        rel_mce=_mean(rel[name] for name in benchmark),
        worst_corruption=worst,
        confidence_shift=conf_shift,
        entropy_shift=ent_shift,
        excluded=excluded,
    )


def _mean_accuracy(report: RobustnessReport) -> dict[str, tuple[float, frozenset[int]]]:
    grid = _grid(report.cells, "report")
    return {
        name: (
            math.fsum(c.top1_acc for c in by_severity.values()) / len(by_severity),
            frozenset(by_severity),
        )
        for name, by_severity in grid.items()
    }


def robustness_delta(candidate: RobustnessReport, reference: RobustnessReport) -> Mapping[str, float]:
    """Per corruption, candidate minus reference mean accuracy over severities, in percentage points.

    Negative means the candidate (say INT8) holds up worse than the reference (FP32). Both reports must
    cover the same corruptions at the same severities, or the means would not be comparable.
    """
    cand = _mean_accuracy(candidate)
    ref = _mean_accuracy(reference)
    if set(cand) != set(ref):
        only_c = _ordered(set(cand) - set(ref))
        only_r = _ordered(set(ref) - set(cand))
        raise ValueError(
            f"reports cover different corruptions (only candidate: {only_c}, only reference: {only_r}); "
            "compare runs over the same corruption set"
        )
    delta: dict[str, float] = {}
    for name in _ordered(cand):
        (c_acc, c_sev), (r_acc, r_sev) = cand[name], ref[name]
        _same_severities(
            name, dict.fromkeys(c_sev), r_sev, "reference", "compare runs at the same severities"
        )
        delta[name] = (c_acc - r_acc) * 100.0
    return delta
