"""The experimental design: ``nsd_expdesign.mat`` and the train/test split of a subject's trials.

Facts (NSD data manual, "Experiments"; Brain-Diffuser's ``scripts/prepare_nsddata.py``;
nsd_access): ``masterordering`` (1×30000) gives, for every trial, the 1-based index into the
subject's row of ``subjectim`` (8×10000, 1-based 73k ids); ``sharedix`` (1×1000) lists the
shared images, which are the first 1000 columns of every ``subjectim`` row, so a trial is a
test (shared) trial when ``masterordering <= 1000``. Brain-Diffuser indexes NumPy arrays
with these fields directly, so they must load as integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.io

from fmri2img.storage.nsd._common import NSDError, NSDFormatError, _name, _open

@dataclass(frozen=True)
class ExpDesign:
    """The NSD experimental design (``nsd_expdesign.mat``).

    Attributes
    ----------
    masterordering : array of shape (n_trials,), int64
        1-based index into a subject's image list for every trial, as in the file.
    subjectim : array of shape (n_subjects, n_per_subject), int64
        1-based 73k image ids shown to each subject.
    sharedix : array of shape (n_shared,), int64
        1-based 73k ids of the shared images (the first ``n_shared`` columns of subjectim).
    trials_per_session : int
        Stimulus trials per session (the sum of one session's ``stimpattern``; 750 for NSD).
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray
    trials_per_session: int

    @property
    def n_sessions(self) -> int:
        """Sessions covered by ``masterordering``."""
        return len(self.masterordering) // self.trials_per_session

    @property
    def n_subjects(self) -> int:
        """Rows of ``subjectim``."""
        return self.subjectim.shape[0]


def read_expdesign(fs: Any, path: str) -> ExpDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5) and check its fields.

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
        Path of the ``.mat`` file on ``fs``.

    Returns
    -------
    ExpDesign
    """
    fix = "download nsddata/experiments/nsd/nsd_expdesign.mat or regenerate mini-NSD"
    with _open(fs, path, what="NSD experimental design", fix=fix) as f:
        try:
            mat = scipy.io.loadmat(f, variable_names=("masterordering", "subjectim", "sharedix", "stimpattern"))
        except Exception as exc:  # scipy raises ValueError/TypeError/OSError on damaged files
            raise NSDFormatError(
                f"{_name(path)} at {path} is not a readable MATLAB v5 file ({exc}); it is truncated or corrupt: "
                f"download it again"
            ) from exc
    for field in ("masterordering", "subjectim", "sharedix", "stimpattern"):
        if field not in mat:
            raise NSDFormatError(f"{_name(path)} has no field {field!r}; expected the NSD fields masterordering, "
                                 f"subjectim, sharedix, stimpattern: this is not nsd_expdesign.mat")
    master = _int_field(mat, "masterordering", path, ndim=1)
    subjectim = _int_field(mat, "subjectim", path, ndim=2)
    shared = _int_field(mat, "sharedix", path, ndim=1)
    stim = np.asarray(mat["stimpattern"])
    if stim.ndim != 3 or stim.shape[0] < 1:
        raise NSDFormatError(f"{_name(path)}: field 'stimpattern' has shape {stim.shape}; expected "
                             f"(n_sessions, runs, trials_per_run), e.g. 40×12×75")
    tps = int(np.count_nonzero(stim[0]))
    if tps < 1 or len(master) % tps:
        raise NSDFormatError(f"{_name(path)}: masterordering has {len(master)} trials, not a multiple of the "
                             f"{tps} stimulus trials per session in stimpattern; the file is inconsistent")
    if master.min() < 1 or master.max() > subjectim.shape[1]:
        raise NSDFormatError(f"{_name(path)}: masterordering values span {master.min()}..{master.max()}; expected "
                             f"1-based indices 1..{subjectim.shape[1]} into subjectim's columns")
    if subjectim.min() < 1:
        raise NSDFormatError(f"{_name(path)}: subjectim holds {subjectim.min()}; expected 1-based 73k ids (>= 1)")
    return ExpDesign(masterordering=master, subjectim=subjectim, sharedix=shared, trials_per_session=tps)


def _int_field(mat: dict, field: str, path: str, *, ndim: int) -> np.ndarray:
    arr = np.asarray(mat[field])
    if ndim == 1:
        arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != ndim or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise NSDFormatError(f"{_name(path)}: field {field!r} has shape {arr.shape} and dtype {arr.dtype}; expected "
                             f"a non-empty {'row vector' if ndim == 1 else 'matrix'} of integers")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise NSDFormatError(f"{_name(path)}: field {field!r} holds non-integer values; expected integer indices")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class TrialSplit:
    """Trials of one subject split into train (non-shared) and test (shared) images.

    Attributes
    ----------
    train_ids, test_ids : array of shape (n_train,) / (n_test,), int64
        0-based 73k ids in first-presentation order.
    train_trials, test_trials : list of arrays
        For each image, its sorted 0-based global trial indices within the chosen sessions.
    sessions : tuple of int
        1-based sessions used, ascending.
    trial_image : array of shape (n_kept_trials,), int64
        0-based 73k id of every trial of the chosen sessions, in trial order.
    trial_session : array of shape (n_kept_trials,), int64
        1-based session of each such trial.
    """

    train_ids: np.ndarray
    train_trials: list[np.ndarray]
    test_ids: np.ndarray
    test_trials: list[np.ndarray]
    sessions: tuple[int, ...]
    trial_image: np.ndarray
    trial_session: np.ndarray

    @property
    def trial_index(self) -> np.ndarray:
        """Array of shape (n_kept_trials,): the 0-based global index of every kept trial."""
        tps = len(self.trial_image) // max(len(self.sessions), 1)
        return np.concatenate([np.arange((s - 1) * tps, s * tps) for s in self.sessions]) if self.sessions else \
            np.zeros(0, np.int64)


def split_trials(design: ExpDesign, subject: int, sessions: Sequence[int]) -> TrialSplit:
    """Split a subject's trials of the chosen sessions into train and test images.

    Trial ``idx`` shows ``nsdId = subjectim[subject-1, masterordering[idx]-1] - 1`` and is a
    test trial when ``masterordering[idx] <= len(sharedix)``, else a train trial.

    Parameters
    ----------
    design : ExpDesign
    subject : int
        1-based subject (row of ``subjectim``).
    sessions : sequence of int
        1-based sessions to use (each at most once).

    Returns
    -------
    TrialSplit
    """
    if not isinstance(subject, (int, np.integer)) or not 1 <= subject <= design.n_subjects:
        raise NSDError(f"subject {subject!r} is not in the experimental design, which has subjects "
                       f"1..{design.n_subjects}; choose a subject in that range")
    sess = [int(s) for s in sessions]
    if not sess:
        raise NSDError("no sessions selected; pass at least one session (e.g. --sessions 1-37)")
    bad = [s for s in sess if not 1 <= s <= design.n_sessions]
    if bad:
        raise NSDError(f"session(s) {bad} are outside the experimental design, which has sessions "
                       f"1..{design.n_sessions}; select sessions in that range with --sessions")
    if len(set(sess)) != len(sess):
        raise NSDError(f"sessions {sess} repeat a session; list each session once")
    sess = sorted(sess)
    tps = design.trials_per_session
    idx = np.concatenate([np.arange((s - 1) * tps, s * tps) for s in sess])
    order = design.masterordering[idx]
    image = design.subjectim[subject - 1, order - 1] - 1
    is_train = order > len(design.sharedix)
    train_ids, train_trials = _group_first_seen(image[is_train], idx[is_train])
    test_ids, test_trials = _group_first_seen(image[~is_train], idx[~is_train])
    return TrialSplit(train_ids=train_ids, train_trials=train_trials, test_ids=test_ids, test_trials=test_trials,
                      sessions=tuple(sess), trial_image=image.astype(np.int64),
                      trial_session=(idx // tps + 1).astype(np.int64))


def _group_first_seen(images: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group trials (ascending) by image; images ordered by first presentation."""
    uniq, first, inverse = np.unique(images, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    keys = rank[inverse]
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(len(uniq) + 1))
    groups = [trials[order[bounds[i]:bounds[i + 1]]].astype(np.int64) for i in range(len(uniq))]
    return uniq[np.argsort(first, kind="stable")].astype(np.int64), groups




#: Columns of ``nsd_stim_info_merged.csv`` that every reader relies on.
STIM_INFO_REQUIRED: tuple[str, ...] = ("nsdId", "shared1000", "cocoId", "cocoSplit")


def read_stim_info(fs: Any, path: str):
    """Read ``nsd_stim_info_merged.csv`` as nsd_access does (first, unnamed column as the index).

    Columns (NSD data manual, "Experiments"; nsd_access): cocoId, cocoSplit, cropBox, loss,
    nsdId (0-based 73k id, equal to the row), flagged, BOLD5000, shared1000, subject1..8 (1 when
    the image is in that subject's set) and subjectN_repK (1-based trial number of the K-th
    showing to subject N, 0 when not shown).

    Returns
    -------
    pandas.DataFrame
        One row per 73k image, indexed by the unnamed first column.
    """
    import pandas as pd

    fix = "download nsddata/experiments/nsd/nsd_stim_info_merged.csv or regenerate mini-NSD"
    with _open(fs, path, what="NSD stimulus information", fix=fix) as f:
        try:
            table = pd.read_csv(f, index_col=0)
        except Exception as exc:  # pandas: ParserError, UnicodeDecodeError, EmptyDataError
            raise NSDFormatError(f"{_name(path)} at {path} is not a readable CSV file ({exc}): download it again") \
                from exc
    missing = [c for c in STIM_INFO_REQUIRED if c not in table.columns]
    if missing:
        raise NSDFormatError(f"{_name(path)} has no column(s) {missing}; expected NSD's columns (cocoId, cocoSplit, "
                             f"..., nsdId, shared1000, subject1..8, subject1_rep0..subject8_rep2)")
    if not np.array_equal(table["nsdId"].to_numpy(), np.arange(len(table))):
        raise NSDFormatError(f"{_name(path)}: column nsdId is not 0, 1, 2, ... (one row per 73k image, in order)")
    return table
