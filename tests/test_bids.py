"""BIDS + fMRIPrep reader (fmri2img.storage.bids) and the generated BIDS dataset (fmri2img.mininsd.bids).

Independent references: nilearn's ``make_first_level_design_matrix`` (designs) and ``load_confounds``
(confound columns, values and censored volumes), nibabel (time series), scipy's CubicSpline
(resampling), bids-validator and bidsschematools (paths and entity parsing), plain NumPy (rounding).
"""
from __future__ import annotations

import json
import re
import warnings

import fsspec
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fmri2img.storage import bids
from fmri2img.storage.bids.entities import applicable_files, format_name, parse_name
from tests.test_bids_fixtures import bids_copy, bids_mini, bids_root, tree_bytes  # noqa: F401

nilearn_fmriprep = pytest.importorskip(
    "nilearn.interfaces.fmriprep", reason="nilearn is the reference for designs and confounds (a test extra)")

DERIV = "derivatives/fmriprep"


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)).replace("\\", "/") for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- paths and entities


def test_every_generated_path_passes_bids_validator(bids_root):
    validator = pytest.importorskip("bids_validator", reason="bids-validator checks the paths (a test extra)")
    files = _files(bids_root)
    bad = [f for f in files if not validator.BIDSValidator().is_bids("/" + f)]
    assert not bad, bad
    raw = [f for f in files if f.split("/")[0] not in ("derivatives", "sourcedata", "stimuli")]
    assert any(f.endswith("_bold.nii.gz") for f in raw) and "participants.tsv" in raw


def test_derivative_paths_pass_the_schema_derivative_rules(bids_root):
    """bids-validator 1.x passes everything under derivatives/; bidsschematools' derivative rules check the names."""
    pytest.importorskip("bids_validator", reason="bids-validator checks the paths (a test extra)")
    import bidsschematools.rules
    import bidsschematools.schema

    schema = bidsschematools.schema.load_schema()
    rules = [r["regex"] for group in (schema.rules.files.common, schema.rules.files.deriv)
             for r in bidsschematools.rules.regexify_filename_rules(group, schema, level=2)]
    # fMRIPrep's confounds are documented by fMRIPrep ("Outputs"), not (yet) by the BIDS schema
    confounds = re.compile(r"sub-[A-Za-z0-9]+/(ses-[A-Za-z0-9]+/)?func/sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?"
                           r"_task-[A-Za-z0-9]+(_run-[0-9]+)?_desc-confounds_timeseries\.(tsv|json)")
    deriv = [f[len(DERIV) + 1:] for f in _files(bids_root) if f.startswith(DERIV + "/")]
    assert len(deriv) == 11
    bad = [f for f in deriv if not any(re.fullmatch(r, f) for r in rules) and not confounds.fullmatch(f)]
    assert not bad, bad


def test_entity_parser_agrees_with_bids_validator(bids_root):
    validator = pytest.importorskip("bids_validator", reason="bids-validator parses the reference entities")
    import bidsschematools.schema

    schema = bidsschematools.schema.load_schema()
    short = {long: schema.objects.entities[long]["name"] for long in schema.rules.entities}
    checked = 0
    for rel in _files(bids_root):
        theirs = validator.BIDSValidator.parse("/" + rel)
        if "suffix" not in theirs:
            continue
        ours = parse_name(rel)
        assert ours is not None, rel
        entities = {short[k]: v for k, v in theirs.items() if k in short}
        assert (ours.entities, ours.suffix, ours.extension) == (entities, theirs["suffix"], theirs["extension"])
        assert format_name(ours.entities, ours.suffix, ours.extension) == rel.rsplit("/", 1)[-1]
        checked += 1
    assert checked >= 8


def test_entity_parser_rejects_non_bids_names():
    for name in ("dataset_description.json", ".DS_Store", "sub-01_sub-02_bold.nii", "sub-_bold.nii", "sub-0!_bold"):
        assert parse_name(name) is None, name
    assert parse_name("sub-01_task-x_run-01_bold.nii.gz").entities == {"sub": "01", "task": "x", "run": "01"}


def test_inheritance_principle_merges_top_down_and_refuses_ambiguity(tmp_path):
    files = ["task-x_bold.json", "sub-01/sub-01_task-x_bold.json", "sub-01/func/sub-01_task-x_run-1_bold.json",
             "sub-01/func/sub-01_task-x_acq-b_bold.json", "task-x_events.tsv", "sub-02/sub-02_task-x_bold.json"]
    data = "sub-01/func/sub-01_task-x_run-1_bold.nii.gz"
    assert applicable_files(data, files, "bold", ".json") == files[:3]
    assert applicable_files(data, files, "events", ".tsv") == ["task-x_events.tsv"]
    refined = [f for f in files if "run-1" not in f] + ["sub-01/func/sub-01_task-x_acq-b_run-1_bold.json"]
    assert applicable_files("sub-01/func/sub-01_task-x_acq-b_run-1_bold.nii", refined, "bold", ".json")[-2:] == [
        "sub-01/func/sub-01_task-x_acq-b_bold.json", "sub-01/func/sub-01_task-x_acq-b_run-1_bold.json"]
    with pytest.raises(bids.MetadataError, match="same level"):  # acq-b and run-1: neither refines the other
        applicable_files("sub-01/func/sub-01_task-x_acq-b_run-1_bold.nii", files, "bold", ".json")


def test_runs_find_files_and_merge_sidecars(bids_root):
    ds = bids.open_bids(str(bids_root))
    assert ds.participants() == ["01"] and ds.sessions("01") == ["01"] and ds.tasks("sub-01") == ["images"]
    assert ds.spaces("01") == ["T1w"]
    runs = ds.runs("01", task="images")
    assert [r.key for r in runs] == ["ses-01_task-images_run-1", "ses-01_task-images_run-2"]
    run = runs[0]
    assert run.metadata["RepetitionTime"] == 1.6 and len(run.metadata["SliceTiming"]) == 18  # root + run sidecars
    assert run.preproc_metadata["SliceTimingCorrected"] is True
    assert run.confounds_json and run.events.endswith("run-1_events.tsv") and "desc-brain_mask" in run.mask
    assert ds.participants_table()["participant_id"].tolist() == ["sub-01"]


# --------------------------------------------------------------------------- events -> design


def _events(root, run_key: str) -> pd.DataFrame:
    return pd.read_csv(root / f"sub-01/ses-01/func/sub-01_{run_key}_events.tsv", sep="\t")


def test_round_onsets_match_an_independent_numpy_construction(bids_root):
    g = bids.prepare_glm_inputs(str(bids_root), "01")
    assert g.grid.method == "round" and g.tr == 1.6
    start = json.loads((bids_root / "sourcedata/mini_nsd_bids_truth.json").read_text())["timing"]["StartTime"]
    worst = 0.0
    for r, run in enumerate(g.runs):
        events = _events(bids_root, run.run.key)
        trials = events[events["stim_file"].notna()].sort_values("onset")
        rows = np.rint((trials["onset"].to_numpy() - start) / 1.6).astype(int)
        mine = g.trials[g.trials.run == r]
        np.testing.assert_array_equal(mine["row"], rows)
        np.testing.assert_array_equal(mine["stimulus"], trials["stim_file"])
        expected = np.zeros((run.info.n_volumes, len(g.conditions)), np.uint8)
        expected[rows, [g.conditions.index(s) for s in trials["stim_file"]]] = 1
        np.testing.assert_array_equal(run.design, expected)
        worst = max(worst, np.abs(trials["onset"].to_numpy() - start - 1.6 * rows).max())
    assert g.grid.max_error == pytest.approx(worst) and 0.3 < worst <= 0.8
    assert len(g.conditions) == 16 and g.trials.groupby("condition").size().eq(3).all()  # repeats = conditions


@pytest.mark.parametrize("method", ["round", "resample"])
def test_design_equals_nilearn_first_level_design(bids_root, method):
    from nilearn.glm.first_level import make_first_level_design_matrix, spm_hrf

    g = bids.prepare_glm_inputs(str(bids_root), "01", onsets=method)
    kernel = spm_hrf(g.tr, oversampling=50)[::50]  # the same canonical HRF at the design's step
    for r, run in enumerate(g.runs):
        times = g.grid.times(r)
        trials = g.trials[g.trials.run == r]
        events = pd.DataFrame({"onset": times[trials["row"]], "duration": 0.0,
                               "trial_type": [f"c{c:03d}" for c in trials["condition"]]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fir = make_first_level_design_matrix(times, events.assign(duration=g.tr), hrf_model="fir",
                                                 fir_delays=[0], drift_model=None)
            spm = make_first_level_design_matrix(times, events, hrf_model="spm", drift_model=None)
        for c in range(len(g.conditions)):
            column = run.design[:, c].astype(float)
            if f"c{c:03d}" not in spm:
                assert not column.any()
                continue
            np.testing.assert_array_equal(column, np.rint(fir[f"c{c:03d}_delay_0"].to_numpy()))
            ours, theirs = np.convolve(column, kernel)[:len(times)], spm[f"c{c:03d}"].to_numpy()
            np.testing.assert_allclose(ours / ours.max(), theirs / theirs.max(), atol=0.03)


def test_resample_puts_onsets_on_nsds_grid_and_interpolates_cubically(bids_root):
    from scipy.interpolate import CubicSpline

    g = bids.prepare_glm_inputs(str(bids_root), "01", onsets="resample", confounds="motion=basic")
    assert g.grid.step == pytest.approx(4 / 3) and g.grid.max_error <= 0.006  # the events' jitter is 5 ms
    assert np.abs(g.trials["onset_error"]).max() == pytest.approx(g.grid.max_error)
    ds = g.dataset
    for r, run in enumerate(g.runs):
        frames, grid = run.timing.frame_times, g.grid.times(r)
        assert grid[0] >= frames[0] - g.grid.step and grid[-1] <= frames[-1]
        img = nib.load(ds.deriv_path(run.run.preproc))
        series = np.asarray(img.dataobj, dtype=np.float64)[g.mask].T  # (T, voxels) in the mask's C order
        block = slice(200, 260)
        expected = CubicSpline(frames, series[:, block], axis=0)(grid)
        np.testing.assert_allclose(g.read_run(r, block), expected, rtol=2e-5, atol=2e-3)
        table = pd.read_csv(ds.deriv_path(run.run.confounds), sep="\t", na_values="n/a")
        raw, _ = bids.confound_regressors(table, "motion=basic")
        np.testing.assert_allclose(run.confounds, CubicSpline(frames, raw, axis=0)(grid), atol=1e-9)
        assert run.design.shape == (len(grid), len(g.conditions))


def test_resample_without_a_grid_says_what_it_found():
    timing = bids.RunTiming(tr=2.0, n_volumes=200, frame_offset=0.0, slice_timing_corrected=False, slice_spread=0)
    onsets = np.sort(np.random.default_rng(0).uniform(5, 380, 60))
    with pytest.raises(bids.OnsetGridError, match="best step") as err:
        bids.choose_grid([onsets], [timing], "resample", tolerance=0.001)
    assert "onsets='round'" in str(err.value)
    grid = bids.choose_grid([np.arange(5, 380, 3.0)], [timing], "resample")
    assert grid.step == pytest.approx(1.5) and grid.max_error < 1e-9  # 3-s spacing on a 2-s TR: a 1.5-s grid


# --------------------------------------------------------------------------- confounds


STRATEGIES = {
    "simple": dict(strategy=("high_pass", "motion", "wm_csf"), motion="full", wm_csf="basic"),
    "scrubbing": dict(strategy=("high_pass", "motion", "wm_csf", "scrub"), motion="full", wm_csf="full", scrub=5,
                      fd_threshold=0.5, std_dvars_threshold=1.5),
    "compcor": dict(strategy=("high_pass", "motion", "compcor"), motion="full", compcor="anat_combined",
                    n_compcor="all"),
    "high_pass+compcor=anat_separated+n_compcor=2": dict(strategy=("high_pass", "compcor"),
                                                         compcor="anat_separated", n_compcor=2),
    "high_pass+compcor=temporal_anat_combined+n_compcor=3": dict(strategy=("high_pass", "compcor"),
                                                                 compcor="temporal_anat_combined", n_compcor=3),
    "motion=basic+global_signal=derivatives+wm_csf=power2+scrub=0": dict(
        strategy=("motion", "global_signal", "wm_csf", "scrub"), motion="basic", global_signal="derivatives",
        wm_csf="power2", scrub=0),
    "motion=power2+scrub+fd_threshold=0.2+std_dvars_threshold=3": dict(
        strategy=("motion", "scrub"), motion="power2", fd_threshold=0.2, std_dvars_threshold=3.0),
}


@pytest.mark.parametrize("text", list(STRATEGIES))
def test_confound_strategies_take_nilearns_columns(bids_root, text):
    g = bids.prepare_glm_inputs(str(bids_root), "01", confounds=text)
    for run in g.runs:
        path = g.dataset.deriv_path(run.run.preproc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, sample_mask = nilearn_fmriprep.load_confounds(path, **STRATEGIES[text])
        columns = [n for n in run.confound_names if not n.startswith("censor_")]
        assert sorted(columns) == sorted(theirs.columns)
        np.testing.assert_allclose(run.confounds[:, :len(columns)], theirs[columns].to_numpy(), atol=1e-8)
        censored = [int(n[len("censor_"):]) for n in run.confound_names if n.startswith("censor_")]
        dropped = np.setdiff1d(np.arange(run.info.n_volumes), sample_mask) if sample_mask is not None else []
        assert censored == list(dropped) and 0 in censored  # the non-steady-state volume
        spikes = run.confounds[:, len(columns):]
        np.testing.assert_array_equal(spikes[censored, np.arange(len(censored))], 1.0)
        assert spikes.sum() == len(censored)


def test_confound_strategy_grammar():
    s = bids.parse_strategy("motion=basic+high_pass+compcor+n_compcor=5+demean=false")
    assert s.components == ("motion", "high_pass", "compcor", "non_steady_state") and s.n_compcor == 5
    assert not s.demean and bids.parse_strategy(None).components == ()
    assert bids.parse_strategy("compcor").components == bids.parse_strategy("high_pass+motion+compcor").components


# --------------------------------------------------------------------------- time series


def test_time_series_streams_equal_nibabel(bids_root):
    g = bids.prepare_glm_inputs(str(bids_root), "01")
    for r, run in enumerate(g.runs):
        img = nib.load(g.dataset.deriv_path(run.run.preproc))
        expected = np.asarray(img.dataobj, dtype=np.float32)[g.mask].T
        full = g.read_run(r)
        np.testing.assert_array_equal(full, expected)
        pick = np.array([5, 1, 400, 77])
        np.testing.assert_array_equal(g.read_run(r, pick), expected[:, pick])
        np.testing.assert_array_equal(g.read_run(r, slice(10, 20)), expected[:, 10:20])
    assert g.voxels.shape == (int(g.mask.sum()), 3) and g.read_run(0).dtype == np.float32


def test_reading_from_moto_s3_equals_the_local_folder(bids_root, s3_storage_options):
    from tests.cloud_helpers import upload_dir

    upload_dir(bids_root, "s3://bids-test/ds001", s3_storage_options)
    options = dict(onsets="resample", confounds="compcor")
    local = bids.prepare_glm_inputs(str(bids_root), "01", **options)
    remote = bids.prepare_glm_inputs("s3://bids-test/ds001", "sub-01", storage_options=s3_storage_options, **options)
    pd.testing.assert_frame_equal(local.trials, remote.trials)
    assert local.summary() == remote.summary() and local.conditions == remote.conditions
    np.testing.assert_array_equal(local.voxels, remote.voxels)
    for r in range(len(local.runs)):
        np.testing.assert_array_equal(local.runs[r].design, remote.runs[r].design)
        np.testing.assert_array_equal(local.runs[r].confounds, remote.runs[r].confounds)
        np.testing.assert_array_equal(local.read_run(r, slice(0, 64)), remote.read_run(r, slice(0, 64)))


# --------------------------------------------------------------------------- the generated dataset


def test_generation_is_deterministic(bids_root, bids_mini, tmp_path):
    from fmri2img.mininsd.bids import generate_bids

    generate_bids(tmp_path / "again", bids_mini, progress=lambda line: None)
    assert tree_bytes(tmp_path / "again") == tree_bytes(bids_root)


def test_stimuli_are_mini_nsd_pixels_and_the_truth_says_which(bids_root, bids_mini):
    from fmri2img.storage.nsd import NSDLayout, read_stimuli

    truth = json.loads((bids_root / "sourcedata/mini_nsd_bids_truth.json").read_text())
    fs, stimuli = fsspec.filesystem("file"), NSDLayout(str(bids_mini)).stimuli()
    shared = [i for i in truth["images"] if not i["new"]]
    new = [i for i in truth["images"] if i["new"]]
    assert len(shared) == 12 and len(new) == 4
    pixels = {i["stim_file"]: np.asarray(Image.open(bids_root / "stimuli" / i["stim_file"])) for i in truth["images"]}
    brick = read_stimuli(fs, stimuli, np.arange(len(json.loads((bids_mini / "mini_nsd.json").read_text())["images"])))
    for image in shared:
        np.testing.assert_array_equal(pixels[image["stim_file"]], brick[image["nsd_id"]])
    for image in new:
        assert not any(np.array_equal(pixels[image["stim_file"]], b) for b in brick)
    shown = set()
    for run in truth["runs"]:
        events = pd.read_csv(bids_root / "sub-01/ses-01/func" / f"{run[:-5]}_events.tsv", sep="\t", na_values="n/a")
        shown |= set(events["stim_file"].dropna())
        assert (events["trial_type"] == "blank").sum() > 0 and events["stim_file"].isna().sum() > 0
    assert shown == set(pixels)


def test_truth_matches_the_files(bids_root):
    import h5py

    g = bids.prepare_glm_inputs(str(bids_root), "01")
    with h5py.File(bids_root / "sourcedata/mini_nsd_bids_truth.hdf5") as h5:
        ijk = h5["voxels_ijk"][:]
        assert g.mask[tuple(ijk.T)].all()  # the simulated cortex lies in the brain mask
        for r, key in enumerate(sorted(h5["runs"])):
            grp = h5["runs"][key]
            np.testing.assert_allclose(grp["onset"][:], g.trials[g.trials.run == r]["onset"])
            assert grp["betas"].shape == (int((g.trials.run == r).sum()), len(ijk))
            np.testing.assert_allclose(grp["frame_times"][:], g.runs[r].timing.frame_times)


def test_a_dataset_without_sessions_and_a_73k_id_column(bids_mini, tmp_path):
    from fmri2img.mininsd.bids import BIDSSpec, generate_bids

    root = tmp_path / "flat"
    truth = generate_bids(root, bids_mini, BIDSSpec(sessions=(), runs=1, n_shared=6, n_new=2, repeats=2, seed=4),
                          progress=lambda line: None)
    ids = {i["stim_file"]: -1 if i["new"] else i["nsd_id"] for i in truth["images"]}
    events = root / "sub-01/func/sub-01_task-images_run-1_events.tsv"
    table = pd.read_csv(events, sep="\t", na_values="n/a")
    table["nsd_id"] = table["stim_file"].map(ids)  # an integer column, n/a on blank slots
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    g = bids.prepare_glm_inputs(str(root), "01", stim_column="nsd_id")
    assert g.session is None and len(g.runs) == 1 and "ses-" not in g.runs[0].run.preproc
    assert sorted(g.conditions) == sorted({str(i) for i in ids.values()})  # 6 shared ids and -1
    assert g.trials.groupby("stimulus").size()["-1"] == 4  # the two new images share the id -1
    with pytest.raises(bids.BIDSSelectionError, match="no sessions"):
        bids.prepare_glm_inputs(str(root), "01", session="01")
    np.testing.assert_array_equal(g.dataset.read_stimulus(truth["images"][0]["stim_file"]),
                                  np.asarray(Image.open(root / "stimuli" / truth["images"][0]["stim_file"])))


def test_slice_timing_assumptions():
    raw = {"RepetitionTime": 2.0, "SliceTiming": [0.0, 1.0, 0.5, 1.5]}
    stc = bids.design.run_timing(raw, {"SliceTimingCorrected": True, "StartTime": 0.7}, 2.0, 10, where="x")
    assert stc.frame_offset == 0.7 and stc.frame_times[1] == pytest.approx(2.7) and stc.slice_spread == 1.5
    middle = bids.design.run_timing(raw, {"SliceTimingCorrected": True}, 2.0, 10, where="x")
    assert middle.frame_offset == pytest.approx(0.75)  # fMRIPrep's default reference: mid-way through the slices
    plain = bids.design.run_timing(raw, {}, 2.0, 10, where="x")
    assert plain.frame_offset == 0.0 and not plain.slice_timing_corrected
    assert bids.design.run_timing(raw, {}, 2.0, 10, where="x", frame_offset=0.3).frame_offset == 0.3
    with pytest.raises(bids.TRMismatchError, match="preprocessed BOLD's sidecar"):
        bids.design.run_timing(raw, {"RepetitionTime": 2.5}, 2.0, 10, where="x")


def test_inputs_travel_to_workers_by_pickle(bids_root):
    import pickle

    g = bids.prepare_glm_inputs(str(bids_root), "01", onsets="resample", confounds="simple")
    again = pickle.loads(pickle.dumps(g))
    assert again.summary() == g.summary()
    np.testing.assert_array_equal(again.read_run(1, slice(0, 32)), g.read_run(1, slice(0, 32)))
