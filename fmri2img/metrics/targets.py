"""Scores of trials that share a few targets (NSD-Imagery: 18 targets, each imagined many times).

Brain-Diffuser's two-way identification compares reconstruction i with the other *trials'*
ground truths; when trials repeat a target, the other trials of the same target are ties that
can never count, so the score's ceiling falls below 1 and its chance level below 0.5. Here a
trial is compared with the other *targets* instead.
"""
from __future__ import annotations

import numpy as np

from fmri2img.metrics.scores import pearson_matrix


def identification_among_targets(target_feats: np.ndarray, rec_feats: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-trial two-way identification against the other targets (chance 0.5).

    With r the Pearson matrix of the candidate targets' features (rows) and the
    reconstructions' (columns), trial i with target t scores
    ``#{u != t among candidates : r[u, i] < r[t, i]} / (n_candidates - 1)``; the candidates are
    the distinct targets of ``target``.

    Parameters
    ----------
    target_feats : array of shape (n_targets, d)
        Features of every target picture.
    rec_feats : array of shape (n_trials, d)
    target : int array of shape (n_trials,)
        Row of ``target_feats`` each trial's reconstruction should match.

    Returns
    -------
    array of shape (n_trials,), float64
        Fractions in [0, 1]; NaN for trials whose features (or their target's) are constant or
        non-finite, and for all when fewer than 2 distinct targets remain.
    """
    t_feats = np.asarray(target_feats, np.float64).reshape(len(target_feats), -1)
    r_feats = np.asarray(rec_feats, np.float64).reshape(len(rec_feats), -1)
    target = np.asarray(target, np.int64)
    if len(target) != len(r_feats):
        raise ValueError(f"target has {len(target)} entries for {len(r_feats)} reconstructions; expected one each")
    if target.size and (target.min() < 0 or target.max() >= len(t_feats)):
        raise ValueError(f"target spans {target.min()}..{target.max()}; expected rows of the {len(t_feats)} targets")
    out = np.full(len(target), np.nan)
    candidates = np.unique(target)
    ok_t = np.isfinite(t_feats[candidates]).all(axis=1) & (np.ptp(t_feats[candidates], axis=1) > 0)
    candidates = candidates[ok_t]
    if len(candidates) < 2:
        return out
    r = pearson_matrix(t_feats[candidates], r_feats)  # (n_candidates, n_trials)
    row = {int(c): k for k, c in enumerate(candidates)}
    for i, t in enumerate(target.tolist()):
        if t not in row or not np.all(np.isfinite(r[:, i])):
            continue
        own = r[row[t], i]
        out[i] = float((r[:, i] < own).sum()) / (len(candidates) - 1)
    return out
