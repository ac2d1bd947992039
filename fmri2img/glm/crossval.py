"""Cross-validation of single-trial betas across repeats, and GLMsingle's stopping rule.

GLMsingle does not refit held-out runs: it fits the whole session once per candidate
(a number of PCs, a ridge fraction) and scores a candidate by how well the betas of
training trials predict the *unregularised* betas of held-out trials of the same
condition (``calcbadness``, glmsingle/ssq/calcbadness.py):

    badness_h(v) = Σ_folds Σ_{t held out} Σ_{s in training runs, cond(s) = cond(t)}
                   (z_h[s, v] − z_0[t, v])²

with ``z`` the betas z-scored per voxel by the mean and standard deviation (ddof 1) of
the unregularised betas ``β_0`` over the session's trials. The same mean is subtracted
from both terms, so the z-scoring reduces to dividing the raw squared error by that
variance (a session-wide ``sessionindicator``, the single-session case here). NSD's own
``calcbadness`` (cvnlab/nsddatapaper main/glm_nsd.m) uses raw betas and only the first
matching training trial; :class:`~fmri2img.glm.options.GlmOptions` selects either.
The pairs ``(s, t)`` are computed once, by :func:`~fmri2img.glm.plan.prepare`.
"""

from __future__ import annotations

import numpy as np

from .errors import GlmInputError
from .plan import GlmPlan

__all__ = ["xval_scale", "xval_badness", "pcnum_rule"]


def xval_scale(reference: np.ndarray, plan: GlmPlan) -> np.ndarray:
    """Per-voxel factor on the squared error: ``1 / sd(β_0)²`` (0 where sd is 0) or 1.

    Parameters
    ----------
    reference : array of shape (n_trials, n_voxels)
        Unregularised betas (0 PCs for pcnum, fraction 1 for type D), raw units.
    plan : GlmPlan

    Returns
    -------
    scale : array of shape (n_voxels,)
    """
    if not plan.options.xval_zscore:
        return np.ones(reference.shape[1])
    var = np.var(reference, axis=0, ddof=1)
    return np.divide(1.0, var, out=np.zeros_like(var), where=var != 0)


def xval_badness(candidate: np.ndarray, reference: np.ndarray, plan: GlmPlan, scale: np.ndarray) -> np.ndarray:
    """Cross-validated squared error of ``candidate`` betas against ``reference`` held-out betas.

    Parameters
    ----------
    candidate, reference : arrays of shape (n_trials, n_voxels)
    plan : GlmPlan
        Supplies the (training, held-out) trial pairs.
    scale : array of shape (n_voxels,)
        From :func:`xval_scale`.

    Returns
    -------
    badness : array of shape (n_voxels,)
        ``scale · Σ_pairs (candidate[s] − reference[t])²``; lower is better.
    """
    train, test = plan.pairs
    diff = candidate[train] - reference[test]
    return np.einsum("ij,ij->j", diff, diff) * scale


def pcnum_rule(xvaltrend: np.ndarray, pcstop: float, rule: str) -> int:
    """Number of noise PCs from the cross-validation trend (higher is better).

    ``curve = xvaltrend − xvaltrend[0]``; scan candidates in order and keep the best so
    far; stop at the first whose gain times ``pcstop`` reaches the maximum gain.
    Candidates are 0..n_pcs with fallback 0 for ``rule="matlab"``
    (GLMestimatesingletrial.m), 1..n_pcs−1 for ``rule="python"``
    (glmsingle/utils/select_noise_regressors.py, ``range(1, numpcstotry)``).

    Parameters
    ----------
    xvaltrend : array of shape (n_pcs + 1,)
        ``−median`` badness over the judged voxels, for 0..n_pcs PCs.
    pcstop : float
        Stop factor (≥ 1).
    rule : {"matlab", "python"}

    Returns
    -------
    int
    """
    curve = xvaltrend - xvaltrend[0]
    top = curve.max()
    candidates = range(0, curve.size) if rule == "matlab" else range(1, curve.size - 1)
    chosen, best = (0 if rule == "matlab" else None), -np.inf
    for p in candidates:
        if curve[p] > best:
            chosen, best = p, curve[p]
            if best * pcstop >= top:
                break
    if chosen is None:
        raise GlmInputError(
            f"pcnum_rule='python' scans 1..n_pcs-1, which is empty or never improves for n_pcs={curve.size - 1} "
            "(GLMsingle's Python code fails here too): use pcnum_rule='matlab', more PCs, or pcstop=-B"
        )
    return int(chosen)
