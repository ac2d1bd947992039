"""The command's bad-input errors through a real LocalCluster, with worker processes and in-process
(issue 23, point 1): one ``error:`` line at the default verbosity, whether the input is refused by
the driver's checks or by a task on a worker; worker records go to the log, ``-v`` shows them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fmri2img.cli.main import main
from tests.minifixtures import mini_nsd  # noqa: F401  (mini_nsd is a fixture)

BETAS_DIR = "nsddata_betas/ppdata/subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR"
#: lines the command prints on stderr besides the error (with --no-progress)
INFO_LINES = ("Dask dashboard: ", "stage ")


def _nifti_only(root: Path, session: int) -> Path:
    (root / BETAS_DIR / f"betas_session{session:02d}.hdf5").unlink()
    return root / BETAS_DIR / f"betas_session{session:02d}.nii.gz"


def _missing_session(root: Path) -> None:  # the commonest mistake: an interrupted download
    _nifti_only(root, 3).unlink()


def _nan_betas(root: Path) -> None:  # found by the task that reads the file, on a worker
    for session in (1, 2, 3, 4):
        path = _nifti_only(root, session)
        img = nib.load(path)
        data = np.asarray(img.dataobj).astype(np.float32)
        if session == 2:
            data[..., 5] = np.nan  # one trial, every voxel
        nib.save(nib.Nifti1Image(data, img.affine), path)


def _corrupt_gzip_body(root: Path) -> None:  # header and trailer intact: found by the task, on a worker
    path = _nifti_only(root, 3)
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 2048] = bytes(2048)
    path.write_bytes(bytes(raw))


def _float64_betas(root: Path) -> None:
    path = _nifti_only(root, 2)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float64), img.affine), path)


def _bad_captions(root: Path) -> None:
    np.save(root / "COCO_73k_annots_curated.npy", np.zeros((200, 5), dtype=np.int64))


#: case → (damage, extra arguments, words of the error line, raised on a worker)
CASES = {
    "missing-session": (_missing_session, [], "betas_session03.nii.gz (subject 2, session 3) not found", False),
    "nan-betas": (_nan_betas, ["--betas-scale", "300"], "NaN/inf betas in", True),
    "corrupt-gzip": (_corrupt_gzip_body, [], "betas_session03.nii.gz at", True),
    "float64-betas": (_float64_betas, [], "betas_session02.nii.gz holds float64 betas", False),
    "bad-captions": (_bad_captions, [], "COCO_73k_annots_curated.npy holds a int64 array", False),
}


def _damaged(mini_nsd: Path, tmp_path: Path, case: str) -> Path:
    root = tmp_path / "nsd"
    shutil.copytree(mini_nsd, root)
    CASES[case][0](root)
    return root


def _ingest(root: Path, store: Path, processes: bool, *extra: str) -> int:
    return main([*[a for a in extra if a.startswith("-v")], "ingest", "--source", str(root), "--store", str(store),
                 "--subject", "2", "--sessions", "1-4", "--cluster", "local", "--workers", "1",
                 "--cluster-option", f"processes={str(processes).lower()}", "--no-progress",
                 *[a for a in extra if not a.startswith("-v")]])


@pytest.mark.slow
@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "in-process"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line(mini_nsd, tmp_path, capfd, case, processes):
    root = _damaged(mini_nsd, tmp_path, case)
    _, extra, words, on_worker = CASES[case]
    code = _ingest(root, tmp_path / "store.zarr", processes, *extra)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(INFO_LINES)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "Traceback" not in err and "distributed" not in err and "Exception:" not in err
    log = tmp_path / "outputs" / "cluster-logs" / "dask.log"
    assert on_worker == ("Compute Failed" in (log.read_text() if log.exists() else ""))  # where it was raised


@pytest.mark.slow
def test_worker_records_go_to_the_log_and_v_shows_them(mini_nsd, tmp_path, capfd):
    root = _damaged(mini_nsd, tmp_path, "corrupt-gzip")
    store = tmp_path / "run" / "store.zarr"
    assert _ingest(root, store, True) == 2
    assert "Compute Failed" not in capfd.readouterr().err
    log = tmp_path / "run" / "outputs" / "cluster-logs" / "dask.log"
    assert "Compute Failed" in log.read_text() and "ERROR distributed.worker" in log.read_text()
    assert _ingest(root, tmp_path / "run2" / "store.zarr", True, "-v") == 2
    err = capfd.readouterr().err
    assert "Compute Failed" in err and err.rstrip().splitlines()[-1].startswith("error: betas_session03.nii.gz")
