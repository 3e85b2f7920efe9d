"""How many independent calls a timed loop's samples are worth, per percentile.

The order-statistic interval for a percentile (``harness.measure.stats``) assumes independent calls.
On a shared or virtual machine slow calls come in bursts: a neighbour or the hypervisor slows tens of
calls in a row. Then the samples hold less information than their count says, and the interval is too
narrow. On the reference VM six back-to-back runs of one model reported P99s from 12.9 to 24.1 ms, each
claiming +-5% from the independent-call interval.

The measure is the quantile effective sample size of Vehtari, Gelman, Simpson, Carpenter and Buerkner
("Rank-normalization, folding, and localization", Bayesian Analysis 16(2), 2021): the effective size of
the indicator series ``x_t <= x_q`` at the sample quantile, whose autocorrelations are summed with
Geyer's initial monotone sequence (Statistical Science 7(4), 1992). ArviZ implements it
(``arviz.ess(method="quantile")``), but the runner must run on a device with numpy only, and the
host's summaries must agree with the runner's stop rule, so both use this copy.

Independence stays the default: a run's samples count as independent unless the summed
autocorrelation exceeds 8 standard errors of its value under independence (``2 * sqrt(K / n)`` for
K lags summed). The bar is high because Geyer's truncation keeps positive noise: for i.i.d. runs
(which make the indicator a random arrangement of a fixed count of ones, whatever the latency
distribution) simulated at n = 100..5000 and P50..P99, this z exceeded 6.5 in under 0.1% of runs, and
the 8-sigma rule flagged about 1 run in 1,000 near n = 400 and none from 700 up. The bursty runs
measured on the reference VM scored 9 to 235. An i.i.d. run thus keeps exactly the binomial interval,
and the correction needs strong evidence. numpy only, Python 3.8 (the runner's floor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Dependence counts only beyond this many standard errors of the summed autocorrelation under independence
# (see the module docstring for why so many).
SIGNIFICANCE_SIGMAS = 8.0


def integrated_autocorrelation(series: np.ndarray) -> tuple[float, int]:
    """(tau, lags): Geyer's initial monotone estimate of 1 + 2 * sum(rho_k), and how many lags it summed.

    tau is the factor by which serial dependence inflates the variance of the series' mean; n / tau is
    its effective size. A constant series has no variance to inflate: (1.0, 0).
    """
    x = np.asarray(series, dtype=np.float64)
    n = int(x.size)
    x = x - x.mean()
    var = float(x @ x)
    if n < 4 or var <= 0.0:
        return 1.0, 0
    size = 1 << (2 * n - 1).bit_length()  # zero padding: a linear, not circular, autocorrelation
    spectrum = np.fft.rfft(x, size)
    rho = np.fft.irfft(spectrum * spectrum.conjugate(), size)[:n] / var
    # Geyer: pairs Gamma_m = rho_2m + rho_2m+1 are positive and decreasing for a reversible chain; sum
    # them until the first non-positive one, each capped by the one before.
    pairs = rho[: n - 1 : 2] + rho[1:n:2]
    ends = np.flatnonzero(pairs <= 0.0)
    count = int(ends[0]) if ends.size else int(pairs.size)
    if count == 0:
        return 1.0, 0
    tau = -1.0 + 2.0 * float(np.minimum.accumulate(pairs[:count]).sum())
    return max(tau, 1.0 / n), 2 * count - 1


def effective_sizes(samples: Sequence[int] | np.ndarray, qs: Sequence[float]) -> tuple[int, ...]:
    """For each quantile in ``qs``, how many independent calls the samples (in time order) are worth.

    ``len(samples)`` unless the indicator ``x_t <= x_q`` is significantly autocorrelated, then
    ``floor(n / tau)``, at least 1.
    """
    x = np.asarray(samples, dtype=np.float64)
    n = int(x.size)
    if n < 4:
        return tuple(n for _ in qs)
    # numpy's default (linear) quantile, as every estimate in the harness uses.
    thresholds = np.quantile(x, list(qs))
    out = []
    for threshold in thresholds:
        tau, lags = integrated_autocorrelation(x <= threshold)
        noise = 2.0 * math.sqrt(max(lags, 1) / n)
        out.append(n if tau - 1.0 <= SIGNIFICANCE_SIGMAS * noise else max(1, min(n, int(n / tau))))
    return tuple(out)


def scale_ranks(ranks: tuple[int, int] | None, n_eff: int, n: int) -> tuple[int, int] | None:
    """Map 1-based interval ranks computed for ``n_eff`` independent calls onto the ``n`` samples held.

    Rank r of n_eff sits at the sample fraction r / n_eff; the lower end rounds down and the upper end
    up, so the mapped interval is never narrower than the fraction asks.
    """
    if ranks is None or n_eff >= n:
        return ranks
    lo, hi = ranks
    return max(1, math.floor(lo * n / n_eff)), min(n, math.ceil(hi * n / n_eff))
