"""mini-NSD generator: determinism, exact NSD layout and formats, split counts, NaN option, decodability."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
from sklearn.linear_model import Ridge

from fmri2img.mininsd.cortex import ECC_EDGES
from fmri2img.mininsd.generate import SOURCES, MiniNSDSpec, generate_mini_nsd
from fmri2img.storage.nsd import (
    ROI_FILES,
    NSDLayout,
    read_captions,
    read_expdesign,
    read_mask,
    read_session_betas,
    read_stimuli,
    split_trials,
)

TINY = dict(side=32, n_images=120, n_shared=12, n_per_subject=60, n_sessions=4, trials_per_session=30,
            volume_shape=(20, 24, 20))
FS = fsspec.filesystem("file")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    spec = MiniNSDSpec(**TINY)
    return root, spec, generate_mini_nsd(root, spec)


@pytest.fixture(scope="module")
def tiny_nan(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_nan")
    spec = MiniNSDSpec(**TINY, nan_voxels=7, subjects=(3,))
    return root, spec, generate_mini_nsd(root, spec)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default (demo-size) dataset with small images."""
    root = tmp_path_factory.mktemp("demo")
    spec = MiniNSDSpec(side=32)
    return root, spec, generate_mini_nsd(root, spec)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def all_betas(root: Path, spec: MiniNSDSpec, subject: int, prefer: str = "hdf5") -> tuple[np.ndarray, np.ndarray]:
    lay = NSDLayout(str(root))
    mask = read_mask(FS, lay.roi(subject, "nsdgeneral"))
    voxels = np.flatnonzero(mask)
    scale = 300 if spec.nan_voxels else "nsd"  # float files (NaN) are × 300 and need their scale named
    betas = np.concatenate([read_session_betas(FS, lay, subject, s, voxels, mask.shape, spec.trials_per_session,
                                               prefer=prefer, scale=scale) for s in range(1, spec.n_sessions + 1)])
    return betas, voxels


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize("field, value, match", [
    ("n_shared", 300, "n_shared=300 must be >= 2 and below n_per_subject=300"),
    ("n_per_subject", 500, "n_per_subject=500 must be <= n_images=480"),
    ("subjects", (1, 9), r"subjects=\(1, 9\) must be distinct subject numbers 1..8"),
    ("trials_per_session", 20, "n_sessions\\*trials_per_session=200 must lie in 420..900"),
    ("side", 8, "side=8 must be in 16..1024"),
    ("volume_shape", (10, 40, 40), "volume_shape=\\(10, 40, 40\\) must be 3 sizes in 16..128"),
    ("noise", -1.0, "noise=-1.0 must be a finite number >= 0"),
    ("nan_voxels", 9999, "nan_voxels=9999 must be in 0..500"),
])
def test_spec_validation(field, value, match):
    with pytest.raises(ValueError, match="MiniNSDSpec: " + match):
        MiniNSDSpec(**{field: value})


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    root, spec, _ = tiny
    generate_mini_nsd(tmp_path / "again", spec)
    first, second = digests(root), digests(tmp_path / "again")
    assert first == second
    assert any(k.endswith(".nii.gz") for k in first) and any(k.endswith(".hdf5") for k in first)
    generate_mini_nsd(tmp_path / "other", MiniNSDSpec(**TINY, seed=1))
    other = digests(tmp_path / "other")
    assert set(other) == set(first)
    changed = [k for k in first if first[k] != other[k]]
    assert any("betas_session01.nii.gz" in k for k in changed) and any("nsd_stimuli" in k for k in changed)


# --------------------------------------------------------------------------- layout and formats


def test_expdesign_fields_and_shapes(tiny):
    root, spec, _ = tiny
    mat = scipy.io.loadmat(NSDLayout(str(root)).expdesign())
    assert mat["masterordering"].shape == (1, spec.n_trials)
    assert mat["subjectim"].shape == (8, spec.n_per_subject)
    assert mat["sharedix"].shape == (1, spec.n_shared)
    stim = mat["stimpattern"]
    assert stim.ndim == 3 and stim.shape[0] == spec.n_sessions
    assert (stim.reshape(spec.n_sessions, -1).sum(1) == spec.trials_per_session).all()
    assert mat["basiccnt"].shape == (3, spec.n_sessions) and mat["basiccnt"].sum() == spec.n_trials
    for row in mat["subjectim"]:
        np.testing.assert_array_equal(row[: spec.n_shared], mat["sharedix"][0])
        assert len(np.unique(row)) == spec.n_per_subject and row.min() >= 1 and row.max() <= spec.n_images


def test_stimuli_captions_and_volumes(tiny):
    root, spec, manifest = tiny
    lay = NSDLayout(str(root))
    with h5py.File(lay.stimuli(), "r") as h5:
        brick = h5["imgBrick"]
        assert brick.dtype == np.uint8 and brick.shape == (spec.n_images, spec.side, spec.side, 3)
        images = brick[:]
    assert len({img.tobytes() for img in images}) == spec.n_images  # all distinct
    caps = np.load(lay.captions(), allow_pickle=False)
    assert caps.shape == (spec.n_images, 5) and caps.dtype.kind == "U"
    n_caps = (caps != "").sum(1)
    assert n_caps.min() >= 3 and (n_caps < 5).any() and (n_caps == 5).any()
    for i, params in enumerate(manifest["images"]):  # captions describe the source photograph
        assert caps[i, 0].startswith(SOURCES[params["source"]][0][0])
        assert ("mirrored" in caps[i, 0]) == params["flip"]
    for subject in spec.subjects:
        shape = tuple(manifest["subjects"][str(subject)]["volume_shape"])
        for name in ROI_FILES:
            img = nib.load(lay.roi(subject, name))
            assert img.shape == shape and img.get_data_dtype() == np.int16
        img = nib.load(lay.betas(subject, 2))
        assert img.shape == (*shape, spec.trials_per_session) and img.get_data_dtype() == np.int16
        np.testing.assert_allclose(img.affine, manifest["subjects"][str(subject)]["affine"])
        with h5py.File(lay.betas(subject, 2, "hdf5"), "r") as h5:
            twin = h5["betas"][:]
        assert twin.dtype == np.int16 and twin.shape == (spec.trials_per_session, *shape[::-1])
        np.testing.assert_array_equal(twin, np.asarray(img.dataobj).transpose(3, 2, 1, 0))
    assert json.loads((root / "mini_nsd.json").read_text()) == json.loads(json.dumps(manifest))


def test_readers_read_mini_nsd(tiny):
    root, spec, _ = tiny
    lay = NSDLayout(str(root))
    ids = np.array([5, 6, 7, 0, 119])
    with h5py.File(lay.stimuli(), "r") as h5:
        np.testing.assert_array_equal(read_stimuli(FS, lay.stimuli(), ids), h5["imgBrick"][:][ids])
    np.testing.assert_array_equal(read_captions(FS, lay.captions(), ids), np.load(lay.captions())[ids])
    h, voxels = all_betas(root, spec, 1, "hdf5")
    n, _ = all_betas(root, spec, 1, "nii.gz")
    np.testing.assert_array_equal(h, n)
    raw = np.asarray(nib.load(lay.betas(1, 1)).dataobj).reshape(-1, spec.trials_per_session)
    np.testing.assert_allclose(h[: spec.trials_per_session], raw[voxels].T / 300.0, rtol=1e-6)
    assert 0.5 < np.abs(h).mean() < 10  # a few percent signal change


def test_train_test_split_counts_and_shared_set(tiny):
    root, spec, manifest = tiny
    design = read_expdesign(FS, NSDLayout(str(root)).expdesign())
    assert design.trials_per_session == spec.trials_per_session and design.n_sessions == spec.n_sessions
    test_ids = []
    for subject in spec.subjects:
        sp = split_trials(design, subject, range(1, spec.n_sessions + 1))
        assert len(sp.test_ids) == spec.n_shared and len(sp.train_ids) == spec.n_per_subject - spec.n_shared
        assert all(len(t) == 3 for t in sp.test_trials)
        assert all(1 <= len(t) <= 3 for t in sp.train_trials)
        counts = manifest["subjects"][str(subject)]
        assert counts["n_train_images"] == len(sp.train_ids) and counts["n_test_images"] == len(sp.test_ids)
        assert counts["n_test_trials"] == sum(map(len, sp.test_trials))
        test_ids.append(sorted(sp.test_ids))
    assert test_ids[0] == test_ids[1] == sorted(design.sharedix - 1)


# --------------------------------------------------------------------------- NaN option


def test_nan_option_plants_nan_in_some_sessions(tiny_nan):
    root, spec, manifest = tiny_nan
    info = manifest["subjects"]["3"]
    lay = NSDLayout(str(root))
    assert len(info["nan_voxels"]) == 7 and 1 <= len(info["nan_sessions"]) < spec.n_sessions
    assert "1" not in manifest["subjects"] and not Path(lay.roi(1, "nsdgeneral")).exists()
    img = nib.load(lay.betas(3, 1))
    assert img.get_data_dtype() == np.float32
    betas, voxels = all_betas(root, spec, 3)
    nan_cols = np.isin(voxels, info["nan_voxels"])
    assert nan_cols.sum() == 7
    for s in range(1, spec.n_sessions + 1):
        block = betas[(s - 1) * spec.trials_per_session: s * spec.trials_per_session]
        if s in info["nan_sessions"]:
            assert np.isnan(block[:, nan_cols]).all()
        else:
            assert np.isfinite(block[:, nan_cols]).all()
        assert np.isfinite(block[:, ~nan_cols]).all()
    np.testing.assert_array_equal(betas, all_betas(root, spec, 3, "nii.gz")[0])


# --------------------------------------------------------------------------- demo size: anatomy and decodability


@pytest.mark.slow
def test_demo_subjects_differ_and_rois_follow_retinotopy(demo):
    root, spec, manifest = demo
    counts = [manifest["subjects"][str(s)]["n_voxels"] for s in spec.subjects]
    assert all(1500 <= c <= 4000 for c in counts) and len(set(counts)) == len(counts)
    assert manifest["subjects"]["1"]["volume_shape"] != manifest["subjects"]["2"]["volume_shape"]
    lay = NSDLayout(str(root))
    with h5py.File(root / "mini_nsd_truth.hdf5", "r") as truth:
        t = {k: truth["subj01"][k][:] for k in ("voxels", "area", "ecc", "rf_x")}
    general = read_mask(FS, lay.roi(1, "nsdgeneral"))
    np.testing.assert_array_equal(np.flatnonzero(general), t["voxels"])
    visual = nib.load(lay.roi(1, "prf-visualrois")).get_fdata().reshape(-1)[t["voxels"]]
    ecc = nib.load(lay.roi(1, "prf-eccrois")).get_fdata().reshape(-1)[t["voxels"]]
    early = t["area"] < 4
    assert set(np.unique(visual[early])) == set(range(1, 8)) and (visual[~early] == 0).all()
    np.testing.assert_array_equal((visual[early] + 1) // 2, np.minimum(t["area"][early] + 1, 4))  # V1, V2, V3, hV4
    np.testing.assert_array_equal(ecc[early], 1 + np.searchsorted(ECC_EDGES, t["ecc"][early], side="right"))
    x = np.unravel_index(t["voxels"], general.shape)[0]
    left = x < (general.shape[0] - 1) / 2
    assert (t["rf_x"][left] > 0).all() and (t["rf_x"][~left] < 0).all()  # contralateral hemifields


def two_way_identification(pred: np.ndarray, true: np.ndarray) -> float:
    corr = np.corrcoef(pred, true)[: len(pred), len(pred):]
    return float(np.mean([(corr[i, i] > np.delete(corr[:, i], i)).mean() for i in range(len(pred))]))


@pytest.mark.slow
def test_demo_is_decodable(demo):
    """Ridge from repeat-averaged train betas to 8×8 RGB pixels identifies test images well above chance."""
    root, spec, _ = demo
    lay = NSDLayout(str(root))
    design = read_expdesign(FS, lay.expdesign())
    rng = np.random.default_rng(0)
    for subject in spec.subjects:
        betas, _ = all_betas(root, spec, subject)
        sp = split_trials(design, subject, range(1, spec.n_sessions + 1))
        x_train = np.stack([betas[t].mean(0) for t in sp.train_trials])
        x_test = np.stack([betas[t].mean(0) for t in sp.test_trials])
        mu, sd = x_train.mean(0), x_train.std(0, ddof=1)
        images = read_stimuli(FS, lay.stimuli(), np.concatenate([sp.train_ids, sp.test_ids])).astype(float)
        pixels = images.reshape(len(images), 8, spec.side // 8, 8, spec.side // 8, 3).mean((2, 4))
        pixels = pixels.reshape(len(images), -1)
        y_train, y_test = pixels[: len(sp.train_ids)], pixels[len(sp.train_ids):]
        model = Ridge(alpha=1e3).fit((x_train - mu) / sd, y_train)
        ident = two_way_identification(model.predict((x_test - mu) / sd), y_test)
        control = Ridge(alpha=1e3).fit((x_train - mu) / sd, rng.permutation(y_train))
        ident_control = two_way_identification(control.predict((x_test - mu) / sd), y_test)
        assert ident > 0.8, (subject, ident)
        assert ident_control < 0.7, (subject, ident_control)


def test_regenerating_replaces_a_previous_mini_nsd(tmp_path):
    generate_mini_nsd(tmp_path, MiniNSDSpec(**TINY))
    keep = tmp_path / "notes.txt"
    keep.write_text("not mini-NSD")
    smaller = MiniNSDSpec(**{**TINY, "n_sessions": 3, "trials_per_session": 40, "subjects": (2,)})
    manifest = generate_mini_nsd(tmp_path, smaller)
    lay = NSDLayout(str(tmp_path))
    assert not Path(lay.betas(2, 4)).exists() and not Path(lay.roi(1, "nsdgeneral")).exists()
    assert Path(lay.betas(2, 3)).exists() and keep.read_text() == "not mini-NSD"
    assert not any("session04" in f or "subj01" in f for f in manifest["files"])


def test_captions_use_only_the_tiny_tokenizers_words(demo):
    """models/tokenizer.py keeps its own word list (models never import the generator): it must cover mini-NSD."""
    from fmri2img.models.tokenizer import CAPTION_WORDS, caption_words

    root, spec, _ = demo
    caps = np.load(Path(root) / "COCO_73k_annots_curated.npy")
    words = set(caption_words(caps.ravel().tolist()))
    assert words and words <= set(CAPTION_WORDS), sorted(words - set(CAPTION_WORDS))
