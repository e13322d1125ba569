"""Multistep solvers of the probability-flow ODE in data prediction: DPM-Solver++(2M), (3M) (Lu et al. 2022) and
UniPC (Zhao et al. 2023). Each step costs one network evaluation and reuses the clean-data estimates of the
pass's earlier steps, kept in ``ctx.state`` (emptied at the start of every pass, restarts included).

All work in half-log-SNR time ``lambda = log(alpha / sigma)``, with ``alpha = sqrt(abar)``, ``sigma = sqrt(1 -
abar)``: the ODE ``dx/dlambda`` is linear in ``x`` plus ``alpha x0_hat``, so the linear part is integrated exactly
and only ``x0_hat`` is extrapolated, by a polynomial in ``lambda`` through the stored estimates. The ODE is the one
DDIM discretises; its marginals are the forward process's for any noise distribution (its velocity is the
conditional mean of the forward process's, whatever the law of the noise), so these solvers need the noise only for
``x_T``. The last step, to clean data (``s = -1``, ``lambda = inf``), returns the current ``x0_hat``, as DDIM does.

The step into timestep 0 is first order (DPM-Solver's ``lower_order_final``): on the trained timesteps ``lambda``
grows like ``-log(t + 1) / 2`` near 0, so that step is the largest of every grid (four times its predecessor on
a 50-step uniform grid), and extrapolating the estimates across it overshoots: with the exact denoiser of a Gaussian
mixture it made the error of DPM-Solver++(2M) at 10 uniform steps six times larger (docs/sampling.md).
"""
from __future__ import annotations

import math

import torch


def _coefficients(abar: float) -> tuple[float, float, float]:
    """``alpha``, ``sigma`` and ``lambda`` at a timestep's ``abar`` (``lambda = inf`` for clean data)."""
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    return alpha, sigma, (math.inf if sigma == 0 else math.log(alpha / sigma))


def _denoised(ctx, x, t) -> tuple[torch.Tensor, float, float, float]:
    """The model's clean-data estimate at ``(x, t)`` and ``t``'s coefficients (one network evaluation)."""
    alpha, sigma, lam = _coefficients(ctx.abar_at(t))
    return (x - sigma * ctx.eps_fn(x, t)) / alpha, alpha, sigma, lam


def _remember(ctx, lam: float, x0: torch.Tensor, keep: int) -> None:
    """Append this step's ``(lambda, x0_hat)`` to the pass's history, keeping the last ``keep``."""
    history = ctx.state.setdefault("history", [])
    history.append((lam, x0))
    del history[:-keep]


def dpmpp_step(ctx, x, t, s, order: int):
    """DPM-Solver++(``order``M): ``x_s = sigma_s / sigma_t x + alpha_s (1 - e^-h) D`` with ``h = lambda_s -
    lambda_t`` and ``D`` the clean-data estimate extrapolated (to first and second differences in ``lambda``) from
    this and the previous ``order - 1`` steps; the first steps of a pass use what they have (DDIM first), and so
    does the step into timestep 0."""
    x0, alpha_t, sigma_t, lam_t = _denoised(ctx, x, t)
    _remember(ctx, lam_t, x0, order)
    if s < 0:
        return x0, x0
    alpha_s, sigma_s, lam_s = _coefficients(ctx.abar_at(s))
    h = lam_s - lam_t
    phi = -math.expm1(-h)  # 1 - e^-h
    x_next = (sigma_s / sigma_t) * x + alpha_s * phi * x0
    history = ctx.state["history"]
    if len(history) >= 2 and s != 0:
        (lam_1, x0_1) = history[-2]
        r0 = (lam_t - lam_1) / h
        d1_0 = (x0 - x0_1) / r0
        if len(history) == 3:
            (lam_2, x0_2) = history[-3]
            r1 = (lam_1 - lam_2) / h
            d1_1 = (x0_1 - x0_2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x_next = x_next + alpha_s * (1 - phi / h) * d1 \
                - alpha_s * ((h - phi) / h**2 - 0.5) * d2
        else:
            x_next = x_next + 0.5 * alpha_s * phi * d1_0
    return x_next, x0


def _unipc_update(x, m0, history, lam_0, sigma_0, target, new=None):
    """One UniPC update from the point ``(x, lambda_0)`` with estimate ``m0`` to ``target = (alpha, sigma,
    lambda)``, the B(h) = e^h - 1 variant (bh2). ``history``: earlier ``(lambda, x0_hat)`` pairs, newest first, one
    per extra order. Predictor (UniP) when ``new`` is None; corrector (UniC) with ``new``, the estimate at the
    target point, which raises the order by one at no extra evaluation."""
    alpha, sigma, lam = target
    h = lam - lam_0
    ratios = [(lam_i - lam_0) / h for lam_i, _ in history]
    differences = [(m_i - m0) / r for (_, m_i), r in zip(history, ratios)]
    order = len(history) + 1
    hh = -h
    h_phi_1 = math.expm1(hh)  # e^-h - 1
    b_h = h_phi_1
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, rhs = [], []
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in [*ratios, 1.0]])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    x_next = (sigma / sigma_0) * x - alpha * h_phi_1 * m0
    if new is None:
        if not differences:
            return x_next
        weights = [0.5] if order == 2 else torch.linalg.solve(
            torch.tensor(rows, dtype=torch.float64)[:-1, :-1], torch.tensor(rhs, dtype=torch.float64)[:-1]).tolist()
    else:
        differences = [*differences, new - m0]
        weights = [0.5] if order == 1 else torch.linalg.solve(torch.tensor(rows, dtype=torch.float64),
                                                              torch.tensor(rhs, dtype=torch.float64)).tolist()
    return x_next - alpha * b_h * sum(w * d for w, d in zip(weights, differences))


def unipc_step(ctx, x, t, s, order: int = 2, corrector: bool = True):
    """UniPC-``order``: the UniP predictor of that order (first order into timestep 0); with the corrector, ``x``
    is first corrected with this step's estimate (UniC, order + 1), then predicted from. The corrector is never
    applied to the returned sample, which would need one more evaluation."""
    x0, alpha_t, sigma_t, lam_t = _denoised(ctx, x, t)
    state = ctx.state
    history = state.setdefault("history", [])
    if corrector and "previous" in state:
        x_prev, sigma_prev, used = state["previous"]
        lam_prev, m_prev = history[-1]
        older = history[-used:-1][::-1]
        x = _unipc_update(x_prev, m_prev, older, lam_prev, sigma_prev, (alpha_t, sigma_t, lam_t), new=x0)
    _remember(ctx, lam_t, x0, order)
    if s < 0:
        return x0, x0
    used = 1 if s == 0 else min(order, len(history))
    target = _coefficients(ctx.abar_at(s))
    x_next = _unipc_update(x, x0, history[-used:-1][::-1], lam_t, sigma_t, target)
    state["previous"] = (x, sigma_t, used)
    return x_next, x0
