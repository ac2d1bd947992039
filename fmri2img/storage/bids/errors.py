"""The errors of the BIDS/fMRIPrep readers: one class per kind of bad input.

Every error is a :class:`ValueError` whose single argument is the whole message: the file or
field, what was expected (with what exists, where that helps), and the fix. A single-argument
exception pickles by value, so an error raised on a Dask worker arrives at the client as the same
class with the same message (``pickle.loads(pickle.dumps(e))``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BIDSError", "NotBIDSError", "BIDSSelectionError", "BIDSFormatError", "MetadataError",
    "TRMismatchError", "EventsError", "OnsetGridError", "DerivativesMissingError", "ConfoundsError",
    "listing",
]


class BIDSError(ValueError):
    """A BIDS dataset or its fMRIPrep derivatives cannot be used as given; the message says why and the fix."""


class NotBIDSError(BIDSError):
    """The folder has no ``dataset_description.json``: it is not a BIDS (or BIDS-Derivatives) dataset."""


class BIDSSelectionError(BIDSError):
    """A participant, session, task, space or run that was asked for does not exist (the message lists those that do)."""


class BIDSFormatError(BIDSError):
    """A file is unreadable or malformed (TSV, JSON, NIfTI), or two files that must agree do not."""


class MetadataError(BIDSError):
    """A JSON sidecar lacks a required field, or the Inheritance Principle is broken (two sidecars at one level)."""


class TRMismatchError(MetadataError):
    """The repetition time of a sidecar and of the NIfTI header differ."""


class EventsError(BIDSError):
    """An ``_events.tsv`` lacks a required column, has unusable values, or onsets outside the run."""


class OnsetGridError(EventsError):
    """No time grid on which all onsets fall (``onsets="resample"``) exists within the tolerance."""


class DerivativesMissingError(BIDSError):
    """A run lacks one of its fMRIPrep derivatives (preprocessed BOLD, brain mask, confounds)."""


class ConfoundsError(BIDSError):
    """A confound strategy is unknown or names columns the confounds file lacks."""


def listing(items: Iterable[object], *, limit: int = 12, empty: str = "none") -> str:
    """``'a', 'b', 'c'`` (at most ``limit`` items, then ``... (N in all)``); ``empty`` when there are none."""
    items = [str(i) for i in items]
    if not items:
        return empty
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"
