"""NSD time-series reader: against nibabel's full load, by few bytes, in bounded memory, on S3, and bad input."""

from __future__ import annotations

import gzip
import pickle
import tracemalloc

import fsspec
import nibabel as nib
import numpy as np
import pytest

from fmri2img.storage.nsd import NSDError, NSDFileMissing, NSDFormatError
from fmri2img.storage.nsd.timeseries import (MAX_TRAILING_VOLUMES, NSDDesignError, NSDRunMismatchError,
                                             NSDVoxelError, TimeseriesLayout, design_trials, list_runs,
                                             list_sessions, read_design, read_header, read_run, read_session_runs)
from tests.cloud_helpers import s3_options, upload_dir

TR = 4.0 / 3.0
SHAPE = (9, 8, 7)


def nifti_bytes(data: np.ndarray, tr: float = TR, *, gz: bool = True, slope_inter: tuple | None = None,
                dtype: str | None = None) -> bytes:
    """A NIfTI-1 written by nibabel (the independent writer), gzipped like NSD's files."""
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0]))
    if dtype is not None:
        img.header.set_data_dtype(np.dtype(dtype))
    if data.ndim == 4:
        img.header.set_zooms((1.8, 1.8, 1.8, tr))
    img.header.set_xyzt_units("mm", "sec")
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def run_data(seed: int, n_volumes: int = 12, shape: tuple = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(500, 1500, (*shape, n_volumes)).astype(np.int16)


def design(n_rows: int, trials: dict[int, int]) -> bytes:
    rows = np.zeros(n_rows, np.int64)
    for row, image in trials.items():
        if row < n_rows:
            rows[row] = image
    return "".join(f"{v}\n" for v in rows).encode()


def put(fs, path: str, data: bytes) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def write_session(fs, layout: TimeseriesLayout, session: int = 1, n_runs: int = 3, n_volumes: int = 12,
                  rows: int | None = None, rest: bool = False) -> None:
    """``n_runs`` runs of ``n_volumes`` volumes, designs of ``rows`` rows (one fewer by default)."""
    rows = n_volumes - MAX_TRAILING_VOLUMES if rows is None else rows
    for run in range(1, n_runs + 1):
        put(fs, layout.timeseries(1, session, run), nifti_bytes(run_data(10 * session + run, n_volumes)))
        empty = rest and run in (1, n_runs)
        put(fs, layout.design(1, session, run), design(rows, {} if empty else {0: 7 + run, 3: 100, 6: 73000}))


@pytest.fixture(params=["file", "memory"])
def fs_layout(request, tmp_path):
    if request.param == "file":
        yield fsspec.filesystem("file"), TimeseriesLayout(str(tmp_path / "nsd"))
        return
    fs = fsspec.filesystem("memory")
    root = f"/ts-{request.node.name.replace('[', '-').replace(']', '')}"
    yield fs, TimeseriesLayout(root)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def mask_of(seed: int = 0, shape: tuple = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) > 0.4


# --------------------------------------------------------------------------- layout and listing


def test_layout_paths_match_the_bucket():
    lay = TimeseriesLayout("natural-scenes-dataset")
    assert lay.timeseries(1, 3, 12) == ("natural-scenes-dataset/nsddata_timeseries/ppdata/subj01/func1pt8mm/"
                                        "timeseries/timeseries_session03_run12.nii.gz")
    assert lay.design(8, 40, 1) == ("natural-scenes-dataset/nsddata_timeseries/ppdata/subj08/func1pt8mm/design/"
                                    "design_session40_run01.tsv")
    assert lay.brainmask(2) == "natural-scenes-dataset/nsddata/ppdata/subj02/func1pt8mm/brainmask.nii.gz"
    assert TimeseriesLayout("", "func1mm").timeseries(1, 1, 1).startswith("nsddata_timeseries/ppdata/subj01/func1mm/")
    with pytest.raises(NSDError, match="not an NSD preparation"):
        TimeseriesLayout("", "func2mm")
    with pytest.raises(NSDError, match="not a run number"):
        lay.timeseries(1, 1, 0)


def test_list_sessions_and_runs(fs_layout):
    fs, lay = fs_layout
    write_session(fs, lay, session=1, n_runs=3)
    write_session(fs, lay, session=4, n_runs=2)
    assert list_sessions(fs, lay, 1) == [1, 4]
    assert list_runs(fs, lay, 1, 4) == [1, 2]
    assert list_sessions(fs, lay, 2) == []


def test_design_rows_and_trials(fs_layout):
    fs, lay = fs_layout
    put(fs, lay.design(1, 1, 1), b"0\r\n12\r\n0\r\n0\r\n73000\r\n\r\n")
    rows = read_design(fs, lay.design(1, 1, 1))
    np.testing.assert_array_equal(rows, [0, 12, 0, 0, 73000])
    onsets, images = design_trials(rows)
    np.testing.assert_array_equal(onsets, [1, 4])
    np.testing.assert_array_equal(images, [11, 72999])


# --------------------------------------------------------------------------- reading vs nibabel


@pytest.mark.parametrize("kind", ["int16", "scaled", "float32", "big-endian", "plain"])
def test_read_run_equals_nibabel_full_load(fs_layout, kind):
    fs, lay = fs_layout
    data = run_data(1)
    opts = dict(int16={}, scaled=dict(slope_inter=(2.0, -5.0)), big_endian={},
                plain=dict(gz=False)).get(kind.replace("-", "_"), {})
    if kind == "float32":
        data = data.astype(np.float32) / 7.0
    if kind == "big-endian":
        opts = dict(dtype=">i2")
    path = lay.timeseries(1, 1, 1)
    put(fs, path, nifti_bytes(data, **opts))
    mask = mask_of()
    with fs.open(path, "rb") as f:
        raw = f.read()
    reference = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    expected = reference.get_fdata()[mask].T
    got = read_run(fs, path, mask)
    assert got.dtype == np.float32 and got.shape == (data.shape[3], mask.sum())
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_voxel_blocks_and_kept_volumes_are_slices_of_the_whole(fs_layout):
    fs, lay = fs_layout
    path = lay.timeseries(1, 1, 1)
    put(fs, path, nifti_bytes(run_data(2)))
    mask = mask_of(1)
    whole = read_run(fs, path, mask)
    blocks = [read_run(fs, path, mask, block=slice(a, a + 50)) for a in range(0, int(mask.sum()), 50)]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    picks = np.array([5, 0, 17])
    np.testing.assert_array_equal(read_run(fs, path, mask, block=picks, n_volumes=11), whole[:11, picks])


def test_header_from_the_first_bytes_only(tmp_path):
    """A multi-MB run's header costs a few kB of the file, whatever its size."""
    data = np.random.default_rng(3).integers(-30000, 30000, (40, 40, 30, 40)).astype(np.int16)
    path = tmp_path / "run.nii.gz"
    path.write_bytes(nifti_bytes(data))
    seen = []

    class Counting(fsspec.implementations.local.LocalFileSystem):
        def _open(self, *args, **kwargs):
            f = super()._open(*args, **kwargs)
            read = f.read
            f.read = lambda n=-1: seen.append(len(out := read(n))) or out
            return f

    header = read_header(Counting(skip_instance_cache=True), str(path))
    assert header.shape == (40, 40, 30) and header.n_volumes == 40 and header.dtype == np.int16
    assert header.tr == pytest.approx(TR) and header.data_offset == 352
    np.testing.assert_allclose(header.affine, np.diag([1.8, 1.8, 1.8, 1.0]))
    assert sum(seen) <= 16 * 1024 < path.stat().st_size // 100


def test_streaming_memory_is_one_volume_plus_the_output(tmp_path):
    data = np.random.default_rng(4).integers(0, 4000, (48, 48, 40, 60)).astype(np.int16)  # 11 MB of int16
    path = tmp_path / "run.nii.gz"
    path.write_bytes(nifti_bytes(data))
    mask = np.zeros(data.shape[:3], bool)
    mask[10:20, 10:20, 5:15] = True  # 1000 voxels: output 240 kB
    fs = fsspec.filesystem("file")
    tracemalloc.start()
    try:
        got = read_run(fs, str(path), mask)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, data[mask].T.astype(np.float32))
    assert peak < data.nbytes / 4, f"peak {peak / 1e6:.1f} MB for an {data.nbytes / 1e6:.1f} MB run"


def test_s3_equals_local(tmp_path, s3_endpoint):
    lay_local = TimeseriesLayout(str(tmp_path / "nsd"))
    local = fsspec.filesystem("file")
    write_session(local, lay_local, n_runs=2)
    opts = s3_options(s3_endpoint)
    upload_dir(tmp_path / "nsd", "s3://nsd-timeseries/root", opts)
    s3 = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    lay_s3 = TimeseriesLayout("nsd-timeseries/root")
    remote, here = read_session_runs(s3, lay_s3, 1, 1), read_session_runs(local, lay_local, 1, 1)
    assert [r.header.n_volumes for r in remote.runs] == [r.header.n_volumes for r in here.runs]
    for a, b in zip(remote.runs, here.runs):
        np.testing.assert_array_equal(a.design, b.design)
        mask = mask_of(a.run)
        np.testing.assert_array_equal(read_run(s3, a.path, mask, n_volumes=a.n_rows),
                                      read_run(local, b.path, mask, n_volumes=b.n_rows))


# --------------------------------------------------------------------------- a session


def test_session_runs_and_the_trailing_volume(fs_layout):
    fs, lay = fs_layout
    write_session(fs, lay, n_runs=3, n_volumes=12)
    runs = read_session_runs(fs, lay, 1, 1, mask_shape=SHAPE)
    assert [r.run for r in runs.runs] == [1, 2, 3] and runs.shape == SHAPE
    assert runs.tr == pytest.approx(TR) and runs.n_trials == 9
    assert [r.n_rows for r in runs.runs] == [11, 11, 11]
    assert read_run(fs, runs.runs[0].path, mask_of(), n_volumes=runs.runs[0].n_rows).shape[0] == 11


def test_fourteen_run_session_has_two_rest_runs(fs_layout):
    fs, lay = fs_layout
    write_session(fs, lay, n_runs=14, n_volumes=6, rest=True)
    runs = read_session_runs(fs, lay, 1, 1)
    assert [r.run for r in runs.runs if r.rest] == [1, 14]
    assert [r.run for r in runs.task_runs] == list(range(2, 14))


# --------------------------------------------------------------------------- bad input


def bad_session(fs, lay, case: str) -> None:
    write_session(fs, lay, n_runs=3, n_volumes=12)
    if case == "lengths":
        put(fs, lay.timeseries(1, 1, 2), nifti_bytes(run_data(7, 13)))
        put(fs, lay.design(1, 1, 2), design(12, {0: 1}))
    elif case == "trs":
        put(fs, lay.timeseries(1, 1, 3), nifti_bytes(run_data(7), tr=1.0))
    elif case == "grids":
        put(fs, lay.timeseries(1, 1, 3), nifti_bytes(run_data(7, shape=(9, 8, 6))))
    elif case == "design too short":
        put(fs, lay.design(1, 1, 2), design(12 - MAX_TRAILING_VOLUMES - 1, {0: 1}))
    elif case == "design too long":
        put(fs, lay.design(1, 1, 2), design(13, {0: 1}))
    elif case == "no trials":
        put(fs, lay.design(1, 1, 2), design(11, {}))
    elif case == "bad row":
        put(fs, lay.design(1, 1, 2), b"0\n12\nabc\n")
    elif case == "negative row":
        put(fs, lay.design(1, 1, 2), b"0\n-3\n")
    elif case == "missing run":
        fs.rm(lay.timeseries(1, 1, 2))
    elif case == "missing design":
        fs.rm(lay.design(1, 1, 3))
    elif case == "not 4-D":
        put(fs, lay.timeseries(1, 1, 1), nifti_bytes(run_data(7)[..., 0]))
    elif case == "truncated header":
        put(fs, lay.timeseries(1, 1, 1), nifti_bytes(run_data(7))[:60])


BAD_SESSIONS = {
    "lengths": (NSDRunMismatchError, "different lengths"),
    "trs": (NSDRunMismatchError, "different TRs"),
    "grids": (NSDRunMismatchError, "different grids"),
    "design too short": (NSDDesignError, "has 10 rows but timeseries_session01_run02.nii.gz has 12 volumes"),
    "design too long": (NSDDesignError, "has 13 rows"),
    "no trials": (NSDDesignError, "has no trials"),
    "bad row": (NSDDesignError, "line 3 is 'abc'"),
    "negative row": (NSDDesignError, "negative"),
    "missing run": (NSDFileMissing, r"not run\(s\) \[2\]"),
    "missing design": (NSDFileMissing, "design_session01_run03.tsv"),
    "not 4-D": (NSDFormatError, "expected a 4-D"),
    "truncated header": (NSDFormatError, "truncated or corrupt"),
}


@pytest.mark.parametrize("case", list(BAD_SESSIONS))
def test_bad_sessions_raise_one_clear_error(fs_layout, case):
    fs, lay = fs_layout
    bad_session(fs, lay, case)
    cls, match = BAD_SESSIONS[case]
    with pytest.raises(cls, match=match) as err:
        read_session_runs(fs, lay, 1, 1)
    assert_pickles(err.value)


def test_a_missing_session_and_a_rest_like_run_outside_a_fourteen_run_session(fs_layout):
    fs, lay = fs_layout
    with pytest.raises(NSDFileMissing, match="no timeseries_session05_runRR") as err:
        read_session_runs(fs, lay, 1, 5)
    assert_pickles(err.value)
    write_session(fs, lay, n_runs=14, n_volumes=6, rest=True)
    put(fs, lay.design(1, 1, 5), design(5, {}))
    with pytest.raises(NSDDesignError, match="run05.tsv has no trials"):
        read_session_runs(fs, lay, 1, 1)


def test_truncated_data_is_caught_even_past_the_kept_volumes(fs_layout):
    fs, lay = fs_layout
    path = lay.timeseries(1, 1, 1)
    raw = gzip.decompress(nifti_bytes(run_data(5)))
    put(fs, path, gzip.compress(raw[:-100], mtime=0))
    with pytest.raises(NSDFormatError, match="truncated: it ends in volume 12 of 12") as err:
        read_run(fs, path, mask_of(), n_volumes=11)
    assert_pickles(err.value)
    put(fs, path, nifti_bytes(run_data(5))[:-5000])
    with pytest.raises(NSDFormatError, match="truncated or corrupt"):
        read_run(fs, path, mask_of())


def test_mask_of_another_shape(fs_layout):
    fs, lay = fs_layout
    write_session(fs, lay, n_runs=1)
    with pytest.raises(NSDFormatError, match=r"has 9×8×7 voxels but the mask is 9×8×6") as err:
        read_run(fs, lay.timeseries(1, 1, 1), np.ones((9, 8, 6), bool))
    assert_pickles(err.value)
    with pytest.raises(NSDFormatError, match="9×8×6"):
        read_session_runs(fs, lay, 1, 1, mask_shape=(9, 8, 6))


def test_nan_and_constant_voxels_inside_the_mask(fs_layout):
    fs, lay = fs_layout
    path = lay.timeseries(1, 1, 1)
    data = run_data(6).astype(np.float32)
    data[2, 3, 4] = np.nan
    data[1, 1, 1, 4] = np.nan
    put(fs, path, nifti_bytes(data))
    mask = np.ones(SHAPE, bool)
    with pytest.raises(NSDVoxelError, match=r"2 of 504 voxels inside the mask hold NaN.*\[1, 1, 1\], \[2, 3, 4\]") as e:
        read_run(fs, path, mask)
    assert_pickles(e.value)
    assert np.isnan(read_run(fs, path, mask, check_voxels=False)).sum() == 12 + 1
    data = run_data(6)
    data[0, 0, :] = 0
    put(fs, path, nifti_bytes(data))
    with pytest.raises(NSDVoxelError, match=r"7 of 504 voxels inside the mask never change.*\[0, 0, 0\]"):
        read_run(fs, path, mask)
    mask[0, 0, :] = False
    assert read_run(fs, path, mask).shape == (12, 497)


def test_missing_run_file(fs_layout):
    fs, lay = fs_layout
    with pytest.raises(NSDFileMissing, match="timeseries_session02_run03.nii.gz") as err:
        read_header(fs, lay.timeseries(1, 2, 3))
    assert isinstance(err.value, FileNotFoundError)
    assert_pickles(err.value)
    with pytest.raises(NSDFileMissing, match="run time series"):
        read_run(fs, lay.timeseries(1, 2, 3), np.ones(SHAPE, bool))


def assert_pickles(err: Exception) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
