"""The project store: template-first writes, region writes and completion records.

Every array of a project lives in one Zarr v3 group tree opened by URL (see
:mod:`fmri2img.storage.urls`).  Writers follow the pattern of xarray-beam:

1. ``write_template`` writes the metadata of a group once (array shapes, chunks,
   dimension names, coordinates, attributes) from an :class:`xarray.Dataset`
   whose data variables are lazy (dask) arrays; nothing of the data is computed.
2. Each region (a slab along one dimension, for example one NSD session) is then
   written by one task with :meth:`Store.write_region`, which checks alignment
   with the template before writing.
3. Only after a region's data is fully written does the task write the region's
   completion record (one chunk of a small ``uint8`` array in the ``_progress``
   group).  A run killed half-way leaves records only for finished regions, so a
   rerun redoes exactly the unfinished ones and never trusts a half-written one.

The store object is cheap and picklable: it holds the URL and storage options
and opens the underlying Zarr store lazily in whichever process uses it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync

from fmri2img.storage import consolidated, identity, urls, verify

logger = logging.getLogger(__name__)

# every array read through zarr in a process that uses stores names the chunk that fails to decode
verify.install()

PROGRESS_GROUP = "_progress"


class StoreError(ValueError):
    """A store group or region does not match what the writer expects."""


@dataclass(frozen=True)
class Region:
    """One unit of writing: a slab ``[start, stop)`` along dimension ``dim``.

    Parameters
    ----------
    index : int
        Position of the region in the group's region list (its record slot).
    dim : str
        The dimension the group is partitioned along.
    start, stop : int
        Half-open bounds along ``dim``.
    label : str
        Human-readable name used in task keys and messages (``"session-03"``).
    """

    index: int
    dim: str
    start: int
    stop: int
    label: str

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def regular_regions(dim: str, size: int, step: int, prefix: str) -> list[Region]:
    """Split ``range(size)`` into consecutive regions of ``step`` elements."""
    if step <= 0:
        raise StoreError(f"region step along {dim!r} must be positive, got {step}")
    return [
        Region(i, dim, start, min(start + step, size), f"{prefix}-{i:04d}")
        for i, start in enumerate(range(0, size, step))
    ]


@dataclass(frozen=True)
class Store:
    """A project store at ``url`` (local path, ``memory://``, ``s3://``, ``gs://``, ``gdrive://``).

    Parameters
    ----------
    url : str
        Where the store lives.
    storage_options : dict, optional
        Passed to fsspec (credentials, endpoint).  Never written into the store.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    # -- opening -----------------------------------------------------------------
    def zarr_store(self, *, read_only: bool = False):
        return urls.zarr_store(self.url, dict(self.storage_options) or None, read_only=read_only)

    def root(self, mode: str = "a") -> zarr.Group:
        """The root group (created when absent and ``mode`` allows writing)."""
        if mode != "r":
            self.unconsolidate()
        return zarr.open_group(self.zarr_store(read_only=(mode == "r")), mode=mode, zarr_format=3,
                               use_consolidated=False)

    def describe(self) -> str:
        """A log-safe description of the store (no credentials)."""
        return urls.describe(self.url, dict(self.storage_options) or None)

    def has_group(self, group: str) -> bool:
        try:
            zarr.open_group(self.zarr_store(read_only=True), path=group, mode="r", zarr_format=3,
                            use_consolidated=False)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            return False
        return True

    def group(self, group: str, mode: str = "r", *, metadata_unchanged: bool = False) -> zarr.Group:
        """Open ``group``; opened for writing, the store's consolidated metadata is dropped first (it may
        no longer hold) unless ``metadata_unchanged`` promises that only chunks will be written."""
        if mode != "r" and not metadata_unchanged:
            self.unconsolidate()
        try:
            return zarr.open_group(self.zarr_store(read_only=(mode == "r")), path=group, mode=mode, zarr_format=3,
                                   use_consolidated=False)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(
                f"group {group!r} does not exist in the store {self.describe()}: run the stage that "
                f"writes it first (fmri2img status {self.url} shows what is done)"
            ) from exc

    def open_dataset(self, group: str, **kwargs) -> xr.Dataset:
        """Open ``group`` as an :class:`xarray.Dataset` (lazy, dask-backed)."""
        self.group(group)  # clear error when missing
        kwargs.setdefault("consolidated", False)
        return xr.open_zarr(self.zarr_store(read_only=True), group=group, **kwargs)

    # -- templates -----------------------------------------------------------------
    def write_template(
        self,
        group: str,
        template: xr.Dataset,
        regions: Sequence[Region],
        *,
        attrs: Mapping[str, Any] | None = None,
        salt: str = "",
    ) -> None:
        """Write the metadata of ``group`` and reset its completion records.

        Parameters
        ----------
        group : str
            Path of the group in the store, for example ``"subjects/subj01/betas"``.
        template : xarray.Dataset
            Data variables are dask arrays whose chunks are the Zarr chunks; they
            are not computed.  Numpy-backed variables and coordinates are written
            eagerly (they are small by construction).
        regions : sequence of Region
            The regions later written by :meth:`write_region`.
        attrs : mapping, optional
            Group attributes (units, provenance).  Must not hold credentials.
        salt : str
            Anything else that makes regions written under this template invalid when it
            changes (extractor settings, seeds); part of the template fingerprint.
        """
        identity.claim(self)  # refuses a foreign or Zarr v2 target before anything is written
        self.unconsolidate()
        ds = template.copy()
        ds.attrs = {**ds.attrs, **(attrs or {})}
        ds.attrs["fmri2img_regions"] = json.dumps(_regions_to_json(regions))
        ds.attrs["fmri2img_template"] = template_fingerprint(template, regions, salt)
        ds.attrs[verify.ALL_CHUNKS_ATTR] = "all"
        encoding = {name: {"compressors": verify.checksum_codecs()} for name in ds.variables}
        for name, var in ds.data_vars.items():
            encoding[name]["chunks"] = _zarr_chunks(var)
        # Staged in memory first, then published in a few concurrent batches: on an object
        # store this is ~one request per metadata document instead of the many probes and
        # serial writes of writing in place (xarray creates arrays one at a time).
        staged: dict[str, Any] = {}
        memory = zarr.storage.MemoryStore(staged)
        ds.to_zarr(memory, group=group, mode="w", compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding, write_empty_chunks=True)
        _create_progress(memory, self._progress_path(group), len(regions))
        _publish(self.zarr_store(), staged, (group, self._progress_path(group)))
        logger.info("template %s written to %s (%d regions)", group, self.describe(), len(regions))

    def template_matches(self, group: str, template: xr.Dataset, regions: Sequence[Region], salt: str = "") -> bool:
        """Whether ``group`` exists with the same template (so its records may be trusted)."""
        if not self.has_group(group):
            return False
        found = self.group(group).attrs.get("fmri2img_template")
        return found == template_fingerprint(template, regions, salt)

    def ensure_template(
        self, group: str, template: xr.Dataset, regions: Sequence[Region], *,
        attrs: Mapping[str, Any] | None = None, overwrite: bool = False, salt: str = "",
    ) -> list[Region]:
        """Write the template unless an identical one exists; return the regions still to do."""
        if overwrite or not self.template_matches(group, template, regions, salt):
            self.write_template(group, template, regions, attrs=attrs, salt=salt)
            return list(regions)
        if attrs:
            self.group(group, mode="a").attrs.update(dict(attrs))
        done = self.done_regions(group)
        todo = [r for r in regions if r.index not in done]
        logger.info("%s: %d of %d regions already done, %d to do", group, len(done), len(regions), len(todo))
        return todo

    def extend_template(self, group: str, dim: str, new_values: np.ndarray, step: int, prefix: str) -> list[Region]:
        """Append ``new_values`` to the coordinate ``dim`` of an existing group.

        Every array with dimension ``dim`` is resized (metadata only).  Finished work is never
        touched: the existing regions keep their bounds and their records, and the new values
        get new regions (the first one ends at the next multiple of ``step``, so regions stay
        aligned with chunks; it shares the old partial chunk but only its own rows change).
        The region list in the group's attributes is written last: it is what makes the new
        regions exist, so an extension cut short is redone from the same state by the next run.

        Returns
        -------
        list of Region
            The full new region list.
        """
        g = self.group(group, mode="a")
        old_regions = self.regions(group)
        old_size = old_regions[-1].stop if old_regions else 0
        new_values = np.asarray(new_values, dtype=g[dim].dtype)
        size = old_size + len(new_values)
        for name in g.array_keys():
            arr = g[name]
            dims = tuple(arr.metadata.dimension_names or ())
            if dim in dims:
                shape = list(arr.shape)
                shape[dims.index(dim)] = size
                arr.resize(tuple(shape))
        coord = g[dim]  # reopen: the resized metadata
        coord[old_size:] = new_values
        regions = list(old_regions) + _appended_regions(dim, old_size, size, step, prefix, len(old_regions))
        progress = self._progress_array(group, mode="r+")
        if progress.shape[0] < len(regions):
            progress.resize((len(regions),))  # new records are 0; the old ones are kept as they are
        extended = "extended-" + hashlib.sha256(np.asarray(coord[:]).tobytes()).hexdigest()[:16]
        g.attrs.update({"fmri2img_regions": json.dumps(_regions_to_json(regions)), "fmri2img_template": extended})
        logger.info("%s extended by %d along %s (%d finished regions untouched)", group, len(new_values), dim,
                    len(self.done_regions(group)))
        return regions

    # -- regions -------------------------------------------------------------------
    def write_region(
        self, group: str, region: Region, data: Mapping[str, np.ndarray], *, mark_done: bool = True
    ) -> int:
        """Write the variables of one region, then (optionally) its completion record.

        Parameters
        ----------
        group : str
            The group whose template was written with this region.
        region : Region
            Which slab to write.
        data : mapping of str to ndarray
            For each data variable, the values of the slab.  Their shape along
            ``region.dim`` must be ``region.stop - region.start`` and the full
            extent of every other dimension.

        Returns
        -------
        int
            Bytes written (uncompressed).
        """
        g = self.group(group, mode="r+", metadata_unchanged=True)  # chunks only
        nbytes = 0
        for name, values in data.items():
            try:
                arr = g[name].with_config({"write_empty_chunks": True})  # a missing chunk is then a fault
            except KeyError:
                raise StoreError(f"{group} has no variable {name!r}; it has {sorted(g.array_keys())}") from None
            dims = tuple(arr.metadata.dimension_names or ())
            if region.dim not in dims:
                raise StoreError(f"{group}/{name} has dims {dims}, none of them the region dim {region.dim!r}")
            axis = dims.index(region.dim)
            expected = list(arr.shape)
            expected[axis] = region.stop - region.start
            values = np.asarray(values)
            if tuple(values.shape) != tuple(expected):
                raise StoreError(
                    f"region {region.label} of {group}/{name}: values have shape {values.shape}, "
                    f"the template expects {tuple(expected)}"
                )
            selection = [slice(None)] * arr.ndim
            selection[axis] = region.slice
            try:
                arr[tuple(selection)] = values.astype(arr.dtype, copy=False)
            except Exception as exc:  # re-raise with the region named (xarray-beam style)
                raise type(exc)(f"writing region {region.label} of {group}/{name} failed: {exc}") from exc
            nbytes += values.nbytes
        if mark_done:
            self.mark_done(group, region)
        return nbytes

    def mark_done(self, group: str, region: Region) -> None:
        """Write the completion record of ``region`` (after its data is written)."""
        progress = self._progress_array(group, mode="r+")
        progress[region.index] = 1

    def done_regions(self, group: str) -> set[int]:
        """Indices of the regions of ``group`` whose completion record exists."""
        try:
            progress = self._progress_array(group, mode="r")
        except StoreError:
            return set()
        return set(np.flatnonzero(progress[:]).tolist())

    def regions(self, group: str) -> list[Region]:
        """The region list recorded with the template of ``group``."""
        raw = self.group(group).attrs.get("fmri2img_regions")
        return _regions_from_json(json.loads(raw)) if raw else []

    def is_complete(self, group: str) -> bool:
        if not self.has_group(group):
            return False
        regions = self.regions(group)
        return bool(regions) and len(self.done_regions(group)) == len(regions)

    def progress(self, group: str) -> tuple[int, int]:
        """``(done, total)`` regions of ``group`` (``(0, 0)`` when absent)."""
        if not self.has_group(group):
            return (0, 0)
        return (len(self.done_regions(group)), len(self.regions(group)))

    def _progress_path(self, group: str) -> str:
        return f"{PROGRESS_GROUP}/{group}"

    def _progress_array(self, group: str, mode: str = "a") -> zarr.Array:
        try:
            return zarr.open_array(
                self.zarr_store(read_only=(mode == "r")), path=self._progress_path(group), mode=mode, zarr_format=3
            )
        except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError) as exc:
            raise StoreError(f"no completion records for {group}: write its template first") from exc

    def _reset_progress(self, group: str, n_regions: int) -> None:
        _create_progress(self.zarr_store(), self._progress_path(group), n_regions)

    def delete_group(self, group: str) -> None:
        """Delete ``group`` (every array and sub-group under it) and its completion records, if present."""
        if not self.has_group(group):
            return
        self.unconsolidate()
        root = zarr.open_group(self.zarr_store(), mode="a", zarr_format=3)
        for path in (group, self._progress_path(group)):
            try:
                del root[path]
            except KeyError:
                continue
        logger.info("deleted %s from %s", group, self.describe())

    def list_groups(self, prefix: str = "") -> list[str]:
        """Paths of every group holding arrays under ``prefix`` (records excluded)."""
        try:
            root = zarr.open_group(self.zarr_store(read_only=True), mode="r", zarr_format=3, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return []
        out = []
        for path, node in root.members(max_depth=None):
            if path.startswith(PROGRESS_GROUP) or not isinstance(node, zarr.Group):
                continue
            if path.startswith(prefix) and any(True for _ in node.array_keys()):
                out.append(path)
        return sorted(out)


    # -- consolidated metadata -------------------------------------------------------
    def consolidate(self) -> bool:
        """Write the store's consolidated metadata (the root ``zarr.json``) so that readers open it quietly.

        ``xarray.open_zarr(url, group=...)`` looks for consolidated metadata at the store's root
        and warns when there is none.  fmri2img keeps it correct by dropping it before any
        metadata write (:meth:`unconsolidate`: templates, extensions, attributes, groups opened
        for writing) and writing it again when a writing command ends (``lock.held``), so it is
        either absent or describes the store as it is.  The store's own bookkeeping (completion
        records, the lock, the run log) is left out.  fmri2img itself never reads it.

        Returns
        -------
        bool
            Whether it was written (a failure is logged, never raised: readers then only warn).
        """
        try:
            sync(consolidated.consolidate(self.zarr_store(), NOT_CONSOLIDATED))
        except Exception as exc:  # noqa: BLE001 - a missing convenience for readers must not fail a run
            logger.warning("could not consolidate the metadata of %s (%s: %s); readers will open it with a "
                           "warning", self.describe(), type(exc).__name__, exc)
            return False
        return True

    def is_consolidated(self) -> bool:
        """Whether the root holds consolidated metadata now (one small read)."""
        root = zarr.open_group(self.zarr_store(read_only=True), mode="r", zarr_format=3, use_consolidated=False)
        return root.metadata.consolidated_metadata is not None

    def unconsolidate(self) -> None:
        """Drop the store's consolidated metadata, if any (one small read; a write only when present)."""
        sync(consolidated.unconsolidate(self.zarr_store()))


#: top-level groups left out of the consolidated metadata: bookkeeping that changes on its own
NOT_CONSOLIDATED = (PROGRESS_GROUP, "_lock", "_runlog")


def _appended_regions(dim: str, start: int, stop: int, step: int, prefix: str, first_index: int) -> list[Region]:
    """Regions covering ``[start, stop)``: up to the next multiple of ``step``, then every ``step``."""
    bounds, at = [], start
    while at < stop:
        end = min((at // step + 1) * step, stop)
        bounds.append((at, end))
        at = end
    return [Region(first_index + i, dim, a, b, f"{prefix}-{first_index + i:04d}") for i, (a, b) in enumerate(bounds)]


def _create_progress(zstore: Any, path: str, n_regions: int) -> None:
    """The completion records of a group: one uint8 chunk per region, all 0."""
    zarr.create_array(zstore, name=path, shape=(max(n_regions, 1),), chunks=(1,), dtype="uint8", fill_value=0,
                      overwrite=True, dimension_names=("region",), compressors=verify.checksum_codecs())


def _publish(target: Any, staged: Mapping[str, Any], prefixes: Sequence[str]) -> None:
    """Copy the documents of ``staged`` (a memory store's dict) under ``prefixes`` into ``target``.

    Like an in-place ``mode="w"`` write: what was under each prefix is deleted first.  Then
    the parent groups that ``target`` lacks, every document below the prefixes, and last
    the prefixes' own ``zarr.json``, so a group that looks present is complete (its
    template fingerprint is in that last document).  Each step is one concurrent batch.
    """
    heads = [f"{p}/zarr.json" for p in prefixes]
    below = [k for k in staged if k not in heads and any(k.startswith(f"{p}/") for p in prefixes)]
    parents = [k for k in staged if k not in heads and k not in below]

    async def batch(coros) -> list:
        out = await asyncio.gather(*coros, return_exceptions=True)  # every request ends before we raise
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return out

    async def run() -> None:
        await batch(target.delete_dir(p) for p in prefixes)
        found = await batch(target.exists(k) for k in parents)
        missing = [k for k, ok in zip(parents, found) if not ok]
        await batch(target.set(k, staged[k]) for k in missing + below)
        await batch(target.set(k, staged[k]) for k in heads)

    sync(run())


def _zarr_chunks(var: xr.DataArray) -> tuple[int, ...]:
    if var.encoding.get("chunks"):
        return tuple(var.encoding["chunks"])
    if var.chunks is None:
        return tuple(var.shape)
    return tuple(c[0] if c else 0 for c in var.chunks)


def _regions_to_json(regions: Iterable[Region]) -> list[list]:
    return [[r.index, r.dim, r.start, r.stop, r.label] for r in regions]


def _regions_from_json(raw: list[list]) -> list[Region]:
    return [Region(int(i), str(d), int(a), int(b), str(lab)) for i, d, a, b, lab in raw]


def template_fingerprint(template: xr.Dataset, regions: Sequence[Region], salt: str = "") -> str:
    """A hash of everything that makes two templates interchangeable.

    Variable names, dims, shapes, dtypes, chunks, the values of the coordinates
    and the region list.  Attributes are excluded: they may be refreshed without
    invalidating finished regions.
    """
    h = hashlib.sha256()
    for name in sorted(template.variables):
        var = template.variables[name]
        h.update(repr((name, var.dims, var.shape, str(var.dtype))).encode())
        if name in template.data_vars:
            h.update(repr(_zarr_chunks(template[name])).encode())
        elif var.size < 10_000_000:
            values = np.asarray(var.values)
            h.update(values.astype(str).tobytes() if values.dtype.kind in "OUS" else values.tobytes())
    h.update(json.dumps(_regions_to_json(regions)).encode())
    h.update(salt.encode())
    return h.hexdigest()[:16]
