"""What a mini-NSD dataset is: its size and options (:class:`MiniNSDSpec`) and its randomness.

Every random draw of the generator comes from :func:`rng_for` with a key naming its purpose,
subject and session, so the files do not depend on the order they are written in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: NSD's design has 8 subjects (``subjectim`` rows); mini-NSD writes files for some of them.
N_DESIGN_SUBJECTS = 8


@dataclass(frozen=True)
class MiniNSDSpec:
    """Size and randomness of a mini-NSD dataset; defaults are the demo size.

    Attributes
    ----------
    seed : int
    subjects : tuple of int
        Subjects (1..8) whose fMRI files are written; ``subjectim`` always has 8 rows.
    n_images : int
        Distinct stimuli in ``imgBrick`` (mini-NSD's "73k" space).
    n_shared : int
        Shared test images seen by every subject (``sharedix``), each shown 3 times.
    n_per_subject : int
        Images per subject including the shared ones (``subjectim`` columns).
    n_sessions, trials_per_session : int
        All sessions are written; every image is shown 1-3 times in the
        ``n_sessions * trials_per_session`` trials.
    side : int
        Image side in pixels (NSD: 425).
    volume_shape : tuple of 3 int
        Subject 1's (X, Y, Z) grid; other subjects get slightly different grids, affines and
        nsdgeneral voxel counts.
    noise : float
        Trial noise standard deviation in percent signal change (signal amplitude is 1-3 %).
    nan_voxels : int
        NaN voxels planted in some sessions; when > 0 the betas are written as float32
        (still × 300), else int16.
    write_hdf5 : bool
        Also write the ``betas_sessionNN.hdf5`` twins.
    hdf5_layout : {"chunked", "contiguous"}
        NSD's chunks of one voxel's trials, or one contiguous block.
    nsdgeneral_keep : float
        Fraction of the simulated posterior cap kept as nsdgeneral: 0.66 covers about 7 % of the
        volume, 0.22 about 2.3 % (NSD subject 1: 15,724 of 699,192 voxels).
    sessions_per_subject : mapping of subject to int
        Subjects scanned for fewer sessions (their first k of the design; NSD's subjects 3, 4, 6 and 8
        have 32, 30, 32 and 30 of 40), e.g. ``{3: 1}``: a new person with one session.
    imagery : bool
        Also write NSD-Imagery's files (:mod:`fmri2img.mininsd.imagery`).
    imagery_repeats : int
        Trials per condition in each imagery-session run (NSD-Imagery: 8, so 720 betas).
    timeseries : bool
        Also write NSD's time series (``nsddata_timeseries``: runs, design TSVs, brain mask)
        simulated from the betas' single-trial responses (:mod:`fmri2img.mininsd.timeseries`);
        the design's ``stimpattern`` then has NSD's run structure (75 slots for 63 trials).
    timeseries_sessions : int
        Sessions (each subject's first ones) written as time series.
    runs_per_session : int
        Runs a session is cut into; 0: NSD's 12 when that leaves at least 30 trials a run,
        else fewer. Only used with ``timeseries``.
    timeseries_noise : float
        Standard deviation of the time series' AR(1) noise, percent signal change.
    """

    seed: int = 0
    subjects: tuple[int, ...] = (1, 2)
    n_images: int = 480
    n_shared: int = 60
    n_per_subject: int = 300
    n_sessions: int = 10
    trials_per_session: int = 75
    side: int = 425
    volume_shape: tuple[int, int, int] = (34, 42, 34)
    noise: float = 2.0
    nan_voxels: int = 0
    write_hdf5: bool = True
    hdf5_layout: str = "chunked"
    nsdgeneral_keep: float = 0.66
    sessions_per_subject: Any = ()
    imagery: bool = False
    imagery_repeats: int = 8
    timeseries: bool = False
    timeseries_sessions: int = 1
    runs_per_session: int = 0
    timeseries_noise: float = 1.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", tuple(int(s) for s in self.subjects))
        few = dict(self.sessions_per_subject or {})  # a mapping, stored as sorted pairs (hashable, JSON-able)
        object.__setattr__(self, "sessions_per_subject", tuple(sorted((int(s), int(k)) for s, k in few.items())))
        object.__setattr__(self, "volume_shape", tuple(int(s) for s in self.volume_shape))
        n_trials = self.n_sessions * self.trials_per_session
        min_trials = 3 * self.n_shared + (self.n_per_subject - self.n_shared)
        checks = (
            (self.seed >= 0, f"seed={self.seed} must be >= 0"),
            (len(self.subjects) > 0 and len(set(self.subjects)) == len(self.subjects)
             and all(1 <= s <= N_DESIGN_SUBJECTS for s in self.subjects),
             f"subjects={self.subjects} must be distinct subject numbers 1..8"),
            (2 <= self.n_shared < self.n_per_subject,
             f"n_shared={self.n_shared} must be >= 2 and below n_per_subject={self.n_per_subject}"),
            (self.n_per_subject <= self.n_images,
             f"n_per_subject={self.n_per_subject} must be <= n_images={self.n_images}"),
            (self.n_sessions >= 1 and self.trials_per_session >= 5,
             f"n_sessions={self.n_sessions} must be >= 1 and trials_per_session={self.trials_per_session} >= 5"),
            (min_trials <= n_trials <= 3 * self.n_per_subject,
             f"n_sessions*trials_per_session={n_trials} must lie in {min_trials}..{3 * self.n_per_subject} "
             f"(shared images 3 times, the others 1-3 times): change n_sessions or trials_per_session"),
            (16 <= self.side <= 1024, f"side={self.side} must be in 16..1024 pixels"),
            (len(self.volume_shape) == 3 and all(16 <= s <= 128 for s in self.volume_shape),
             f"volume_shape={self.volume_shape} must be 3 sizes in 16..128"),
            (np.isfinite(self.noise) and self.noise >= 0, f"noise={self.noise} must be a finite number >= 0"),
            (0 <= self.nan_voxels <= 500, f"nan_voxels={self.nan_voxels} must be in 0..500"),
            (self.hdf5_layout in ("chunked", "contiguous"),
             f"hdf5_layout={self.hdf5_layout!r} must be 'chunked' (NSD's) or 'contiguous'"),
            (0.05 <= self.nsdgeneral_keep <= 1.0, f"nsdgeneral_keep={self.nsdgeneral_keep} must be in 0.05..1"),
            (all(s in self.subjects and 1 <= k <= self.n_sessions for s, k in self.sessions_per_subject),
             f"sessions_per_subject={dict(self.sessions_per_subject)} must map subjects of {self.subjects} to "
             f"1..n_sessions={self.n_sessions} sessions"),
            (1 <= self.imagery_repeats <= 8, f"imagery_repeats={self.imagery_repeats} must be in 1..8"),
            (1 <= self.timeseries_sessions <= self.n_sessions,
             f"timeseries_sessions={self.timeseries_sessions} must be in 1..n_sessions={self.n_sessions}"),
            (0 <= self.runs_per_session <= 12 and (self.runs_per_session == 0 or
                                                   self.trials_per_session // self.runs_per_session >= 5),
             f"runs_per_session={self.runs_per_session} must be 0 (automatic) or 1..12 with at least 5 trials a run"),
            (np.isfinite(self.timeseries_noise) and self.timeseries_noise >= 0,
             f"timeseries_noise={self.timeseries_noise} must be a finite number >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MiniNSDSpec: {message}")

    @classmethod
    def sized(cls, **fields: Any) -> "MiniNSDSpec":
        """A spec whose unset image counts fit the trials asked for.

        With more trials than the demo's image counts allow (e.g. NSD's 750 per session), the
        images per subject, shared images and stimuli grow as in NSD: most images shown 2–3
        times, a fifth of them shared, 1.6× as many stimuli as images per subject.
        """
        base = cls()
        n_trials = fields.get("n_sessions", base.n_sessions) * fields.get("trials_per_session", base.trials_per_session)
        per = fields.get("n_per_subject")
        if per is None and not {"n_shared", "n_images"} & fields.keys() and n_trials > 3 * base.n_per_subject:
            per = -(-n_trials * 2 // 5)  # 2.5 showings per image on average
            fields.update(n_per_subject=per, n_shared=max(2, per // 5), n_images=max(base.n_images, -(-per * 8 // 5)))
        return cls(**fields)

    @property
    def n_trials(self) -> int:
        """Trials per subject over all sessions."""
        return self.n_sessions * self.trials_per_session

    def sessions_of(self, subject: int) -> int:
        """Sessions written for ``subject`` (its first ones in the design)."""
        return dict(self.sessions_per_subject).get(int(subject), self.n_sessions)


def rng_for(spec: MiniNSDSpec, *key: int) -> np.random.Generator:
    """An independent generator per (seed, purpose, subject, session): order-free determinism."""
    return np.random.default_rng([spec.seed, *key])
