"""The decode stage: a fitted subject applied to new scans (issue 15, part 1).

Against the regress and reconstruct stages: decoding the test trials of every ingested
session and averaging per image equals the regress stage's test predictions with the same
non-transductive ("loo") calibration, and reconstructing those averages equals the
reconstruct stage's pictures with the same seeds.  Every bad input gets one clear error.
All models are the tiny seeded random-weight ones of the other pipeline tests.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr

from fmri2img.pipeline.clinical import decode as dec
from fmri2img.pipeline.clinical.configured import decode_config
from fmri2img.pipeline.reconstruct import reconstruct_run, run_spec
from fmri2img.pipeline.regress import regress
from fmri2img.storage import nsd
from fmri2img.storage.decoded import DecodeInputError
from fmri2img.storage.store import Store
from tests.minifixtures import (EXTRACTORS, SESSIONS, VD_SETTINGS, mini_nsd, pixels_decode_config,  # noqa: F401
                                predicted_store)

FEATURES = ("vdvae", "clip-text", "clip-vision", "pixels")


def _runs():
    bd = run_spec("bd", {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True, "settings": dict(VD_SETTINGS)},
                  extractor_options=EXTRACTORS, weights={}, seed=7)
    px = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)
    return bd, px


@pytest.fixture(scope="module")
def loo_store(predicted_store, tmp_path_factory):
    """predicted_store refitted with the non-transductive calibration, both runs reconstructed."""
    path = tmp_path_factory.mktemp("decode") / "store.zarr"
    shutil.copytree(predicted_store.url, path)
    store = Store(str(path))
    for name in FEATURES:
        regress(store, 1, name, {"alpha": 1000.0, "calibration": "loo"}, progress=False)
    for run in _runs():
        reconstruct_run(store, 1, run, images_per_task=16, progress=False)
    return store


def _open(store, group):
    return xr.open_zarr(store.url, group=group, consolidated=False)


def _betas_file(root, session, fmt="hdf5"):
    return nsd.NSDLayout(str(root)).betas(1, session, fmt)


def _test_trials_csv(store, session, tmp_path):
    """A trials CSV of the session's test trials (1-based trial within the session, NSD id)."""
    betas = _open(store, "subjects/subj01/betas")
    test_ids = set(_open(store, "subjects/subj01/test").image.values.tolist())
    in_session = betas.session.values == session
    images = betas.image.values[in_session]
    rows = [(t + 1, int(i)) for t, i in enumerate(images) if int(i) in test_ids]
    path = tmp_path / f"trials-{session}.csv"
    path.write_text("trial,image\n" + "".join(f"{t},{i}\n" for t, i in rows))
    return str(path), len(rows)


def test_decoded_test_trials_averaged_equal_regress_and_reconstruct(loo_store, mini_nsd, tmp_path):
    store = loo_store
    sums: dict = {f: {} for f in FEATURES}
    counts: dict = {}
    for session in SESSIONS:
        csv, n = _test_trials_csv(store, session, tmp_path)
        out = dec.decode(store, 1, _betas_file(mini_nsd, session), [], features=FEATURES, trials_file=csv,
                         progress=False)
        assert out["calibration"] == "loo" and out["trials"] == n and out["images_known"] == n
        for f in FEATURES:
            ds = _open(store, f"decoded/{out['name']}/predictions/{f}")
            assert ds.attrs["calibration"] == "loo"
            for image, row in zip(ds.image.values, ds.features.values):
                sums[f][int(image)] = sums[f].get(int(image), 0) + row.astype(np.float64)
        for image in ds.image.values:
            counts[int(image)] = counts.get(int(image), 0) + 1
    test = _open(store, "subjects/subj01/test")
    ids = test.image.values
    assert sorted(counts) == sorted(ids.tolist())
    assert [counts[int(i)] for i in ids] == test.n_repeats.values.tolist()
    averages = {}
    for f in FEATURES:
        want = _open(store, f"predictions/subj01/{f}").features.values
        got = np.stack([sums[f][int(i)] / counts[int(i)] for i in ids])
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=f)
        averages[f] = got.astype(np.float32)
    bd, px = _runs()
    stage1, _, _ = dec.reconstruct_rows(averages, ids, px)
    assert np.array_equal(stage1, _open(store, "recon/subj01/px/stage1").images.values)
    stage1, final, _ = dec.reconstruct_rows(averages, ids, bd)
    for got, part in ((stage1, "stage1"), (final, "final")):
        want = _open(store, f"recon/subj01/bd/{part}").images.values.astype(int)
        # float32 predictions averaged in another order; batched convolutions: at most one level, rarely
        assert np.abs(got.astype(int) - want).max() <= 1 and np.mean(got != want) < 1e-2, part


def test_cli_decodes_a_session_file_resumes_and_scores(loo_store, mini_nsd, tmp_path, capsys, monkeypatch):
    from fmri2img.cli.main import main
    from fmri2img.pipeline.clinical import page as decode_page
    from fmri2img.pipeline.clinical import scores as decode_metrics

    out = tmp_path / "out"
    argv = ["decode", loo_store.url, "--subject", "1", "--betas", _betas_file(mini_nsd, 1, "nii.gz"), "--trials",
            "1-6", "--runs", "bd,px", "--out", str(out), "--nets", "alexnet2", "--name", "s1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "calibration: loo" in printed and "random-weight models" in printed
    shown = _open(loo_store, "subjects/subj01/betas").image.values[:6]
    final = _open(loo_store, "decoded/s1/recon/bd/final")
    assert final.images.shape == (6, 16, 16, 3) and final.trial.values.tolist() == [1, 2, 3, 4, 5, 6]
    assert final.image.values.tolist() == shown.tolist()  # from the NSD design of session 1
    assert final.attrs["calibration"] == "loo" and final.attrs["random_weights"]
    assert final.seed_id.values.tolist() == shown.tolist()  # seeded like the reconstruct stage: by image id
    metrics = _open(loo_store, "decoded/s1/metrics/bd/final")
    summary = decode_metrics.read_summary(loo_store, "s1", "bd", "final")
    assert metrics.sizes["trial"] == 6 and summary["AlexNet(2)"]["random_weights"]
    assert {"PixCorr", "SSIM (column)", "AlexNet(2)"} <= set(summary)
    page = (out / "decoded/s1/index.html").read_text()
    assert "leave-one-out" in page and decode_page.RANDOM_NOTE in page and "PixCorr" in page
    for rel in ("recon/bd/final/trial0001.png", "recon/px/stage1/trial0006.png", f"truth/{shown[0]}.png"):
        assert (out / "decoded/s1" / rel).exists(), rel

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(dec, "reconstruct_rows", fail)
    monkeypatch.setattr(decode_metrics, "score_block", fail)
    assert main(argv) == 0  # a rerun finds every region and the metrics done


def test_masked_voxel_array_decodes_like_the_model(loo_store, tmp_path, capsys):
    from fmri2img.cli.main import main
    from fmri2img.pipeline.regress import load_model

    betas = _open(loo_store, "subjects/subj01/betas").betas.values[40:45]
    np.save(tmp_path / "patient.npy", betas)
    argv = ["decode", loo_store.url, "--subject", "1", "--betas", str(tmp_path / "patient.npy"), "--runs", "px",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    got = _open(loo_store, "decoded/patient/predictions/pixels")
    assert got.trial.values.tolist() == [1, 2, 3, 4, 5] and (got.image.values == dec.UNKNOWN_IMAGE).all()
    est = load_model(loo_store, 1, "pixels")
    est.calibration = "loo"
    np.testing.assert_allclose(got.features.values, np.asarray(est.predict(betas)), rtol=1e-5, atol=1e-5)
    assert "No metrics" in (tmp_path / "out/decoded/patient/index.html").read_text()


def _npy(tmp_path, values, name="x.npy"):
    np.save(tmp_path / name, values)
    return str(tmp_path / name)


def test_bad_inputs_each_get_one_clear_error(loo_store, mini_nsd, tmp_path, capsys):
    import nibabel as nib

    from fmri2img.cli.main import main

    n_vox = _open(loo_store, "subjects/subj01/betas").sizes["voxel"]
    _, px = _runs()

    def refused(error, match, betas, **kwargs):
        with pytest.raises(error, match=match):
            dec.decode(loo_store, kwargs.pop("subject", 1), betas, [px], progress=False, **kwargs)

    wrong = nib.Nifti1Image(np.zeros((17, 20, 16, 40), np.int16), np.eye(4))
    nib.save(wrong, tmp_path / "betas_session01.nii.gz")
    refused(nsd.NSDFormatError, r"betas_session01.nii.gz has 17×20×16 voxels but the nsdgeneral mask is 16×20×16",
            str(tmp_path / "betas_session01.nii.gz"))
    other_mask = nsd.NSDLayout(str(mini_nsd)).roi(2, "nsdgeneral")
    refused(DecodeInputError, r"selects \d+ voxels, but subject 1 was fitted on \d+ other voxel positions.*--mask",
            _betas_file(mini_nsd, 1), mask=other_mask)
    refused(DecodeInputError, rf"has {n_vox + 1} voxels per trial but subject 1 was fitted on {n_vox}",
            _npy(tmp_path, np.zeros((3, n_vox + 1), np.float32)))
    nan = np.zeros((3, n_vox), np.float32)
    nan[1, 5] = np.nan
    refused(DecodeInputError, r"1 NaN/inf values in 1 voxels of 1 trials \(first trial 2, voxel 5\)",
            _npy(tmp_path, nan, "nan.npy"))
    refused(dec.DecodeError, r"subject 2 is not in the store", _npy(tmp_path, nan, "nan.npy"), subject=2)
    refused(dec.DecodeError, r"'test_batch' rescales by the batch", _npy(tmp_path, nan), calibration="test_batch")
    refused(DecodeInputError, r"trials 1\.\.9 are outside the input's 1\.\.3",
            _npy(tmp_path, np.zeros((3, n_vox), np.float32)), trials="1-9")
    refused(DecodeInputError, r"cannot tell what it holds from its name", str(tmp_path / "scan.mat"))
    refused(DecodeInputError, r"is subject 2's \(subj02 in its path\) but the models are subject 1's",
            nsd.NSDLayout(str(mini_nsd)).betas(2, 1, "hdf5"))

    unfitted = Store(str(tmp_path / "unfitted.zarr"))
    shutil.copytree(loo_store.url, unfitted.url)
    shutil.rmtree(tmp_path / "unfitted.zarr/models/subj01/pixels")
    with pytest.raises(dec.DecodeError, match=r"subject 1 has no fitted model for \['pixels'\].*regress"):
        dec.decode(unfitted, 1, _npy(tmp_path, np.zeros((3, n_vox), np.float32)), [px], progress=False)

    capsys.readouterr()
    assert main(["decode", loo_store.url, "--subject", "1", "--betas", str(tmp_path / "nan.npy"), "--runs", "px",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --betas") and "NaN/inf" in err[0]


def test_config_section_decodes_with_reconstruct_runs(loo_store, tmp_path):
    from fmri2img import config as cfgmod

    betas = _open(loo_store, "subjects/subj01/betas").betas.values[:4]
    path = _npy(tmp_path, betas, "scan.npy")
    (tmp_path / "trials.csv").write_text("trial\n2\n4\n")
    config = cfgmod.loads(pixels_decode_config(loo_store.url,
                                               f'betas = "{path}"\ntrials_file = "{tmp_path / "trials.csv"}"\n'
                                               f'name = "from-config"'))
    kwargs = decode_config(config)
    assert [r.name for r in kwargs["runs"]] == ["px"] and kwargs["calibration"] == "loo"
    store = kwargs.pop("store")
    out = dec.decode(store, progress=False, **kwargs)
    assert out["trials"] == 2 and out["metrics"] == {} and out["page"] is None
    got = _open(store, "decoded/from-config/recon/px/stage1")
    assert got.trial.values.tolist() == [2, 4] and got.attrs["calibration"] == "loo"
    with pytest.raises(dec.DecodeError, match=r"decode.runs: \['bd'\] are not \[reconstruct.runs\]"):
        decode_config(config, runs=["bd"])
    with pytest.raises(cfgmod.ConfigError, match="decode.calibration"):
        cfgmod.loads('[decode]\ncalibration = "test_batch"\n')


def test_fmri2img_run_has_a_decode_stage(loo_store, tmp_path):
    """`fmri2img run` with stages = ["decode"] decodes the [decode] section like `fmri2img decode --config`."""
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.runner import run

    path = _npy(tmp_path, _open(loo_store, "subjects/subj01/betas").betas.values[:3], "scan3.npy")
    text = pixels_decode_config(loo_store.url, f'betas = "{path}"\nname = "by-run"',
                          head=f'stages = ["decode"]\n[outputs]\nurl = "{tmp_path / "out"}"')
    out = run(cfgmod.loads(text), progress=False)
    assert out["decode"]["trials"] == 3 and out["decode"]["calibration"] == "loo"
    assert _open(loo_store, "decoded/by-run/recon/px/stage1").trial.values.tolist() == [1, 2, 3]
    with pytest.raises(cfgmod.ConfigError, match="decode.betas: empty"):
        cfgmod.loads(text.replace(f'betas = "{path}"', ""))


def test_decode_stage1_follows_the_feature_kind():
    """A run whose stage 1 is a second extractor of a kind (``kind = "pixels"``) decodes as that kind."""
    from fmri2img.pipeline.clinical.decode import reconstruct_rows
    from fmri2img.pipeline.reconstruct import STAGE1, run_spec

    extractors = {"pixels": {"side": 8}, "px-coarse": {"kind": "pixels", "side": 8}}
    spec = run_spec("coarse", {"stage1": "px-coarse", "preset": ""}, extractor_options=extractors, weights={}, seed=0)
    pred = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    stage1, final, _ = reconstruct_rows({"px-coarse": pred}, np.array([5, 9]), spec)
    assert final is None
    np.testing.assert_array_equal(stage1, STAGE1["pixels"](pred, np.array([5, 9]), spec))


def test_every_image_array_any_stage_writes_is_uint8(loo_store, mini_nsd, tmp_path):
    """Issue 23, point 8: stimuli (ingest), recon (reconstruct), roi (roi) and decoded (decode) pictures are all
    uint8 (decode wrote float64: 8 bytes per value); every ``redone_fp32`` flag is bool."""
    import zarr

    from fmri2img.pipeline.roi import roi_analysis

    path = tmp_path / "store.zarr"
    shutil.copytree(loo_store.url, path)
    store = Store(str(path))
    bd, px = _runs()
    dec.decode(store, 1, _betas_file(mini_nsd, 1), [bd, px], trials="1-3", progress=False)
    roi_analysis(store, 1, px, progress=False)
    found: dict[str, str] = {}

    def walk(group, prefix=""):
        for name, node in group.members():
            key = f"{prefix}{name}"
            if isinstance(node, zarr.Group):
                walk(node, key + "/")
            elif name in ("images", "redone_fp32"):
                found[key] = str(node.dtype)

    walk(zarr.open_group(str(path), mode="r"))
    prefixes = {k.split("/")[0] for k in found}
    assert {"stimuli", "recon", "roi", "decoded"} <= prefixes, sorted(found)
    assert any(k.startswith("decoded/") and k.endswith("final/images") for k in found)
    wrong = {k: d for k, d in found.items() if d != ("bool" if k.endswith("redone_fp32") else "uint8")}
    assert not wrong, wrong
