"""A new person from a BIDS dataset: ``fmri2img glm --bids`` → ``align`` → ``decode --via`` (issue 21).

On the generated dataset (``fmri2img mini-nsd --bids``: a simulated person in their own voxel space who
saw images of mini-NSD subject 1 and new ones, the truth under ``sourcedata/``): the commands as a
user types them, end to end; what the store records; that the betas recover the truth; that only
the reference's training images serve the alignment and only the other trials are decoded, scored
against what the person saw; and each bad input refused with one error before anything is written.
"""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from fmri2img.cli.main import main
from fmri2img.storage.store import Store
from tests.storecompare import files

DFUNC = "derivatives/fmriprep/sub-01/ses-01/func"
#: the reference's tiny pixel decoder and its run (the decode's pictures)
PIXELS = {"pixels": {"side": 8}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """mini-NSD (subject 1 fitted: ingest, pixel features, ridge, its pixel run) and the person's BIDS dataset."""
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd
    from fmri2img.pipeline.features import extract_features
    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.pipeline.reconstruct import reconstruct_run, run_spec
    from fmri2img.pipeline.regress import regress
    from fmri2img.storage.source import Source
    from tests.minifixtures import TINY

    root = tmp_path_factory.mktemp("bids-e2e")
    generate_mini_nsd(root / "mini", MiniNSDSpec(**{**TINY, "subjects": (1,)}), progress=lambda line: None)
    argv = ["mini-nsd", "--bids", str(root / "ds"), "--from", str(root / "mini"), "--shared-images", "40"]
    assert main(argv) == 0
    store = Store(str(root / "reference.zarr"))
    ingest(store, Source(str(root / "mini")), 1, [1, 2, 3, 4], progress=False)
    extract_features(store, "pixels", PIXELS["pixels"], images_per_task=64, progress=False)
    regress(store, 1, "pixels", {"alpha": [1e2, 1e3, 1e4]}, progress=False)
    px = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=PIXELS, weights={}, seed=7)
    reconstruct_run(store, 1, px, images_per_task=32, progress=False)
    return root


@pytest.fixture(scope="module")
def done(world, tmp_path_factory):
    """The three commands of the README's path, run on a copy of the reference's store; their outputs."""
    store = tmp_path_factory.mktemp("path") / "store.zarr"
    shutil.copytree(world / "reference.zarr", store)
    printed = {}
    for name, argv in (
            ("glm", ["glm", "--bids", str(world / "ds"), "--participant", "01", "--subject", "3", "--store", str(store),
                     "--workers", "1", "--no-progress"]),
            ("align", ["align", str(store), "--subject", "3", "--reference", "1"]),
            ("decode", ["decode", str(store), "--subject", "3", "--via", "align-to-subj01", "--nets", "alexnet2",
                        "--no-progress", "--out", str(store.parent / "out")])):
        assert main(argv) == 0, name
        printed[name] = argv
    return Store(str(store)), world


def _truth(ds):
    manifest = json.loads((ds / "sourcedata/mini_nsd_bids_truth.json").read_text())
    return {i["stim_file"]: (-1 if i["new"] else i["nsd_id"]) for i in manifest["images"]}, manifest


def test_glm_writes_the_persons_own_entry(done):
    store, world = done
    truth, manifest = _truth(world / "ds")
    origin = json.loads(store.group("subjects/subj03").attrs["fmri2img_origin"])
    assert origin["kind"] == "bids" and origin["participant"] == "01" and origin["sessions"] == {"1": "01"}
    assert origin["dataset"] == str(world / "ds") and origin["space"] == "T1w"
    stim = store.open_dataset("subjects/subj03/stimuli")
    assert {f: int(i) for f, i in zip(stim.stim_file.values, stim.image.values)} == truth  # matched by pixels
    for k in (0, len(stim.stimulus) - 1):  # pixels as the files (the store's side is the files')
        png = np.asarray(Image.open(world / "ds" / "stimuli" / str(stim.stim_file.values[k])).convert("RGB"))
        np.testing.assert_array_equal(stim.images.values[k], png)
    betas = store.open_dataset("subjects/subj03/betas")
    assert betas.attrs["kind"] == "bids" and betas.betas.dtype == np.float32
    shape = tuple(manifest["volume_shape"])  # the person's own grid, never subject 1's
    assert int(betas.voxel_i.max()) < shape[0] and betas.sizes["voxel"] > 1000
    assert np.array_equal(betas.image.values, stim.image.values[betas.stimulus.values])
    with h5py.File(world / "ds/sourcedata/mini_nsd_bids_truth.hdf5") as h5:
        ijk = h5["voxels_ijk"][:]
        true = np.concatenate([h5["runs"][r]["betas"][:] for r in sorted(h5["runs"])])
        images = np.concatenate([h5["runs"][r]["image"][:] for r in sorted(h5["runs"])])
    flat = np.ravel_multi_index((betas.voxel_i.values, betas.voxel_j.values, betas.voxel_k.values), shape)
    est = betas.betas.values[:, np.searchsorted(flat, np.ravel_multi_index(tuple(ijk.T), shape))]
    shown = [truth[manifest["images"][int(k)]["stim_file"]] for k in images]
    assert np.array_equal(betas.image.values, shown)  # trials in time order, each with the image it showed
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.6  # the GLM recovers the simulated single-trial betas


def test_align_uses_only_the_references_training_images(done):
    store, _ = done
    model = store.open_dataset("models/subj03/align-to-subj01")
    used = set(model.train_image.values.tolist())
    train = set(store.open_dataset("subjects/subj01/train").image.values.tolist())
    test = set(store.open_dataset("subjects/subj01/test").image.values.tolist())
    seen = set(store.open_dataset("subjects/subj03/betas").image.values.tolist())
    assert used == (seen & train) and len(used) >= 20 and not used & test
    assert json.loads(model.attrs["sessions"]) == [1]


def test_decode_takes_the_persons_other_trials_and_scores_them(done):
    from fmri2img.pipeline.clinical.scores import read_summary

    store, _ = done
    betas = store.open_dataset("subjects/subj03/betas")
    train = store.open_dataset("subjects/subj01/train").image.values
    fmri = store.open_dataset("decoded/subj03-own/fmri")
    kept = ~np.isin(betas.image.values, train)  # neither the alignment's nor the reference's fit
    assert np.array_equal(fmri.trial.values - 1, np.flatnonzero(kept))
    assert (fmri.image.values == -1).sum() == 4 * 3  # the four new images, three showings each, decoded too
    summary = read_summary(store, "subj03-own", "px", "stage1")
    assert summary["AlexNet(2)"]["n_valid"] == kept.sum()  # every decoded trial scored against what it showed
    page = (store.url.rsplit("/", 1)[0] + "/out/decoded/subj03-own/index.html")
    text = open(page).read()
    assert text.count("truth/stimulus") >= 2 * kept.sum() and "recon/px/stage1/trial" in text
    assert text.count("<td>new: im") == 4 * 3  # a picture the store does not hold is named by its file


def test_rerunning_the_glm_redoes_nothing(done, capsys):
    store, world = done
    argv = ["glm", "--bids", str(world / "ds"), "--participant", "01", "--subject", "3", "--store", store.url,
            "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    assert "already done" in capsys.readouterr().out


def test_the_decoded_trials_are_decoded_above_chance(done):
    """Feature identification of the person's decoded test-image trials, through the alignment (chance 0.5)."""
    from fmri2img.metrics.scores import two_way_identification

    store, _ = done
    pred = store.open_dataset("decoded/subj03-own/predictions/pixels")
    nsd = pred.image.values >= 0  # the reference's test images the person saw (their features are stored)
    truth = store.open_dataset("features/pixels").sel(image=pred.image.values[nsd]).features.values
    got = pred.features.values[nsd]
    assert nsd.sum() >= 10
    assert np.nanmean(two_way_identification(truth.reshape(len(truth), -1), got.reshape(len(got), -1))) > 0.65


# -- bad input: one error, nothing written ----------------------------------------------------------

def _config(store, ds, args: dict | None = None, stages: str = '["glm"]', subject: int = 3):
    """``stages`` with ``[glm]`` reading ``ds`` for store subject ``subject`` (participant 01 unless ``args`` says)."""
    from fmri2img import config as cfgmod

    keys = {"participant": "01", **(args or {})}
    lines = "\n".join(f'{k} = "{v}"' for k, v in keys.items())
    return cfgmod.loads(f'stages = {stages}\n[store]\nurl = "{store}"\n[glm]\nsubjects = [{subject}]\nbids = "{ds}"\n'
                        f'{lines}\n[align]\nsubject = {subject}\nreference = 1\n')


@pytest.fixture
def broken(world, tmp_path):
    """A copy of the reference's store and of the dataset, to break."""
    shutil.copytree(world / "reference.zarr", tmp_path / "store.zarr")
    return tmp_path / "store.zarr", shutil.copytree(world / "ds", tmp_path / "ds")


@pytest.mark.parametrize("name", ["not BIDS", "participant", "session", "task", "space", "events without onset",
                                  "events without the stimulus column", "onset beyond the run", "no preproc bold",
                                  "no brain mask", "no confounds", "TR sidecar vs header", "confound columns missing"])
def test_each_bad_input_is_one_error_before_any_write(broken, name):
    from fmri2img.pipeline.runner import run
    from tests.test_bids_errors import CASES

    store, ds = broken
    breaker, args, kind, fragments = CASES[name]
    if breaker is not None:
        breaker(ds)
    config = _config(store, ds, args)
    before = files(store)
    with pytest.raises(kind) as err:
        run(config, progress=False)
    assert all(f in str(err.value) for f in fragments), str(err.value)
    assert files(store) == before  # nothing written


def test_the_command_says_it_in_one_line(broken, capsys):
    store, ds = broken
    (ds / "dataset_description.json").unlink()
    before = files(store)
    argv = ["glm", "--bids", str(ds), "--participant", "01", "--subject", "3", "--store", str(store), "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "dataset_description.json" in err and "Traceback" not in err, err
    assert files(store) == before


def test_a_subject_number_holding_other_data_is_refused(done, broken, capsys):
    from fmri2img.pipeline.glm.run import GlmRunError
    from fmri2img.pipeline.runner import run

    store, ds = broken
    before = files(store)
    with pytest.raises(GlmRunError, match=r"subjects/subj01 .* already holds data of another dataset .*in use: \[1\]"):
        run(_config(store, ds, subject=1), progress=False)  # the reference's own entry
    assert files(store) == before
    fitted, world = done  # subject 3 holds sub-01 of the generated dataset: another dataset is refused
    before = files(fitted.url)
    with pytest.raises(GlmRunError, match=r"already holds BIDS participant sub-01 of .*would mix two people"):
        run(_config(fitted.url, ds), progress=False)
    assert files(fitted.url) == before


def _unmatched(ds) -> None:
    """Every stimulus file changed beyond recognition (a colour negative): no NSD image matches."""
    for png in (ds / "stimuli").glob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(png).convert("RGB"))).save(png)


def test_stimuli_matching_no_nsd_image_are_refused_when_alignment_needs_them(broken, capsys):
    from fmri2img.pipeline.glm.run import GlmRunError
    from fmri2img.pipeline.runner import run

    store, ds = broken
    _unmatched(ds)
    before = files(store)
    with pytest.raises(GlmRunError, match=r"none of the participant's 44 stimuli .* matches subject 1's 48 training "
                                          r"images \(0 matched any stored image\), but the alignment needs"):
        run(_config(store, ds, stages='["glm", "align"]'), progress=False)
    assert files(store) == before
    run(_config(store, ds), progress=False)  # alone, the glm fits them: new images for the person
    before = files(store)
    assert main(["align", str(store), "--subject", "3", "--reference", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "saw none of the reference's 48 training images" in err, err
    assert "0 matched an NSD image" in err
    assert files(store) == before


def test_one_configuration_runs_the_three_stages(world, tmp_path):
    """``fmri2img run`` with stages glm, align, decode: the same path from [glm] bids, [align] and [decode] via."""
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.runner import run

    store = tmp_path / "store.zarr"
    shutil.copytree(world / "reference.zarr", store)
    out = run(cfgmod.loads(f'''stages = ["glm", "align", "decode"]
[store]
url = "{store}"
[outputs]
url = "{tmp_path / 'out'}"
[features.extractors.pixels]
side = 8
[reconstruct.runs.px]
stage1 = "pixels"
preset = ""
[glm]
subjects = [5]
bids = "{world / 'ds'}"
participant = "01"
[align]
subject = 5
reference = 1
[decode]
subject = 5
via = "align-to-subj01"
runs = ["px"]
nets = ["alexnet2"]
'''), progress=False)
    assert out["glm"]["subj05"]["betas"]["matched"] == 40 and out["align"]["n_images"] >= 20
    assert out["decode"]["name"] == "subj05-own" and out["decode"]["metrics"]["px/stage1"]["AlexNet(2)"] > 0.5
    assert (tmp_path / "out/decoded/subj05-own/index.html").exists()


def test_stimulus_files_are_matched_by_their_pixels(world):
    """Exact, JPEG and resized copies of stored images match them; a changed picture or a column of labels does not."""
    import io

    from fmri2img.pipeline.glm.stimuli import match_stimuli, stimulus_kind
    from fmri2img.storage import schema

    store = Store(str(world / "reference.zarr"))
    g = store.group(schema.STIMULI)
    ids, images = np.asarray(g["image"][:6]), np.asarray(g["images"][:6])

    def jpeg(p, quality):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    def resized(p):
        big = Image.fromarray(p).resize((4 * p.shape[0],) * 2, Image.Resampling.BICUBIC)
        return np.asarray(big.resize(p.shape[:2], Image.Resampling.BICUBIC))

    pictures = np.stack([images[0], jpeg(images[1], 75), jpeg(images[2], 50), resized(images[3]), 255 - images[4],
                         images[5][::-1]])
    found, difference = match_stimuli(store, pictures)
    assert found.tolist() == [*ids[:4].tolist(), -1, -1], (found, difference)
    assert difference[0] == 0 and difference[4] > 20
    assert [stimulus_kind(v) for v in (["a.png", "n/a"], ["12", "-1"], ["face", "house"])] == ["files", "ids", "labels"]


def test_sessions_are_numbered_by_their_label_and_fitted_one_call_at_a_time(world, tmp_path):
    """ses-02 is store session 2 whatever is fitted first; the betas grow with each session fitted; align takes all."""
    from fmri2img.mininsd.bids import BIDSSpec, generate_bids
    from fmri2img.pipeline.clinical import align as al
    from fmri2img.pipeline.runner import run

    ds = tmp_path / "two"
    generate_bids(ds, world / "mini", BIDSSpec(sessions=("01", "02"), runs=2, repeats=2, n_shared=12, n_new=4,
                                               seed=5), progress=lambda line: None)
    store = tmp_path / "store.zarr"
    shutil.copytree(world / "reference.zarr", store)
    s = Store(str(store))
    run(_config(store, ds, {"session": "02"}, subject=4), progress=False)
    origin = json.loads(s.group("subjects/subj04").attrs["fmri2img_origin"])
    assert origin["sessions"] == {"2": "02"} and not s.has_group("subjects/subj04/glm/session01")
    assert set(s.open_dataset("subjects/subj04/betas").session.values.tolist()) == {2}
    run(_config(store, ds, {"session": "ses-01"}, subject=4), progress=False)
    origin = json.loads(s.group("subjects/subj04").attrs["fmri2img_origin"])
    betas = s.open_dataset("subjects/subj04/betas")
    assert origin["sessions"] == {"1": "01", "2": "02"} and betas.sizes["trial"] == 2 * 16 * 2
    assert betas.session.values.tolist() == [1] * 32 + [2] * 32
    assert np.array_equal(betas.image.values, s.open_dataset("subjects/subj04/stimuli").image.values[
        betas.stimulus.values])
    assert al.align(s, 4, 1, targets="shared")["sessions"] == [1, 2]


def test_a_bids_glm_section_is_checked_when_it_loads(tmp_path):
    from fmri2img import config as cfgmod

    head = f'stages = ["glm"]\n[store]\nurl = "{tmp_path / "s.zarr"}"\n[glm]\nbids = "{tmp_path}"\n'
    refused = {'subjects = [3]\n': "glm.participant: empty",
               'subjects = [3, 4]\nparticipant = "01"\n': "a BIDS participant goes to one store subject",
               'subjects = [3]\nparticipant = "01"\nexport = "x"\n': "glm.export applies to NSD's time series",
               'subjects = [3]\nparticipant = "01"\nsessions = "1-2"\n': "a BIDS session is glm.session",
               'subjects = [3]\nparticipant = "01"\nconfounds = "motion+aroma"\n': "glm.confounds:",
               'subjects = [3]\nparticipant = "01"\nonsets = "nearest"\n': "glm.onsets"}
    for text, message in refused.items():
        with pytest.raises(cfgmod.ConfigError, match=message):
            cfgmod.loads(head + text)
    assert cfgmod.loads(head + 'subjects = [3]\nparticipant = "sub-01"\nconfounds = "simple"\n').glm.participant


def test_a_run_cut_short_found_while_reading_leaves_the_store_as_it_was(broken):
    """A preprocessed BOLD whose header is whole but whose data end early: the fit stops, and the new subject's
    entry (origin, glm groups) is removed again."""
    import gzip

    from fmri2img.pipeline.runner import run

    store, ds = broken
    path = ds / f"{DFUNC}/sub-01_ses-01_task-images_run-2_space-T1w_desc-preproc_bold.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    before = files(store)
    with pytest.raises(ValueError, match="run-2_space-T1w_desc-preproc_bold"):
        run(_config(store, ds), progress=False)
    assert files(store) == before


def test_the_glm_reads_the_dataset_from_s3_as_from_the_folder(done, tmp_path, s3_storage_options):
    """The same dataset on a moto S3 server (loopback) gives the same betas and stimuli as the local folder."""
    from fmri2img.pipeline.runner import run
    from tests.cloud_helpers import upload_dir

    local, world = done
    upload_dir(world / "ds", "s3://bids-e2e/ds", s3_storage_options)
    store = tmp_path / "store.zarr"
    shutil.copytree(world / "reference.zarr", store)
    config = _config(store, "s3://bids-e2e/ds")
    config.glm.storage_options = dict(s3_storage_options)
    run(config, progress=False)
    remote = Store(str(store))
    for group in ("subjects/subj03/betas", "subjects/subj03/stimuli"):
        a, b = local.open_dataset(group), remote.open_dataset(group)
        for name in (*a.data_vars, "image"):
            np.testing.assert_array_equal(a[name].values, b[name].values)
    origin = json.loads(remote.group("subjects/subj03").attrs["fmri2img_origin"])
    assert origin["dataset"] == "s3://bids-e2e/ds"
    attrs = json.dumps({g: dict(remote.group(g).attrs) for g in remote.list_groups("subjects/subj03")})
    assert s3_storage_options["secret"] not in attrs and s3_storage_options["key"] not in attrs  # never credentials
