"""A dataset source: an NSD-layout tree behind a URL (the public bucket, a mirror, mini-NSD)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from fmri2img.storage import secrets
from fmri2img.storage import urls
from fmri2img.storage.nsd import NSDLayout


@dataclass(frozen=True)
class Source:
    """Where NSD files are read from.

    Parameters
    ----------
    url : str
        Root of the NSD tree, e.g. ``"s3://natural-scenes-dataset"`` or ``"./mini-nsd"``.
    storage_options : mapping, optional
        fsspec options (credentials, endpoint); never logged or stored.
    captions_url : str, optional
        ``COCO_73k_annots_curated.npy``; by default at the root of ``url``.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    captions_url: str = ""

    def filesystem(self):
        """``(fs, root)`` for the NSD tree, opened in the calling process."""
        return urls.filesystem(self.url, dict(self.storage_options) or None)

    def layout(self) -> NSDLayout:
        return NSDLayout(self.filesystem()[1])

    def captions(self):
        """``(fs, path)`` of the captions file."""
        if self.captions_url:
            return urls.filesystem(self.captions_url, dict(self.storage_options) or None)
        fs, root = self.filesystem()
        return fs, NSDLayout(root).captions()

    def describe(self) -> str:
        return urls.describe(self.url, dict(self.storage_options) or None)

    @property
    def safe_url(self) -> str:
        return secrets.redact(self.url)
