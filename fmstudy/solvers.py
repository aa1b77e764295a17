"""Samplers and likelihoods from a velocity field: ODE, bridge SDE, exact-divergence NLL.

Conventions (STUDY.md section 1): t runs from 0 (source ``x0 ~ N(0, I)``) to 1 (data). A
velocity field is a callable ``velocity(x, t) -> Tensor`` with ``x`` of shape ``[..., N, d]``
and ``t`` a full tensor of shape ``x.shape[:-1]`` (one time per point); every solver here
passes such a tensor and works for any leading shape (e.g. an ensemble's ``[M, N, d]``). If
the field returns a shape that ``x`` broadcasts to (an ensemble given one shared ``[N, d]``
batch returns ``[M, N, d]``), the state takes that shape from the first step on.

ODE (S.1): ``dx/dt = v(x, t)`` on a uniform grid ``t_i = t0 + (t1 - t0) i / n``, ``h = t_{i+1} - t_i``:

    euler:  x += h k1,                        k1 = v(x, t)                     (S.2)
    heun:   x += h (k1 + k2) / 2,             k2 = v(x + h k1, t + h)           (S.3)
    rk4:    x += h (k1 + 2 k2 + 2 k3 + k4) / 6,
            k2 = v(x + h k1 / 2, t + h/2), k3 = v(x + h k2 / 2, t + h/2), k4 = v(x + h k3, t + h)  (S.4)

with global orders 1, 2, 4 and ``nfe(method, n) = n * (1, 2, 4)`` velocity evaluations.

Bridge SDE (S.5)-(S.7): for any ``g(t) >= 0`` the SDE

    dx = [v(x, t) + g(t)^2 / 2 * grad log p_t(x)] dt + g(t) dW                  (S.5)

has the same marginals ``p_t`` as the ODE, because its Fokker-Planck equation
``dp/dt = -div(p v) - g^2/2 div(p grad log p) + g^2/2 lap p = -div(p v)`` is the ODE's
continuity equation. For the Brownian-bridge path with independent Gaussian source the score
is a closed-form function of the velocity (:func:`score_from_velocity`, S.6), so a velocity
model alone gives the SDE.

Log-likelihood (S.8): the instantaneous change of variables ``d/dt log p_t(x_t) = -div v(x_t, t)``
along the ODE gives ``log p_1(x(1)) = log N(x(0); 0, I) - int_0^1 div v(x_t, t) dt``.

Note for the study: with independent coupling the bridge's exact marginal velocity is that of
the Gaussian path ``t x1 + sqrt(v_t) z`` (``c_t = b_t / v_t`` is ``d/dt log sqrt(v_t)``), and
all such paths from N(0, I) to the data are time changes and rescalings of one another, so
they share one ODE endpoint map: exact-velocity ODE samples do not depend on sigma (checked
in the tests); differences between sigmas in ODE samples come from learning alone.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .checks import check_float, check_int
from .paths import as_time, broadcast_time

__all__ = [
    "METHODS",
    "MAX_EXACT_DIV_DIM",
    "nfe",
    "ode_sample",
    "ode_trajectory",
    "score_from_velocity",
    "sde_sample",
    "velocity_divergence",
    "log_likelihood",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
Diffusion = float | Callable[[Tensor], Tensor | float]
State = tuple[Tensor, ...]
Field = Callable[[State, float], State]

METHODS: dict[str, int] = {"euler": 1, "heun": 2, "rk4": 4}  # method -> evaluations per step
MAX_EXACT_DIV_DIM = 64  # d backward passes per evaluation: beyond this use a trace estimator


# -- validation: one line, naming the bad value and what is allowed --------------------------
def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed: method must be one of {', '.join(METHODS)}")
    return method


def _check_interval(t0: float, t1: float) -> tuple[float, float]:
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (t0, t1))
    if not ok or not (0.0 <= t0 < t1 <= 1.0):
        raise ValueError(f"(t0, t1)=({t0!r}, {t1!r}) is not allowed: they must satisfy 0 <= t0 < t1 <= 1")
    return float(t0), float(t1)


def _check_exact_dim(d: int) -> None:
    if d > MAX_EXACT_DIV_DIM:
        raise ValueError(
            f"dim={d} is not allowed: exact divergence is for low dimension, dim <= {MAX_EXACT_DIV_DIM}"
        )


def nfe(method: str, steps: int) -> int:
    """Velocity evaluations of ``steps`` fixed steps of ``method``: ``steps * (1, 2, 4)``."""
    return METHODS[_check_method(method)] * check_int("steps", steps, 1)


# -- a generic fixed-step integrator over a tuple of tensors ----------------------------------
def _grid(t0: float, t1: float, steps: int) -> list[float]:
    """Uniform grid whose ends are exactly ``t0`` and ``t1`` (a clamped convex combination,
    not a running sum, so rounding never moves a time off ``[t0, t1]``, e.g. past 1)."""
    lo, hi = min(t0, t1), max(t0, t1)
    return [min(max(t0 * (1 - i / steps) + t1 * (i / steps), lo), hi) for i in range(steps + 1)]


def _axpy(state: State, h: float, k: State) -> State:
    return tuple(s + h * ki for s, ki in zip(state, k))


def _step(f: Field, state: State, ta: float, tb: float, method: str) -> State:
    """One step of (S.2)-(S.4) for ``d state / dt = f(state, t)`` from ``ta`` to ``tb`` (either
    direction). End stages are evaluated at ``tb`` itself, not ``ta + h``, which can round
    past it (e.g. to 1 + 1e-16, outside the field's domain)."""
    h = tb - ta
    k1 = f(state, ta)
    if method == "euler":
        return _axpy(state, h, k1)
    if method == "heun":
        k2 = f(_axpy(state, h, k1), tb)
        return tuple(s + (h / 2) * (a + b) for s, a, b in zip(state, k1, k2))
    mid = (ta + tb) / 2
    k2 = f(_axpy(state, h / 2, k1), mid)
    k3 = f(_axpy(state, h / 2, k2), mid)
    k4 = f(_axpy(state, h, k3), tb)
    return tuple(s + (h / 6) * (a + 2 * b + 2 * c + e) for s, a, b, c, e in zip(state, k1, k2, k3, k4))


def _integrate(f: Field, state: State, times: list[float], method: str, keep: bool = False) -> list[State]:
    """Run ``_step`` over ``times`` (increasing or decreasing); all states if ``keep``."""
    out = [state]
    for ta, tb in zip(times[:-1], times[1:]):
        state = _step(f, state, ta, tb, method)
        if keep:
            out.append(state)
        else:
            out[0] = state  # drop old states at once: their graphs/memory are not needed
    return out


def _full_time(x: Tensor, t: float) -> Tensor:
    return x.new_full(x.shape[:-1], t)


def _ode_field(velocity: VelocityFn) -> Field:
    return lambda state, t: (velocity(state[0], _full_time(state[0], t)),)


# -- ODE sampling -----------------------------------------------------------------------------
def ode_sample(
    velocity: VelocityFn, x0: Tensor, steps: int, method: str = "heun", t0: float = 0.0, t1: float = 1.0
) -> Tensor:
    """Integrate ``dx/dt = v(x, t)`` (S.1) from ``t0`` to ``t1`` with ``steps`` fixed steps of
    ``method`` in ``("euler", "heun", "rk4")``, (S.2)-(S.4), under ``torch.no_grad()``.
    Costs :func:`nfe` ``(method, steps)`` velocity evaluations. Returns the state at ``t1``."""
    return ode_trajectory(velocity, x0, steps, method, t0, t1)[-1]


def ode_trajectory(
    velocity: VelocityFn, x0: Tensor, steps: int, method: str = "heun", t0: float = 0.0, t1: float = 1.0
) -> Tensor:
    """As :func:`ode_sample` but returns every grid state, shape ``[steps + 1, *x.shape]``
    (entry i at ``t_i = t0 + (t1 - t0) i / steps``); ``x0`` is expanded to the final shape
    when the field broadcasts it (ensembles)."""
    _check_method(method)
    check_int("steps", steps, 1)
    t0, t1 = _check_interval(t0, t1)
    with torch.no_grad():
        states = _integrate(_ode_field(velocity), (x0,), _grid(t0, t1, steps), method, keep=True)
        xs = [s[0] for s in states]
        return torch.stack(torch.broadcast_tensors(*xs))


# -- the bridge SDE ---------------------------------------------------------------------------
def score_from_velocity(velocity_value: Tensor, x: Tensor, t: Tensor | float, sigma: float) -> Tensor:
    """``grad_x log p_t(x)`` of the Brownian-bridge marginal from its velocity (S.6):

        score(x, t) = (t v(x, t) - x) / ((1 - t) + sigma^2 t / 2).                  (S.6)

    Derivation (STUDY.md section 2). With ``x_t = t x1 + n_t``, ``n_t ~ N(0, v_t I)``
    independent of x1, ``v_t = (1 - t)^2 + sigma^2 t (1 - t)`` (2.1), Tweedie's formula gives
    ``E[n_t | x] = -v_t score``, i.e. ``E[x1 | x] = (x + v_t score) / t``. The marginal
    velocity is ``v = E[x1 | x] - b_t score`` (2.4), ``b_t = -(1 - t) + sigma^2 (1 - 2t) / 2``.
    Multiplying by t: ``t v = x + (v_t - t b_t) score``, and

        v_t - t b_t = (1 - t)^2 + t (1 - t) + sigma^2 [t (1 - t) - t (1 - 2t) / 2]
                    = (1 - t) + sigma^2 t / 2.                                      (S.7)

    The denominator is 1 at t = 0 (score = -x, that of N(0, I)) and ``sigma^2 / 2`` at t = 1,
    so (S.6) is singular only at t = 1 with sigma = 0; callers must stop before it. Exact for
    the true marginal velocity; for a model it is the score that model implies.

    Args:
        velocity_value: ``v(x, t)``, shape ``x.shape`` (or one that ``x`` broadcasts to).
        x: points ``[..., N, d]``.
        t: a scalar or one time per point, shape ``x.shape[:-1]``.
        sigma: the bridge's diffusion level, ``>= 0``.
    """
    t = broadcast_time(as_time(t, x), x)
    return (t * velocity_value - x) / ((1 - t) + (sigma**2 / 2) * t)


def _check_diffusion(diffusion: Diffusion) -> Diffusion:
    if callable(diffusion):
        return diffusion
    return check_float("diffusion", diffusion, 0.0, why=" or a callable g(t)")


def sde_sample(
    velocity: VelocityFn,
    x0: Tensor,
    sigma: float,
    steps: int,
    diffusion: Diffusion | None = None,
    generator: torch.Generator | None = None,
    t_end: float | None = None,
) -> Tensor:
    """Euler-Maruyama for the bridge SDE (S.5) with the score (S.6), from t = 0 to t = 1.

    Each stochastic step from ``t`` to ``t + h`` is

        x <- x + h [v + g(t)^2 / 2 * score] + g(t) sqrt(h) z,   z ~ N(0, I) from ``generator``,

    and the last step to t = 1 is always a plain Euler ODE step (no score, no noise): the
    score (S.6) is singular at t = 1 when sigma = 0, and noise added in a last step could not
    be removed. For sigma = 0 that step from ``t_end`` is exactly Tweedie's denoiser,
    ``x + (1 - t) v = E[x1 | x_t = x]``. With ``t_end=None`` the grid is the uniform grid of
    ``steps`` steps over [0, 1] (stochastic up to ``1 - 1/steps``), so ``diffusion=0`` gives
    bit-for-bit :func:`ode_sample` with ``method="euler"``. With a float ``t_end`` in (0, 1)
    the first ``steps - 1`` steps are uniform over [0, t_end] and the last goes to 1.
    One velocity evaluation per step: ``nfe = steps``.

    Args:
        velocity: the field, ``velocity(x, t)`` with t of shape ``x.shape[:-1]``.
        x0: source points ``[..., N, d]``, normally ``N(0, I)`` draws.
        sigma: the bridge level of the path the velocity belongs to (enters only via S.6).
        steps: total number of steps (``>= 1``; ``>= 2`` with a float ``t_end``).
        diffusion: ``g``, a number ``>= 0`` or a callable ``g(t) -> Tensor | float`` of the
            per-point time tensor. Default ``g = sigma``: the conditional bridge itself solves
            ``dx = (x1 - x) / (1 - t) dt + sigma dW``, so sigma is the path's own noise level;
            sigma = 0 then gives the Euler ODE.
        generator: the only source of randomness; required unless ``diffusion == 0``.
        t_end: where the stochastic part stops (see above).
    """
    check_int("steps", steps, 1)
    sigma = check_float("sigma", sigma, 0.0)
    g = _check_diffusion(sigma if diffusion is None else diffusion)
    deterministic = g == 0.0  # a callable is never equal to 0.0
    if generator is None and not deterministic:
        raise ValueError("generator=None is not allowed with diffusion > 0: pass a torch.Generator")
    if t_end is None:
        times = _grid(0.0, 1.0, steps)
    else:
        check_int("steps", steps, 2)
        t_end = check_float("t_end", t_end, 0.0, 1.0, lo_open=True, hi_open=True)
        times = _grid(0.0, t_end, steps - 1) + [1.0]
    x = x0
    with torch.no_grad():
        for i, (ta, tb) in enumerate(zip(times[:-1], times[1:])):
            h = tb - ta
            t = _full_time(x, ta)
            v = velocity(x, t)
            if deterministic or i == steps - 1:
                x = x + h * v  # the same expression as the Euler ODE step (S.2)
                continue
            gt = g(t) if callable(g) else g
            gt = broadcast_time(as_time(gt, x), x)
            drift = v + (gt**2 / 2) * score_from_velocity(v, x, t, sigma)
            x = x + h * drift
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + gt * math.sqrt(h) * z
    return x


# -- exact log-likelihood ---------------------------------------------------------------------
def velocity_divergence(velocity: VelocityFn, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(v(x, t), div_x v(x, t))``, the divergence exact by autograd: one backward pass per
    dimension, ``div = sum_i d v_i / d x_i``. Summing ``v_i`` over points before the backward
    pass is exact only because each point's velocity depends on that point alone (true of
    MLPs; not of batch-coupled layers). Runs under ``torch.enable_grad()``; returns detached
    tensors of shapes ``x.shape`` and ``x.shape[:-1]``."""
    d = x.shape[-1]
    _check_exact_dim(d)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = velocity(xg, t)
        if v.shape != x.shape:
            raise ValueError(
                f"velocity returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}: it must "
                "return x's shape (pass an ensemble x of shape [M, N, d])"
            )
        div = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        if v.requires_grad:  # a field constant in x has no graph and zero divergence
            for i in range(d):
                (grad,) = torch.autograd.grad(v[..., i].sum(), xg, retain_graph=i < d - 1, allow_unused=True)
                if grad is not None:
                    div = div + grad[..., i]
    return v.detach(), div.detach()


def log_likelihood(
    velocity: VelocityFn, x1: Tensor, steps: int = 100, method: str = "rk4", t1: float = 1.0
) -> Tensor:
    """``log p_{t1}(x1)`` of the flow's marginal by the instantaneous change of variables (S.8).

    Integrates the augmented ODE backwards from ``t1`` to 0,

        dx/dt = v(x, t),   da/dt = div v(x, t),   x(t1) = x1,  a(t1) = 0,

    so ``a(0) = -int_0^{t1} div v dt`` and ``log p_{t1}(x1) = log N(x(0); 0, I) + a(0)``, with
    ``log N(y; 0, I) = -|y|^2 / 2 - d/2 log(2 pi)``. ``t1 = 1`` gives the model's data
    log-density; ``t1 < 1`` avoids evaluating a learned velocity at t = 1, where sigma > 0
    models may be unreliable (the exact field is finite on [0, 1]). Costs
    ``nfe(method, steps)`` evaluations, each with ``d`` backward passes; ``d <= 64``.

    Args:
        velocity: the field; it must return ``x``'s shape.
        x1: points ``[..., N, d]``.
        steps, method: as in :func:`ode_sample`.
        t1: the time at which ``x1`` is scored, in (0, 1].

    Returns:
        ``[..., N]`` in ``x1``'s dtype (use float64 for accuracy).
    """
    _check_method(method)
    check_int("steps", steps, 1)
    t1 = check_float("t1", t1, 0.0, 1.0, lo_open=True)
    d = x1.shape[-1]
    _check_exact_dim(d)

    def field(state: State, t: float) -> State:
        return velocity_divergence(velocity, state[0], _full_time(state[0], t))

    start = (x1.detach(), torch.zeros(x1.shape[:-1], dtype=x1.dtype, device=x1.device))
    x0, acc = _integrate(field, start, _grid(t1, 0.0, steps), method)[-1]
    log_source = -0.5 * (x0**2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    return log_source + acc
