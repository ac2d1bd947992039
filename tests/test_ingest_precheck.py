"""A refused ingest leaves the store byte for byte as it was (issue 23, point 2).

Subject 2 is ingested into a store that holds subject 1 from sources whose subject-2 betas are
float64, strings, truncated, missing or of another trial count, or whose ROI, stimuli or
captions file is malformed. Each is refused with the reader's clear error, and every file of
the existing store (templates, completion records, chunks) is unchanged, with no file added.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

import h5py
import nibabel as nib
import numpy as np
import pytest

from fmri2img.pipeline.ingest.nsd import IngestError, ingest
from fmri2img.storage import nsd
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)

BETAS_DIR = "nsddata_betas/ppdata/subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
CAPTIONS = "COCO_73k_annots_curated.npy"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256), directories included as entries."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@pytest.fixture(scope="module")
def subject1_store(mini_nsd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("precheck") / "store.zarr"
    ingest(Store(str(folder)), Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    return folder


def _betas(root: Path, session: int, ext: str) -> Path:
    return root / BETAS_DIR / f"betas_session{session:02d}.{ext}"


def _nifti_only(root: Path, session: int) -> Path:
    _betas(root, session, "hdf5").unlink()
    return _betas(root, session, "nii.gz")


def _float64_nifti(root: Path) -> None:
    path = _nifti_only(root, 2)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float64), img.affine), path)


def _float64_hdf5(root: Path) -> None:
    path = _betas(root, 3, "hdf5")
    with h5py.File(path, "r") as f:
        data = f["betas"][:]
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=data.astype(np.float64))


def _strings_hdf5(root: Path) -> None:
    path = _betas(root, 2, "hdf5")
    with h5py.File(path, "r") as f:
        shape = f["betas"].shape
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=np.full(shape, b"1.5", dtype="S3"))


def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _fewer_trials(root: Path) -> None:
    path = _nifti_only(root, 4)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :-3], img.affine), path)


def _missing_session(root: Path) -> None:
    _nifti_only(root, 3).unlink()


def _roi_other_grid(root: Path) -> None:
    path = root / "nsddata/ppdata/subj02/func1pt8mm/roi/prf-visualrois.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.pad(np.asarray(img.dataobj), ((0, 1), (0, 0), (0, 0))), img.affine), path)


def _stimuli_float(root: Path) -> None:
    path = root / STIMULI
    with h5py.File(path, "r") as f:
        data = f["imgBrick"][:]
    with h5py.File(path, "w") as f:
        f.create_dataset("imgBrick", data=data.astype(np.float32))


def _stimuli_too_few(root: Path) -> None:
    path = root / STIMULI
    with h5py.File(path, "r") as f:
        data = f["imgBrick"][:10]
    with h5py.File(path, "w") as f:
        f.create_dataset("imgBrick", data=data)


def _captions_numbers(root: Path) -> None:
    np.save(root / CAPTIONS, np.zeros((200, 5), dtype=np.int64))


def _captions_three(root: Path) -> None:
    np.save(root / CAPTIONS, np.full((200, 3), "a photo", dtype="<U20"))


#: case → (how the source is damaged, the error class, words of its message)
CASES: dict[str, tuple[Callable[[Path], None], type, str]] = {
    "betas-float64-nifti": (_float64_nifti, nsd.NSDFormatError, r"betas_session02.nii.gz holds float64 betas.*"
                                                                r"--betas-scale"),
    "betas-float64-hdf5": (_float64_hdf5, nsd.NSDFormatError, r"betas_session03.hdf5 holds float64 betas"),
    "betas-strings": (_strings_hdf5, nsd.NSDFormatError, r"betas_session02.hdf5 holds \|S3 values, not numbers"),
    "betas-truncated-nifti": (lambda r: _truncate(_nifti_only(r, 2)), nsd.NSDFormatError,
                              r"betas_session02.nii.gz at .* truncated or corrupt"),
    "betas-truncated-nifti-tail": (lambda r: _truncate(_nifti_only(r, 4), 0.98), nsd.NSDFormatError,
                                   r"betas_session04.nii.gz at .* truncated.*gzip trailer"),
    "betas-truncated-hdf5": (lambda r: _truncate(_betas(r, 3, "hdf5")), nsd.NSDFormatError,
                             r"betas_session03.hdf5 at .* truncated or corrupt"),
    "betas-fewer-trials": (_fewer_trials, nsd.NSDFormatError, r"betas_session04.nii.gz holds 37 trials.*design has 40"),
    "betas-missing": (_missing_session, nsd.NSDFileMissing, r"betas_session03.nii.gz \(subject 2, session 3\) not "
                                                            r"found"),
    "roi-other-grid": (_roi_other_grid, IngestError,
                       r"prf-visualrois.nii.gz has \d+×\d+×\d+ voxels but the nsdgeneral mask.*same space"),
    "stimuli-float": (_stimuli_float, nsd.NSDFormatError, r"imgBrick.*float32.*expected uint8"),
    "stimuli-too-few": (_stimuli_too_few, nsd.NSDFormatError, r"nsd_stimuli.hdf5 holds 10 images"),
    "stimuli-truncated": (lambda r: _truncate(r / STIMULI), nsd.NSDFormatError, r"nsd_stimuli.hdf5 at .* truncated"),
    "captions-numbers": (_captions_numbers, nsd.NSDFormatError, r"COCO_73k_annots_curated.npy holds a int64 array"),
    "captions-three": (_captions_three, IngestError, r"holds 3 captions per image; expected 5"),
    "captions-truncated": (lambda r: _truncate(r / CAPTIONS, 0.7), nsd.NSDFormatError,
                           r"COCO_73k_annots_curated.npy at .* truncated"),
    "captions-missing": (lambda r: (r / CAPTIONS).unlink(), IngestError, r"captions file not found"),
}


def damaged_source(mini_nsd: Path, tmp_path: Path, case: str) -> Path:
    root = tmp_path / "nsd"
    shutil.copytree(mini_nsd, root)
    CASES[case][0](root)
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_ingest_leaves_the_store_byte_for_byte(mini_nsd, subject1_store, tmp_path, case):
    store_dir = tmp_path / "store.zarr"
    shutil.copytree(subject1_store, store_dir)
    before = snapshot(store_dir)
    root = damaged_source(mini_nsd, tmp_path, case)
    _, cls, words = CASES[case]
    with pytest.raises(cls, match=words):
        ingest(Store(str(store_dir)), Source(str(root)), 2, SESSIONS, progress=False)
    assert snapshot(store_dir) == before


def test_the_same_sources_undamaged_ingest(mini_nsd, subject1_store, tmp_path):
    """The damage is what is refused: the undamaged copy ingests subject 2 and changes the store."""
    store_dir = tmp_path / "store.zarr"
    shutil.copytree(subject1_store, store_dir)
    before = snapshot(store_dir)
    ingest(Store(str(store_dir)), Source(str(mini_nsd)), 2, SESSIONS, progress=False)
    assert snapshot(store_dir) != before


def test_float_betas_with_a_scale_pass_the_check(mini_nsd, tmp_path):
    root = damaged_source(mini_nsd, tmp_path, "betas-float64-nifti")
    summary = ingest(Store(str(tmp_path / "s.zarr")), Source(str(root)), 2, SESSIONS, betas_scale=300.0,
                     stimuli=False, progress=False)
    assert summary["sessions_written"] == len(SESSIONS)


def test_header_check_reports_what_the_header_says(mini_nsd, tmp_path):
    import fsspec

    from fmri2img.storage.nsd import headers

    root = damaged_source(mini_nsd, tmp_path, "betas-float64-nifti")
    shape = nib.load(_betas(root, 2, "nii.gz")).shape
    fs = fsspec.filesystem("file")
    header = headers.check_betas_file(fs, nsd.NSDLayout(str(root)), 2, 2, shape[:3], shape[3], scale=1.0)
    assert header.shape == shape and header.dtype == np.float64 and header.fmt == "nii.gz"
    with pytest.raises(nsd.NSDFormatError, match="holds float64 betas"):
        headers.check_betas_file(fs, nsd.NSDLayout(str(root)), 2, 2, shape[:3], shape[3])
    hdf5 = headers.check_betas_file(fs, nsd.NSDLayout(str(root)), 2, 1, shape[:3], shape[3])
    assert hdf5.fmt == "hdf5" and hdf5.dtype == np.int16 and hdf5.shape == shape


@pytest.mark.slow
@pytest.mark.parametrize("case", ["betas-float64-nifti", "captions-numbers"])
def test_refused_cli_ingest_leaves_the_store_byte_for_byte(mini_nsd, subject1_store, tmp_path, capsys, case):
    """The whole command (identity check, the lock taken and released, the runner) changes nothing either."""
    from fmri2img.cli.main import main

    store_dir = tmp_path / "store.zarr"
    shutil.copytree(subject1_store, store_dir)
    from fmri2img.storage import identity

    identity.claim(Store(str(store_dir)))  # as a run would have marked it
    before = snapshot(store_dir)
    root = damaged_source(mini_nsd, tmp_path, case)
    assert main(["ingest", "--source", str(root), "--store", str(store_dir), "--subject", "2", "--sessions", "1-4",
                 "--cluster", "local", "--workers", "1", "--cluster-option", "processes=false", "--no-progress"]) == 2
    assert capsys.readouterr().err.rstrip().splitlines()[-1].startswith("error: ")
    assert snapshot(store_dir) == before
