"""Human-facing files (PNGs, reports) at a URL outside the store."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fmri2img.storage import urls


@dataclass(frozen=True)
class Outputs:
    """Where PNG files and reports go: a local path or fsspec URL (credentials in ``storage_options``)."""

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def beside(cls, store_url: str, storage_options: Mapping[str, Any] | None = None) -> "Outputs":
        """``<folder of the store>/outputs``: ``s3://b/x/nsd.zarr`` → ``s3://b/x/outputs``."""
        scheme, rest = urls.split_url(store_url)
        parent = rest.rstrip("/").rsplit("/", 1)[0] if "/" in rest.rstrip("/") else ("" if scheme else ".")
        base = f"{scheme}://{parent}" if scheme else (parent or ".")
        return cls(urls.join(base, "outputs"), dict(storage_options or {}))

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write ``data`` to ``<url>/<relpath>`` (folders created); return the file's URL."""
        fs, root = urls.filesystem(self.url, dict(self.storage_options) or None)
        path = f"{root.rstrip('/')}/{relpath}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)
        return urls.join(self.url, relpath)

    def write_png(self, relpath: str, image: np.ndarray) -> str:
        """Write one uint8 (H, W, 3) image as PNG."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
        return self.write_bytes(relpath, buf.getvalue())

    def write_pngs(self, folder: str, names, images: np.ndarray) -> None:
        """Write ``images[i]`` as ``<folder>/<names[i]>.png``."""
        for name, image in zip(names, images):
            self.write_png(f"{folder}/{name}.png", image)
