"""How far a compiled variant's outputs sit from its FP32 reference on the same inputs.

Two kinds of distance. Decision parity asks whether the variant picks the same classes (top-1 and top-5
agreement) and, with labels, how much accuracy it loses. Numeric parity asks how close the raw outputs are
(PSNR, SQNR, cosine, absolute errors); it moves long before a decision flips, so it catches an INT8
calibration going wrong on a small evaluation set.

The accuracy drop carries a paired interval. Candidate and reference are scored on the same images, so
only the discordant pairs carry information: ``b`` images the reference gets right and the candidate
wrong, ``c`` the other way round, out of ``n``. The drop is ``(b - c) / n``.

Why not the exact conditional interval. Given ``m = b + c``, ``b`` is binomial with ``p = b / m``, so a
Clopper-Pearson interval for ``p`` mapped through ``m / n * (2p - 1)`` looks exact. It is not: it treats
the discordant rate ``m / n`` as known, while it is itself estimated. When the pairs run one way, which
is what a quantisation regression looks like, the interval collapses onto the estimate: with ``b = 50,
c = 0, n = 1000`` it reads 4.3..5.0 pp, and summed over every outcome its true coverage of the drop is 38%
(computed exactly by enumerating the multinomial for ``p10 = 0.05, p01 = 0``). It also degenerates to a
point when ``b = c = 0``. Widening it by a Bonferroni split over ``m / n`` and ``p`` restores coverage
but runs at 99-100% and 1.5-2x the width.

So the interval is Tango's asymptotic score interval for a paired difference of proportions (Tango,
*Statistics in Medicine* 17:891-908, 1998), one of those recommended by Fagerland, Lydersen & Laake
(*Statistics in Medicine* 33:2850-2875, 2014). It inverts the score test of ``H0: drop = d``, whose
variance uses the restricted maximum-likelihood estimate of the discordant rates under ``H0``, so the
uncertainty of ``m / n`` is in it. Exact coverage at nominal 95%: 95.0% for the case above (2.7 pp wide),
95.0% for ``n = 1000, p10 = .03, p01 = .01`` and ``n = 10000, p10 = .003, p01 = .001``, 93.3-95% over a
grid of ``n`` from 20 to 300 (score intervals oscillate around the nominal level; they do not bound it).
With no discordant pairs it does not pretend to certainty: the interval is ``+-z^2 / (n + z^2)``, e.g.
+-0.38 pp for 1000 images, shrinking as the evaluation set grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.stats import norm

__all__ = [
    "ParityBudget",
    "ParityMetrics",
    "check_parity",
    "compare_outputs",
    "paired_drop_interval",
]

FloatArray = npt.NDArray[np.float64]

_TOP_K = 5


@dataclass(frozen=True)
class ParityMetrics:
    """Decision and numeric parity of one candidate's outputs against the reference's, on n samples.

    ``top5_agreement`` is the mean over samples of ``|top-k(candidate) & top-k(reference)| / k`` with
    ``k = min(5, number of classes)``: it credits partial overlap, where a set-equality test would call a
    harmless swap of ranks 5 and 6 a full miss. A candidate row with any non-finite value (an FP16
    overflow, say) is a void prediction: it counts as wrong and as disagreeing, its cosine is undefined
    (so ``cosine`` is nan) and its errors are infinite (so PSNR and SQNR are -inf).
    """

    n: int
    top1_acc: float | None
    reference_top1_acc: float | None
    top1_drop_pp: float | None
    top1_drop_ci_pp: tuple[float, float] | None
    top1_agreement: float
    top5_agreement: float
    psnr_db: float
    sqnr_db: float
    cosine: float
    max_abs_err: float
    mean_abs_err: float
    p99_abs_err: float
    confidence: float = 0.95


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1, e.g. 0.95")


def _as_rows(name: str, values: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(values)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} outputs must be shaped (N, C) or (N, ...) with one row per sample; got shape "
            f"{arr.shape}; reshape single outputs to (N, 1)"
        )
    if arr.shape[0] == 0 or arr[0].size == 0:
        raise ValueError(f"{name} outputs are empty (shape {arr.shape}): nothing to compare")
    return np.asarray(arr.reshape(arr.shape[0], -1), dtype=np.float64)


def _as_labels(labels: npt.ArrayLike, n: int, n_classes: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"labels must be shaped ({n},), one class index per sample; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1} for {n_classes} output classes; "
            f"{int(bad.sum())} do not, first at index {idx}: {int(arr[idx])}"
        )
    return arr.astype(np.int64)


def _top_k(rows: FloatArray, k: int) -> npt.NDArray[np.intp]:
    """Indices of each row's k largest values, as an unordered set per row."""
    if k >= rows.shape[1]:
        return np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    # argpartition is linear in the row length; dense outputs flattened per sample can be millions long.
    return np.argpartition(-rows, k - 1, axis=1)[:, :k]


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or not math.isfinite(noise):
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosines(cand: FloatArray, ref: FloatArray, void: npt.NDArray[np.bool_]) -> FloatArray:
    safe = np.where(void[:, None], 0.0, cand)
    dots = np.einsum("ij,ij->i", safe, ref)
    norms = np.linalg.norm(safe, axis=1) * np.linalg.norm(ref, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(dots / norms, -1.0, 1.0)
    # Two all-zero rows are identical; a zero row against a non-zero one has no direction in common.
    zero_c = ~safe.any(axis=1)
    zero_r = ~ref.any(axis=1)
    cos = np.where(zero_c & zero_r, 1.0, np.where(zero_c | zero_r, 0.0, cos))
    return np.where(void, np.nan, cos)


def compare_outputs(
    candidate: npt.ArrayLike,
    reference: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    confidence: float = 0.95,
) -> ParityMetrics:
    """Measure a candidate's outputs against the reference's for the same N inputs.

    Rows are flattened per sample. The decision metrics read each row as class scores; for dense outputs
    (segmentation maps, detection heads) only the numeric metrics mean anything.
    """
    _check_confidence(confidence)
    cand_in, ref_in = np.asarray(candidate), np.asarray(reference)
    if cand_in.shape != ref_in.shape:
        raise ValueError(
            f"candidate shape {cand_in.shape} does not match reference shape {ref_in.shape}; "
            "both must be the outputs for the same inputs, in the same order"
        )
    cand = _as_rows("candidate", cand_in)
    ref = _as_rows("reference", ref_in)
    n, n_classes = ref.shape
    ref_bad = int((~np.isfinite(ref)).sum())
    if ref_bad:
        raise ValueError(
            f"reference outputs contain {ref_bad} non-finite values; the FP32 reference must be finite "
            "to measure parity against it (re-run the reference model)"
        )

    void: npt.NDArray[np.bool_] = np.asarray(~np.isfinite(cand).all(axis=1), dtype=np.bool_)
    cand_top1 = np.argmax(cand, axis=1)
    ref_top1 = np.argmax(ref, axis=1)
    top1_agreement = float(np.mean((cand_top1 == ref_top1) & ~void))

    k = min(_TOP_K, n_classes)
    cand_topk = _top_k(np.where(void[:, None], 0.0, cand), k)
    ref_topk = _top_k(ref, k)
    overlap = (cand_topk[:, :, None] == ref_topk[:, None, :]).any(axis=2).sum(axis=1)
    top5_agreement = float(np.mean(np.where(void, 0.0, overlap / k)))

    with np.errstate(invalid="ignore", over="ignore"):
        abs_err = np.abs(cand - ref)
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        sq_err_sum = float(np.sum(np.square(abs_err)))
    peak = float(np.max(np.abs(ref)))
    # peak^2 / MSE with MSE = sq_err_sum / size, as one ratio so that a zero error gives inf cleanly.
    psnr = _ratio_db(peak * peak * ref.size, sq_err_sum)
    sqnr = _ratio_db(float(np.sum(np.square(ref))), sq_err_sum)
    cosine = float(np.mean(_cosines(cand, ref, void)))
    # "higher" reports an error that occurred rather than interpolating, so an infinite one stays inf.
    p99 = float(np.quantile(abs_err, 0.99, method="higher"))

    acc: float | None = None
    ref_acc: float | None = None
    drop: float | None = None
    drop_ci: tuple[float, float] | None = None
    if labels is not None:
        y = _as_labels(labels, n, n_classes)
        cand_correct = (cand_top1 == y) & ~void
        ref_correct = ref_top1 == y
        acc = float(np.mean(cand_correct))
        ref_acc = float(np.mean(ref_correct))
        # From counts, not (ref_acc - acc) * 100, so a drop of exactly 50/1000 reads 5.0 and not 4.999...
        drop = float(np.sum(ref_correct & ~cand_correct) - np.sum(~ref_correct & cand_correct)) * 100.0 / n
        drop_ci = paired_drop_interval(cand_correct, ref_correct, confidence)

    return ParityMetrics(
        n=n,
        top1_acc=acc,
        reference_top1_acc=ref_acc,
        top1_drop_pp=drop,
        top1_drop_ci_pp=drop_ci,
        top1_agreement=top1_agreement,
        top5_agreement=top5_agreement,
        psnr_db=psnr,
        sqnr_db=sqnr,
        cosine=cosine,
        max_abs_err=float(np.max(abs_err)),
        mean_abs_err=float(np.mean(abs_err)),
        p99_abs_err=p99,
        confidence=confidence,
    )


def _tango_score(d: float, b: int, c: int, n: int) -> float:
    """Tango's score statistic for H0: drop = d, given b, c discordant pairs of n; decreasing in d."""
    # Restricted MLE of the c-cell probability q under H0 is the positive root of A q^2 + B q + C = 0.
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * d
    c_ = -c * d * (1.0 - d)
    root = math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0))
    # Pick the algebraically equal form that does not subtract two near-equal numbers.
    q = (root - b_) / (2.0 * a_) if b_ <= 0.0 else -2.0 * c_ / (b_ + root)
    num = b - c - n * d
    var = n * (2.0 * q + d * (1.0 - d))
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _tango_interval(b: int, c: int, n: int, z: float) -> tuple[float, float]:
    est = (b - c) / n
    # The score's variance vanishes at +-1; step just inside so brentq sees a finite sign there.
    edge = 1.0 - 1e-12
    lo, hi = -1.0, 1.0
    if est > -edge and _tango_score(-edge, b, c, n) > z:
        lo = brentq(lambda d: _tango_score(d, b, c, n) - z, -edge, est, xtol=1e-12)
    if est < edge and _tango_score(edge, b, c, n) < -z:
        hi = brentq(lambda d: _tango_score(d, b, c, n) + z, est, edge, xtol=1e-12)
    return lo, hi


def paired_drop_interval(
    candidate_correct: npt.ArrayLike, reference_correct: npt.ArrayLike, confidence: float = 0.95
) -> tuple[float, float]:
    """Confidence interval in percentage points for reference accuracy minus candidate accuracy.

    Tango's score interval on the paired outcomes (the module docstring says why this one); it always
    contains the point estimate and is never a single point.
    """
    _check_confidence(confidence)
    cand = np.asarray(candidate_correct)
    ref = np.asarray(reference_correct)
    if cand.shape != ref.shape or cand.ndim != 1:
        raise ValueError(
            f"candidate_correct {cand.shape} and reference_correct {ref.shape} must be flat and of one "
            "length: one right/wrong outcome per sample, for the same samples"
        )
    if cand.size == 0:
        raise ValueError("no paired outcomes: an accuracy drop needs at least one sample")
    for name, arr in (("candidate_correct", cand), ("reference_correct", ref)):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1 outcomes; got values {np.unique(arr)[:5]}")
    cand_ok = cand.astype(bool)
    ref_ok = ref.astype(bool)
    b = int(np.sum(ref_ok & ~cand_ok))
    c = int(np.sum(~ref_ok & cand_ok))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    lo, hi = _tango_interval(b, c, int(cand.size), z)
    return lo * 100.0, hi * 100.0


@dataclass(frozen=True)
class ParityBudget:
    """How far a variant may drift from its reference before the release gate says no."""

    max_top1_drop_pp: float = 1.0
    min_top1_agreement: float = 0.99
    min_psnr_db: float = 30.0

    def __post_init__(self) -> None:
        if math.isnan(self.max_top1_drop_pp) or self.max_top1_drop_pp < 0:
            raise ValueError(
                f"max_top1_drop_pp={self.max_top1_drop_pp!r} must be >= 0 percentage points, e.g. 1.0; "
                "use inf to leave the drop unchecked"
            )
        if not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ValueError(
                f"min_top1_agreement={self.min_top1_agreement!r} is a share of samples and must lie in "
                "0..1, e.g. 0.99 for 99%"
            )
        if math.isnan(self.min_psnr_db):
            raise ValueError(
                "min_psnr_db is nan; give a level in dB, e.g. 30.0, or -inf to leave it unchecked"
            )


def format_limit(limit: float, places: int) -> str:
    text = f"{limit:.{places}f}"
    return text if float(text) == limit else f"{limit:g}"


def places_for(value: float, limit: float, places: int) -> int:
    """Enough decimals that a value just over its limit does not print as equal to it."""
    while places < 6 and math.isfinite(value) and f"{value:.{places}f}" == format_limit(limit, places):
        places += 1
    return places


def drop_text(m: ParityMetrics, limit: float) -> tuple[str, str]:
    """The top-1 drop for a message against ``limit``, with enough decimals not to print as the limit,
    and its paired interval (" (95% CI lo..hi pp)", empty without one)."""
    assert m.top1_drop_pp is not None
    p = places_for(m.top1_drop_pp, limit, 1)
    ci = ""
    if m.top1_drop_ci_pp is not None:
        lo, hi = m.top1_drop_ci_pp
        ci = f" ({m.confidence * 100:g}% CI {lo:.{p}f}..{hi:.{p}f} pp)"
    return f"{m.top1_drop_pp:.{p}f} pp", ci


def check_parity(m: ParityMetrics, budget: ParityBudget) -> tuple[str, ...]:
    """One message per budget breach, naming the metric, its value, its interval and the budget.

    The drop is judged on its point estimate; the interval is printed so a reader can see whether the
    evaluation set was big enough to tell. Without labels the drop is not measured and not checked;
    agreement and PSNR still are. A nan value is a breach, never a pass.
    """
    breaches: list[str] = []
    drop = m.top1_drop_pp
    if drop is not None and not drop <= budget.max_top1_drop_pp:
        value, ci = drop_text(m, budget.max_top1_drop_pp)
        breaches.append(f"top-1 drop {value}{ci} exceeds budget {format_limit(budget.max_top1_drop_pp, 1)} pp")
    agree = m.top1_agreement
    if not agree >= budget.min_top1_agreement:
        p = places_for(agree * 100, budget.min_top1_agreement * 100, 2)
        disagree = round((1.0 - agree) * m.n)
        breaches.append(
            f"top-1 agreement {agree * 100:.{p}f}% ({disagree} of {m.n} samples disagree) is below "
            f"budget {format_limit(budget.min_top1_agreement * 100, 2)}%"
        )
    psnr = m.psnr_db
    if not psnr >= budget.min_psnr_db:
        p = places_for(psnr, budget.min_psnr_db, 1)
        why = "" if math.isfinite(m.max_abs_err) else " (candidate outputs contain non-finite values)"
        breaches.append(
            f"logit PSNR {psnr:.{p}f} dB{why} is below budget {format_limit(budget.min_psnr_db, 1)} dB"
        )
    return tuple(breaches)
