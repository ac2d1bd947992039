"""Batched least squares, fractional ridge and R² for a block of voxels sharing one HRF.

The single-trial design is block-diagonal over runs: a trial's regressor is zero outside
its run, and drift and nuisance regressors are per run. So one session's fit is one
small factorisation per run, shared by every voxel of the block that uses the HRF:

    X̃_r = P_r X_r = U_r S_r V_rᵀ       (thin SVD; P_r projects out the run's nuisance)

with ``X_r`` the run's trial regressors (HRF-convolved onsets) and ``P_r`` the projection
off polynomials, extra regressors and noise PCs. For voxel data ``Y_r`` the rotated OLS
coefficients are ``c_r = S_r⁻¹ U_rᵀ Y_r`` and the betas ``β_r = V_r c_r``: exactly
``argmin_β Σ_r ||P_r (Y_r − X_r β_r)||²`` (Frisch–Waugh–Lovell; GLMsingle
``fit_model`` / ``olsmatrix2``). Fractional ridge (Rokem & Kay 2020, the ``fracridge``
package GLMsingle calls) shrinks each rotated coefficient by ``s²/(s² + α)``, with one α
per voxel and fraction found on fracridge's log-spaced grid, so all voxels and fractions
reuse the same SVDs. R² follows GLMsingle's ``glm_estimatemodel``:

    R² = 100 · (1 − Σ_r ||Q_r (Y_r − X_r β_r)||² / Σ_r ||Q_r Y_r||²)

with ``Q_r`` projecting out the polynomials only (the model fit excludes the extra
regressors and PCs), evaluated from the rotated quantities without forming residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "RunSystem",
    "SessionSystem",
    "Rotated",
    "fracridge_alphas",
    "shrink",
    "autoscale",
    "SINGULAR_TOL",
]

#: Singular values below this count as zero (fracridge.fracridge: ``isbad = selt < tol``, tol=1e-10).
SINGULAR_TOL = 1e-10
#: fracridge's alpha grid: from SMALL_BIAS·s_min² to BIG_BIAS·s_max², log10 steps of BIAS_STEP
#: (fracridge/fracridge.py module constants).
BIG_BIAS = 10e3
SMALL_BIAS = 10e-3
BIAS_STEP = 0.2


@dataclass(frozen=True, eq=False)
class RunSystem:
    """One run's projected design for one HRF and one nuisance set.

    Attributes
    ----------
    u : array of shape (n_volumes, m)
        Left singular vectors of the projected design ``X̃`` (0 for ``s < SINGULAR_TOL``).
    s : array of shape (m,)
        Its singular values (descending).
    v : array of shape (n_trials_r, m)
        Right singular vectors.
    e : array of shape (n_volumes, k)
        Orthonormal nuisance directions beyond the polynomials (extra regressors, PCs).
    ex : array of shape (k, n_trials_r)
        ``eᵀ X``: the design's part along them (needed for GLMsingle's R²).
    """

    u: np.ndarray
    s: np.ndarray
    v: np.ndarray
    e: np.ndarray
    ex: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, poly: np.ndarray, e: np.ndarray) -> "RunSystem":
        """Factorise ``x`` (n_volumes, n_trials_r) with nuisance ``[poly, e]`` (orthonormal) projected out.

        From the eigendecomposition of the small Gram matrix ``X̃ᵀX̃ = V S² Vᵀ`` (as fracridge
        does, ``svd(X.T @ X)``), ``U = X̃ V S⁻¹``: 2–3× faster than an SVD of ``X̃`` at
        NSD's run size and as accurate in float64 for these well-conditioned designs.
        Directions with ``s < SINGULAR_TOL`` get ``u = 0`` (their coefficients are 0).
        """
        ex = e.T @ x
        xt = x - poly @ (poly.T @ x) - e @ ex
        evals, v = np.linalg.eigh(xt.T @ xt)
        order = np.argsort(evals)[::-1]
        s, v = np.sqrt(np.clip(evals[order], 0, None)), v[:, order]
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s >= SINGULAR_TOL)
        return cls(u=(xt @ v) * inv, s=s, v=v, e=e, ex=ex)


@dataclass(frozen=True, eq=False)
class Rotated:
    """A voxel block's data in a :class:`SessionSystem`'s coordinates.

    Attributes
    ----------
    uy : array of shape (m_total, n_voxels)
        ``U_rᵀ Q_r Y_r`` stacked over runs.
    ey : list of arrays of shape (k_r, n_voxels)
        ``e_rᵀ Q_r Y_r`` per run.
    energy : array of shape (n_voxels,)
        ``Σ_r ||Q_r Y_r||²`` (the R² denominator).
    """

    uy: np.ndarray
    ey: list[np.ndarray]
    energy: np.ndarray


class SessionSystem:
    """The per-run factorisations of one session design (one HRF, one nuisance set).

    Parameters
    ----------
    runs : sequence of RunSystem
        One per run, in run order.
    """

    def __init__(self, runs: Sequence[RunSystem]) -> None:
        self.runs = list(runs)
        rot = np.cumsum([0] + [r.s.size for r in self.runs])
        trl = np.cumsum([0] + [r.v.shape[0] for r in self.runs])
        self.rot_slices = [slice(int(a), int(b)) for a, b in zip(rot[:-1], rot[1:])]
        self.trial_slices = [slice(int(a), int(b)) for a, b in zip(trl[:-1], trl[1:])]
        self.s = np.concatenate([r.s for r in self.runs])
        self.n_trials = int(trl[-1])

    def rotate(self, yp: Sequence[np.ndarray], energy: np.ndarray) -> Rotated:
        """Rotate drift-free data ``yp`` (per run, (n_volumes_r, n_voxels)) into this system."""
        uy = np.concatenate([r.u.T @ y for r, y in zip(self.runs, yp)], axis=0)
        ey = [r.e.T @ y for r, y in zip(self.runs, yp)]
        return Rotated(uy=uy, ey=ey, energy=energy)

    def ols(self, rot: Rotated) -> np.ndarray:
        """Rotated OLS coefficients ``c = S⁻¹ Uᵀ Y`` of shape (m_total, n_voxels); 0 where s < tol."""
        good = self.s >= SINGULAR_TOL
        inv = np.divide(1.0, self.s, out=np.zeros_like(self.s), where=good)
        return rot.uy * inv[:, None]

    def betas(self, b: np.ndarray) -> np.ndarray:
        """Betas ``V b`` of shape (n_trials, n_voxels) from rotated coefficients ``b``."""
        out = np.empty((self.n_trials, b.shape[1]))
        for run, rs, ts in zip(self.runs, self.rot_slices, self.trial_slices):
            out[ts] = run.v @ b[rs]
        return out

    def sse(self, b: np.ndarray, rot: Rotated) -> np.ndarray:
        """Σ_r ||Q_r (Y_r − X_r V_r b_r)||² per voxel, shape (n_voxels,).

        With ``Ỹ = P Y`` and ``E`` the non-polynomial nuisance, ``Q Y − Q X β`` splits into
        ``(Ỹ − U S b)`` and ``E (Eᵀ Y − Eᵀ X β)``, orthogonal to each other, so
        ``||·||² = ||QY||² − ||EᵀY||² − 2 (Sb)·(UᵀY) + ||Sb||² + ||EᵀY − EᵀX V b||²``.
        """
        sb = self.s[:, None] * b
        out = rot.energy - 2 * np.einsum("ij,ij->j", sb, rot.uy) + np.einsum("ij,ij->j", sb, sb)
        for run, rs, ey in zip(self.runs, self.rot_slices, rot.ey):
            if ey.shape[0]:
                resid = ey - run.ex @ (run.v @ b[rs])
                out += np.einsum("ij,ij->j", resid, resid) - np.einsum("ij,ij->j", ey, ey)
        return out

    def r2(self, b: np.ndarray, rot: Rotated) -> np.ndarray:
        """GLMsingle's R² (percent) of rotated coefficients ``b``, shape (n_voxels,)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100 * (1 - self.sse(b, rot) / rot.energy)


def _interp_columns(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp(x, xp[:, v], fp)`` for every column ``v`` of a non-decreasing ``xp``.

    Parameters
    ----------
    x : array of shape (n_x,)
    xp : array of shape (n_grid, n_voxels)
    fp : array of shape (n_grid,)

    Returns
    -------
    array of shape (n_x, n_voxels)
        Same rule as NumPy: below ``xp[0]`` → ``fp[0]``, at or above ``xp[-1]`` →
        ``fp[-1]``, else ``slope * (x − xp[j]) + fp[j]`` on the interval holding ``x``.
    """
    n_grid = fp.size
    j = np.stack([np.sum(xp <= value, axis=0) for value in x]) - 1  # (n_x, n_voxels), memory n_grid × n_voxels
    jj = np.clip(j, 0, n_grid - 2)
    x0 = np.take_along_axis(xp, jj, axis=0)
    x1 = np.take_along_axis(xp, jj + 1, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (fp[jj + 1] - fp[jj]) / (x1 - x0)
        out = slope * (x[:, None] - x0) + fp[jj]
    out = np.where(j < 0, fp[0], out)
    return np.where(j >= n_grid - 1, fp[-1], out)


def fracridge_alphas(s: np.ndarray, c: np.ndarray, fracs: np.ndarray) -> np.ndarray:
    """Ridge alphas that shrink each voxel's OLS betas to the given fractions of their length.

    The objective per voxel: find ``α`` with ``||β_α|| = f ||β_OLS||`` where
    ``β_α = argmin ||y − Xβ||² + α||β||²``. In rotated coordinates
    ``||β_α||² = Σ_i (s_i²/(s_i² + α))² c_i²``. As fracridge does, the length is evaluated
    on the grid ``α ∈ {0} ∪ 10^(floor(log10(SMALL_BIAS·s_min²)) : BIAS_STEP :
    ceil(log10(BIG_BIAS·s_max²)))`` and ``log(1 + α)`` is interpolated linearly in the
    relative length (fracridge.fracridge), so the result equals fracridge's. ``s_min`` is
    the smallest singular value ≥ ``SINGULAR_TOL`` (fracridge takes the smallest, and its
    grid breaks when that is 0; otherwise the two agree).

    Parameters
    ----------
    s : array of shape (m,)
        Singular values of the whole (block-diagonal) design, any order.
    c : array of shape (m, n_voxels)
        Rotated OLS coefficients (0 where ``s < SINGULAR_TOL``).
    fracs : array of shape (n_fracs,)
        Fractions in (0, 1].

    Returns
    -------
    alphas : array of shape (n_fracs, n_voxels)
    """
    fracs = np.asarray(fracs, dtype=float)
    val1 = BIG_BIAS * s.max() ** 2
    val2 = SMALL_BIAS * s[s >= SINGULAR_TOL].min() ** 2
    grid = np.concatenate([[0.0], 10 ** np.arange(np.floor(np.log10(val2)), np.ceil(np.log10(val1)), BIAS_STEP)])
    s2 = s**2
    scale2 = (s2 / (s2 + grid[:, None])) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        length = np.sqrt(scale2 @ c**2)
        length = length / length[0]
    log_alpha = np.log(1 + grid)
    out = np.exp(_interp_columns(fracs, length[::-1], log_alpha[::-1])) - 1
    return np.where(np.isfinite(out), out, 0.0)


def shrink(s: np.ndarray, c: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Ridge rotated coefficients ``s²/(s² + α) · c``, one α per voxel.

    Parameters
    ----------
    s : array of shape (m,)
    c : array of shape (m, n_voxels)
    alphas : array of shape (n_voxels,)

    Returns
    -------
    array of shape (m, n_voxels)
    """
    s2 = (s**2)[:, None]
    return s2 / (s2 + alphas[None, :]) * c


def autoscale(betas: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel scale and offset of ridge betas that best match the unregularised ones.

    Objective per voxel: ``min_{a, b} ||reference − (a · betas + b)||²``; when ``a < 0``
    use ``(a, b) = (1, 0)`` (GLM_single.fit, type D: ``h = olsmatrix(X) @ ...; if h[0] < 0:
    h = [1, 0]``). A voxel whose betas do not vary gets the minimum-norm solution (pinv).

    Parameters
    ----------
    betas, reference : arrays of shape (n_trials, n_voxels)

    Returns
    -------
    scaled : array of shape (n_trials, n_voxels)
    scaleoffset : array of shape (n_voxels, 2)
    """
    x = np.nan_to_num(betas)
    n = x.shape[0]
    mx, my = x.mean(axis=0), reference.mean(axis=0)
    xc = x - mx
    sxx = np.einsum("ij,ij->j", xc, xc)
    sxy = np.einsum("ij,ij->j", xc, reference - my)
    flat = sxx <= np.finfo(float).eps * np.maximum(np.einsum("ij,ij->j", x, x), np.finfo(float).tiny)
    scale = np.divide(sxy, sxx, out=np.zeros_like(sxx), where=~flat)
    offset = my - scale * mx
    for v in np.flatnonzero(flat):
        design = np.c_[x[:, v], np.ones(n)]
        scale[v], offset[v] = np.linalg.pinv(design) @ reference[:, v]
    neg = scale < 0
    scale[neg], offset[neg] = 1.0, 0.0
    return scale * x + offset, np.c_[scale, offset]
