"""A new person from one session: `fmri2img align` (issue 15, part 3).

The math against plain ridge (kernel form equals the explicit concatenated features);
leakage is impossible (the alignment and fitting images and the evaluated images are
disjoint, asserted at fit time, in the stored model and when decoding); on mini-NSD a
subject aligned on one session is decoded by the reference's models well above chance.
Tiny seeded models as in the other pipeline tests.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr

from fmri2img.pipeline.clinical import align as al
from fmri2img.pipeline.clinical import decode as dec
from fmri2img.pipeline.features import extract_features
from fmri2img.pipeline.reconstruct import run_spec
from fmri2img.ridge.align import LeakageError, check_disjoint, pseudo_responses
from fmri2img.storage import nsd
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, SESSIONS, TINY, mini_nsd, predicted_store  # noqa: F401


def _open(store, group):
    return xr.open_zarr(store.url, group=group, consolidated=False)


def test_pseudo_responses_equal_ridge_on_weighted_features():
    rng = np.random.default_rng(0)
    F1, F2 = rng.normal(size=(40, 30)), rng.normal(size=(40, 5, 4))  # a wide set and a 3-d one
    Y = rng.normal(size=(30, 6))
    got, model = pseudo_responses([F1[:30], F2[:30]], Y, [F1[30:], F2[30:]], alphas=[7.0], calibration="none")

    def z(F):
        F = F.reshape(len(F), -1)
        m, s = F[:30].mean(0), F[:30].std(0)
        return (F - m) / (s * np.sqrt(F.shape[1]))

    A = np.hstack([z(F1), z(F2)])
    At = A[:30]
    W = np.linalg.solve(At.T @ At + 7.0 * np.eye(A.shape[1]), At.T @ (Y - Y.mean(0)))
    np.testing.assert_allclose(got, A[30:] @ W + Y.mean(0), rtol=1e-4, atol=1e-5)
    assert model.alpha_ == 7.0


def _one_session_vs_aligned(seed: int, undecodable: float) -> tuple[float, float]:
    """Two-way identification of test features from (b) a one-session fit and (c) alignment to a reference.

    A shared 16-d latent drives both subjects' voxels (noise sd 3) and the features, which add
    ``undecodable`` × independent noise per column (variance no brain response carries, as most of
    real CLIP/VDVAE features): 300 reference images, 40 for the new subject, 60 tested.
    """
    from fmri2img.metrics.scores import two_way_identification
    from fmri2img.ridge import BlockRidge
    from fmri2img.ridge.align import AlignedModel, fit_alignment

    rng = np.random.default_rng(seed)
    alphas = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5]
    z = rng.standard_normal((400, 16))
    F = z @ rng.standard_normal((16, 120)) / 4 + undecodable * rng.standard_normal((400, 120))
    XR = z @ rng.standard_normal((16, 150)) + 3 * rng.standard_normal((400, 150))
    XS = z @ rng.standard_normal((16, 120)) + 3 * rng.standard_normal((400, 120))
    ref, new, test = slice(0, 300), slice(300, 340), slice(340, 400)

    def fit(X, Y):
        return BlockRidge(alpha=alphas, alpha_groups="all", fmri_scale=None, calibration="none").fit(X, Y)

    pseudo, _ = pseudo_responses([F[ref]], XR[ref], [F[new]], alphas, calibration="none")
    aligned = AlignedModel(fit_alignment(XS[new], pseudo, alphas, calibration="none"), fit(XR[ref], F[ref]))
    return tuple(float(np.mean(two_way_identification(F[test], np.asarray(m.predict(XS[test])))))
                 for m in (fit(XS[new], F[new]), aligned))


def test_alignment_beats_one_session_when_features_carry_undecodable_variance():
    """Why (c) beats (b) only for some features (benchmarks/README.md, "align").

    The aligned decoder is a kernel ridge on the same one-session scans whose targets are the
    features passed through the reference's encoding and decoding models: it drops the variance
    no brain carries, which a one-session fit must learn as noise. With features the brain
    fully determines, both reach the ceiling; with 9× more undecodable than decodable variance,
    alignment wins in every seed.
    """
    for seed in range(3):
        b, c = _one_session_vs_aligned(seed, undecodable=0.0)
        assert b > 0.99 and c > 0.99, (seed, b, c)
        b, c = _one_session_vs_aligned(seed, undecodable=3.0)
        assert 0.6 < b < c - 0.02, (seed, b, c)


def test_mininsd_subject_with_one_session(mini_nsd, tmp_path):  # noqa: F811
    from fmri2img.cli.main import main
    from fmri2img.mininsd.generate import MiniNSDSpec

    sizes = {"seed": 3, "subjects": "1,2", "n-images": 120, "n-shared": 16, "n-per-subject": 64, "n-sessions": 4,
             "trials-per-session": 40, "side": 32, "volume": "16,20,16", "sessions-per-subject": "2:1"}
    assert main(["mini-nsd", str(tmp_path), "--no-hdf5", *(f"--{k}={v}" for k, v in sizes.items())]) == 0
    manifest = json.loads((tmp_path / "mini_nsd.json").read_text())
    assert all(manifest["spec"][k] == (list(v) if isinstance(v, tuple) else v) for k, v in TINY.items())
    assert manifest["subjects"]["2"]["n_sessions"] == 1 and manifest["subjects"]["1"]["n_sessions"] == 4
    layout = nsd.NSDLayout(str(tmp_path))
    for subject, n in ((1, 4), (2, 1)):
        for session in range(1, 5):
            assert (tmp_path / layout.betas(subject, session)).exists() == (session <= n)
    # the one session is the same scan as that subject's first session in the many-session dataset
    assert (tmp_path / layout.betas(2, 1)).read_bytes() == (mini_nsd / layout.betas(2, 1)).read_bytes()
    assert manifest["subjects"]["2"]["n_test_trials"] < 3 * TINY["n_shared"]
    with pytest.raises(ValueError, match=r"sessions_per_subject=\{3: 1\} must map subjects of \(1, 2\)"):
        MiniNSDSpec(**{**TINY, "sessions_per_subject": {3: 1}})


@pytest.fixture(scope="module")
def aligned_store(predicted_store, mini_nsd, tmp_path_factory):  # noqa: F811
    """predicted_store (subject 1 fitted) + subject 2 ingested (all sessions: its test scans) + features extended."""
    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.storage.source import Source

    path = tmp_path_factory.mktemp("align") / "store.zarr"
    shutil.copytree(predicted_store.url, path)
    store = Store(str(path))
    ingest(store, Source(str(mini_nsd)), 2, SESSIONS, progress=False)
    for name, options in EXTRACTORS.items():
        extract_features(store, name, options, images_per_task=32, progress=False)
    return store


@pytest.mark.parametrize("targets", ["encoding", "shared"])
def test_alignment_and_evaluation_images_are_disjoint(aligned_store, targets):
    store = aligned_store
    out = al.align(store, 2, 1, "1", targets=targets)
    test2, test1 = (set(_open(store, f"subjects/subj0{s}/test").image.values.tolist()) for s in (2, 1))
    betas = _open(store, "subjects/subj02/betas")
    session1 = set(betas.image.values[betas.session.values == 1].tolist())
    model = _open(store, "models/subj02/align-to-subj01")
    used = set(model.train_image.values.tolist())
    assert used and used <= session1 and not used & (test1 | test2)  # one session, no evaluated image
    assert model.attrs["targets"] == targets and json.loads(model.attrs["sessions"]) == [1]
    assert model.targets.shape == (len(used), _open(store, "subjects/subj01/train").sizes["voxel"])
    if targets == "shared":
        assert used <= set(_open(store, "subjects/subj01/train").image.values.tolist())
    fitted = al.fitted_images(store, 2, 1, ["pixels"])
    encoding = {f"subject 1's {f}" for f in ("clip-text", "clip-vision", "vdvae")} if targets == "encoding" else set()
    assert set(fitted) == {"alignment", "subject 1's pixels"} | encoding
    check_disjoint(fitted, sorted(test1 | test2))  # nothing any fit used is evaluated on
    with pytest.raises(LeakageError, match=r"used by the alignment fit are among the \d+ images evaluated on"):
        check_disjoint(fitted, [int(model.train_image.values[0])])
    assert out["held_out"]["n_test_images"] == len(test1 & test2) and out["held_out"]["two_way_identification"] > 0.7
    if targets == "encoding":  # the encoding model on a seeded sample of the reference's training images
        assert al.align(store, 2, 1, "1", encoding_images=20)["encoding_images"] == 20


def test_decoding_a_session_never_scores_an_image_a_fit_used(aligned_store, mini_nsd, tmp_path):  # noqa: F811
    store = aligned_store
    al.align(store, 2, 1, "1")
    px = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)
    out = dec.decode(store, 2, nsd.NSDLayout(str(mini_nsd)).betas(2, 1, "hdf5"), [px], via="align-to-subj01",
                     nets=["alexnet2"], name="s1-aligned", progress=False)
    got = _open(store, "decoded/s1-aligned/predictions/pixels")
    shown = _open(store, "subjects/subj02/betas").image.values[:len(got.trial)]
    fitted = al.fitted_images(store, 2, 1, ["pixels"])
    used = np.unique(np.concatenate(list(fitted.values())))
    scored = got.image.values[got.image.values >= 0]
    assert len(scored) == out["images_known"] >= 2 and not np.isin(scored, used).any()
    assert np.array_equal(got.image.values >= 0, ~np.isin(shown, used))  # exactly the fitted images are hidden
    assert got.attrs["via"] == "align-to-subj01" and "not scored" in out["images_from"]
    assert set(out["metrics"]) == {"px/stage1"}


def _two_way(truth, pred):
    from fmri2img.metrics.scores import two_way_identification

    return float(np.nanmean(two_way_identification(truth.reshape(len(truth), -1), pred.reshape(len(pred), -1))))


def test_cli_aligned_decoding_beats_chance(aligned_store, tmp_path, capsys):
    from fmri2img.cli.main import main

    store = aligned_store
    assert main(["align", store.url, "--subject", "2", "--reference", "1", "--sessions", "1"]) == 0
    printed = capsys.readouterr().out
    assert "→ models/subj02/align-to-subj01" in printed and "two-way identification" in printed
    test = _open(store, "subjects/subj02/test")
    np.save(tmp_path / "scans.npy", test.fmri.values)
    (tmp_path / "trials.csv").write_text("trial,image\n" + "".join(
        f"{t + 1},{int(i)}\n" for t, i in enumerate(test.image.values)))
    from fmri2img.pipeline import reconstruct

    px = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)
    reconstruct.reconstruct_run(store, 1, px, images_per_task=16, progress=False)  # the reference's run, recorded
    argv = ["decode", store.url, "--subject", "2", "--via", "align-to-subj01", "--betas", str(tmp_path / "scans.npy"),
            "--trials-file", str(tmp_path / "trials.csv"), "--runs", "px", "--nets", "alexnet2", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "subject 2 via align-to-subj01" in capsys.readouterr().out
    pred = _open(store, "decoded/scans/predictions/pixels")
    feats = _open(store, "features/pixels").sel(image=pred.image.values).features.values
    assert pred.sizes["trial"] == len(test.image) >= 10
    accuracy = _two_way(feats, pred.features.values)
    assert accuracy > 0.75, accuracy  # chance: 0.5
    from fmri2img.pipeline.clinical.scores import read_summary

    assert read_summary(store, "scans", "px", "stage1")["AlexNet(2)"]["mean"] > 0.5


def test_bad_requests_each_get_one_clear_error(aligned_store, tmp_path, capsys):
    from fmri2img.cli.main import main

    store = aligned_store
    refused = {
        ("--subject", "1", "--reference", "1"): "both 1: align a new subject to another, fitted one",
        ("--subject", "2", "--reference", "1", "--sessions", "1,7"): r"no session(s) [7] in",
        ("--subject", "2", "--reference", "1", "--sessions", "x"): "--sessions 'x': expected e.g. 1 or 1-3",
        ("--subject", "2", "--reference", "1", "--encoding-features", "nope"): "features/nope is not in the store",
    }
    for args, message in refused.items():
        capsys.readouterr()
        assert main(["align", store.url, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    np.save(tmp_path / "x.npy", _open(store, "subjects/subj02/test").fmri.values[:2])
    for via, message in (("align-to-subj03", "subject 2 has no alignment to subject 3"),
                         ("subj01", "expected align-to-subjMM")):
        with pytest.raises(al.AlignError, match=message):
            dec.decode(store, 2, str(tmp_path / "x.npy"), [], features=["pixels"], via=via, progress=False)


def test_fmri2img_run_has_an_align_stage(aligned_store, tmp_path):
    """`fmri2img run` with stages = ["align"] fits the [align] section's alignment like `fmri2img align`."""
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.runner import run

    path = tmp_path / "store.zarr"
    shutil.copytree(aligned_store.url, path)
    text = f"""
stages = ["align"]
[store]
url = "{path}"
[align]
subject = 2
reference = 1
sessions = "1"
"""
    out = run(cfgmod.loads(text), progress=False)
    assert out["align"]["group"].endswith("subj02/align-to-subj01") and out["align"]["targets"] == "encoding"
    assert _open(Store(str(path)), out["align"]["group"]) is not None
    with pytest.raises(cfgmod.ConfigError, match="align.subject"):
        cfgmod.loads(text.replace("subject = 2", "subject = 1"))
    with pytest.raises(cfgmod.ConfigError, match="align.targets"):
        cfgmod.loads(text.replace('sessions = "1"', 'sessions = "1"\ntargets = "best"'))
