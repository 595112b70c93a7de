"""Rank estimation by empirical variational Bayesian matrix factorisation.

EVBMF (Nakajima, Sugiyama, Babacan and Tomioka, JMLR 2013) gives the rank of
the signal part of a noisy matrix in closed form once the noise variance is
known, and estimates that variance by minimising the free energy.  KegNet
uses it on the two channel unfoldings of a conv weight to pick Tucker-2
ranks; it is what reproduces the paper's 3.62x for LeNet5 ``conv3``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy.optimize import minimize_scalar

# Constants of the analytic solution (Nakajima et al. 2013, Theorem 5).
TAU_SCALE = 2.5129


def _tau(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return 0.5 * (x - (1 + alpha) + torch.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _free_energy(
    sigma2: float, rows: int, cols: int, s: torch.Tensor, residual: float, x_bar: float
) -> float:
    """Negative log evidence (up to constants) as a function of the noise variance."""
    alpha = rows / cols
    x = s**2 / (cols * sigma2)
    above, below = x[x > x_bar], x[x <= x_bar]
    tau = _tau(above, alpha)
    energy = torch.sum(below - torch.log(below))
    energy = energy + torch.sum(above - tau)
    energy = energy + torch.sum(torch.log((tau + 1) / above))
    energy = energy + alpha * torch.sum(torch.log(tau / alpha + 1))
    return float(energy) + residual / (cols * sigma2) + (rows - len(s)) * math.log(sigma2)


def _minimise(function: Callable[[float], float], low: float, high: float, grid: int = 400) -> float:
    """Global-ish minimum of a 1-D function on [low, high]: a log grid finds the basin (the free
    energy has several), then scipy's bounded Brent search refines it."""
    points = torch.logspace(math.log10(low), math.log10(high), grid, dtype=torch.float64).tolist()
    values = [function(point) for point in points]
    best = min(range(grid), key=values.__getitem__)
    a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    result = minimize_scalar(function, bounds=(a, b), method="bounded", options={"xatol": 1e-12 * a})
    return float(result.x)


def evbmf_rank(matrix: torch.Tensor) -> int:
    """The rank EVBMF keeps for ``matrix``, with the noise variance estimated."""
    y = matrix.detach().to(torch.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    s = torch.linalg.svdvals(y)
    alpha = rows / cols
    tau_bar = TAU_SCALE * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = 0.0  # all `rows` singular values are kept, so nothing is left over
    last_signal = min(math.ceil(rows / (1 + alpha)) - 1, rows) - 1
    upper = float(torch.sum(s**2) + residual) / (rows * cols)
    tail = s[last_signal + 1 :]
    if len(tail) == 0 or upper <= 0:
        return 0 if upper <= 0 else rows
    lower = max(float(tail[0] ** 2) / (cols * x_bar), float(torch.mean(tail**2)) / cols)
    if lower >= upper:
        sigma2 = upper
    else:
        sigma2 = _minimise(lambda v: _free_energy(v, rows, cols, s, residual, x_bar), lower, upper)
    threshold = math.sqrt(cols * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int(torch.sum(s > threshold))
