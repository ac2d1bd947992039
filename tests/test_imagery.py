"""NSD-Imagery (issue 15, part 2): reader, mini-NSD's imagery session, ingest, decode, metrics per task.

mini-NSD with ``imagery=True`` writes the same main files as the shared tiny mini-NSD (the
imagery session draws from its own random streams), so the subject fitted by
``predicted_store`` decodes it. One repeat per condition keeps it at 90 betas.
"""
from __future__ import annotations

import shutil

import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr

from fmri2img.metrics.targets import identification_among_targets
from fmri2img.storage import nsd
from fmri2img.storage.nsd import imagery as nsdi
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, TINY, mini_nsd, pixels_decode_config, predicted_store  # noqa: F401

FS = fsspec.filesystem("file")


@pytest.fixture(scope="module")
def imagery_root(tmp_path_factory):
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd

    root = tmp_path_factory.mktemp("mini-nsd-imagery")
    manifest = generate_mini_nsd(root, MiniNSDSpec(**TINY, imagery=True, imagery_repeats=1))
    return root, manifest


@pytest.fixture(scope="module")
def imagery_store(predicted_store, imagery_root, tmp_path_factory):
    """predicted_store + subject 1's imagery ingested through the CLI + the pixel run reconstructed."""
    from fmri2img.cli.main import main
    from fmri2img.pipeline.reconstruct import reconstruct_run

    path = tmp_path_factory.mktemp("imagery") / "store.zarr"
    shutil.copytree(predicted_store.url, path)
    store = Store(str(path))
    argv = ["ingest", "--experiment", "nsdimagery", "--source", str(imagery_root[0]), "--store", str(path),
            "--subject", "1", "--no-progress"]
    assert main(argv) == 0
    reconstruct_run(store, 1, _runs()[1], images_per_task=16, progress=False)
    return store, argv


def _runs():
    from fmri2img.pipeline.reconstruct import run_spec
    from tests.minifixtures import VD_SETTINGS

    bd = run_spec("bd", {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True, "settings": dict(VD_SETTINGS)},
                  extractor_options=EXTRACTORS, weights={}, seed=7)
    px = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)
    return bd, px


def _read(root):
    layout = nsdi.ImageryLayout(str(root))
    design = nsdi.read_design(FS, layout, 1)
    return layout, design, nsdi.read_targets(FS, layout, design)


def test_reader_follows_nsd_imagery_layout(imagery_root):
    root, manifest = imagery_root
    layout, design, targets = _read(root)
    # 12 runs in NSD-Imagery's beta order; one beta per vision/imagery trial, two per attention trial
    assert design.n_betas == 90 == manifest["subjects"]["1"]["n_imagery_betas"]
    assert list(dict.fromkeys(design.run.tolist())) == [r.name for r in nsdi.RUNS]
    assert {t: int((design.task == t).sum()) for t in nsdi.TASKS} == {"vision": 18, "imagery": 36, "attention": 36}
    att = np.flatnonzero(design.task == "attention")
    assert design.epoch[att].tolist() == ["cue", "detection"] * 18
    assert (design.trial[att[::2]] == design.trial[att[1::2]]).all()
    # the cue matches the target on half the vision trials, always in imagery
    vis, img = design.task == "vision", design.task == "imagery"
    assert (design.cue[img] == design.condition[img]).all()
    assert 0 < (design.cue[vis] == design.condition[vis]).sum() < 18
    # targets: the manifest's ground truth, from file names like NSD's shared images
    assert dict(zip(targets.condition.tolist(), targets.nsd_id.tolist())) == manifest["imagery"]["targets"]
    assert targets.stim_set.tolist() == ["A"] * 6 + ["B"] * 6 + ["C"] * 6
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5") as h5:
        truth = h5["imgBrick"][sorted(targets.nsd_id.tolist())]
    pictures = nsdi.read_target_images(FS, layout, targets, TINY["side"])
    assert np.array_equal(pictures[np.argsort(targets.nsd_id)], truth)
    # hdf5 (by range) and nii.gz (streamed) give the same betas
    mask = nsd.read_mask(FS, nsd.NSDLayout(str(root)).roi(1, "nsdgeneral"))
    voxels = np.flatnonzero(mask.ravel())
    a = nsdi.read_imagery_betas(FS, layout, 1, voxels, mask.shape, design.n_betas)
    b = nsdi.read_imagery_betas(FS, layout, 1, voxels, mask.shape, design.n_betas, prefer="nii.gz")
    assert a.shape == (90, len(voxels)) and np.array_equal(a, b)


def test_simulated_imagery_is_weaker_and_most_so_in_early_areas(imagery_root):
    root, _ = imagery_root
    layout, design, targets = _read(root)
    mask = nsd.read_mask(FS, nsd.NSDLayout(str(root)).roi(1, "nsdgeneral"))
    betas = nsdi.read_imagery_betas(FS, layout, 1, np.flatnonzero(mask.ravel()), mask.shape, design.n_betas)
    with h5py.File(root / "mini_nsd_truth.hdf5") as h5:
        drive, area = h5["subj01/drive"][:], h5["subj01/area"][:]
    image = targets.nsd_id[targets.index_of(design.condition)]

    def fit(task, a):  # mean over trials of r(pattern in area a, the target's seen drive)
        rows = np.flatnonzero(design.task == task)
        return np.mean([np.corrcoef(betas[i, area == a], drive[image[i], area == a])[0, 1] for i in rows])

    ratio = {a: fit("imagery", a) / fit("vision", a) for a in (0, 4)}  # V1, higher areas
    assert fit("vision", 0) > 0.3 and 0 < ratio[0] < ratio[4] / 2 < 0.5


def test_ingest_stores_labels_and_resumes(imagery_store, imagery_root, capsys):
    from fmri2img.cli.main import main
    from fmri2img.pipeline.ingest.imagery import TARGETS

    store, argv = imagery_store
    _, design, targets = _read(imagery_root[0])
    ds = xr.open_zarr(store.url, group="subjects/subj01/imagery", consolidated=False)
    main_betas = xr.open_zarr(store.url, group="subjects/subj01/betas", consolidated=False)
    assert ds.betas.shape == (90, main_betas.sizes["voxel"])
    assert np.array_equal(ds.voxel_i.values, main_betas.voxel_i.values)
    assert [str(v) for v in ds.task.values] == design.task.tolist()
    assert [str(v) for v in ds.cue.values] == design.cue.tolist()
    assert ds.target.values.tolist() == targets.index_of(design.condition).tolist()
    t = xr.open_zarr(store.url, group=TARGETS, consolidated=False)
    assert t.images.shape == (18, TINY["side"], TINY["side"], 3) and t.has_image.values.all()
    capsys.readouterr()
    assert main(argv) == 0  # a rerun finds the betas done
    assert "already done" in capsys.readouterr().out


def test_ingest_refuses_another_voxel_space(imagery_store, imagery_root, tmp_path):
    from fmri2img.pipeline.ingest.imagery import ImageryIngestError, ingest_imagery
    from fmri2img.storage.source import Source

    store, _ = imagery_store
    other = tmp_path / "other"
    shutil.copytree(imagery_root[0] / "nsddata", other / "nsddata")
    roi = nsd.NSDLayout("").roi
    shutil.copy(imagery_root[0] / roi(2, "nsdgeneral"), other / roi(1, "nsdgeneral"))
    with pytest.raises(ImageryIngestError, match=r"selects \d+ voxels, but subjects/subj01/betas .* holds \d+ other"):
        ingest_imagery(store, Source(str(other)), 1, progress=False)


def test_decode_scores_each_task_against_its_targets(imagery_store, capsys, monkeypatch):
    from fmri2img.cli.main import main
    from fmri2img.pipeline.clinical import imagery as decode_imagery

    store, _ = imagery_store
    argv = ["decode", store.url, "--subject", "1", "--imagery", "--runs", "px", "--nets", "alexnet2",
            "--tasks", "vision,imagery", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "px/stage1/vision" in printed and "px/stage1/imagery" in printed and "attention" not in printed
    name = "nsdimagery-subj01"
    metrics = xr.open_zarr(store.url, group=f"decoded/{name}/metrics/px/stage1", consolidated=False)
    assert metrics.sizes["trial"] == 54 and set(map(str, metrics.task.values)) == {"vision", "imagery"}
    assert set(map(str, metrics.stim_set.values)) == {"A", "B", "C"}
    summary = decode_imagery.read_summary(store, name, "px", "stage1")
    for task in ("vision", "imagery"):
        s = summary[task]
        assert {"PixCorr", "SSIM (column)", "SSIM-2D", "AlexNet(2)"} <= set(s)
        assert s["AlexNet(2)"]["chance"] == 0.5 and s["AlexNet(2)"]["random_weights"]
        assert s["PixCorr"]["n_valid"] == (18 if task == "vision" else 36)
    # the pixel decoder recovers the seen targets, and the imagined ones less well
    assert summary["vision"]["PixCorr"]["mean"] > summary["imagery"]["PixCorr"]["mean"] > 0
    monkeypatch.setattr(decode_imagery, "score_targets_block", lambda *a, **k: pytest.fail("recomputed"))
    assert main(argv) == 0  # a rerun recomputes nothing
    monkeypatch.undo()

    bd, _ = _runs()  # Brain-Diffuser (tiny random models): stage 1 and the final pictures are scored too
    out = decode_imagery.decode_imagery(store, 1, [bd], name="bd-imagery", tasks=["imagery"], nets=["alexnet2"],
                                        progress=False, images_per_task=36)
    assert set(out["metrics"]) == {"bd/stage1/imagery", "bd/final/imagery"} and out["betas_per_task"] == {
        "imagery": 36}


def test_decode_imagery_refuses_bad_requests(imagery_store, capsys):
    from fmri2img.cli.main import main
    from fmri2img.pipeline.clinical import decode as dec
    from fmri2img.pipeline.clinical.imagery import decode_imagery

    store, _ = imagery_store
    assert main(["decode", store.url, "--subject", "1", "--imagery", "--betas", "x.npy", "--runs", "px"]) != 0
    assert "--imagery decodes the subject's ingested NSD-Imagery betas" in capsys.readouterr().err
    assert main(["decode", store.url, "--subject", "1", "--tasks", "vision", "--betas", "x.npy", "--runs", "px"]) != 0
    assert "tasks ['vision'] apply to NSD-Imagery only: add --imagery" in capsys.readouterr().err
    with pytest.raises(dec.DecodeError, match=r"tasks \['dreaming'\] are not NSD-Imagery tasks"):
        decode_imagery(store, 1, [_runs()[1]], tasks=["dreaming"], progress=False)


def test_decode_config_imagery_key_decodes_like_the_flag(imagery_store, tmp_path, capsys):
    """[decode] imagery = true (and tasks) in `decode --config` and in `fmri2img run`'s decode stage."""
    from fmri2img import config as cfgmod
    from fmri2img.cli.main import main
    from fmri2img.pipeline.clinical import imagery as decode_imagery
    from fmri2img.pipeline.runner import run

    store, _ = imagery_store
    text = pixels_decode_config(store.url,
                                'imagery = true\ntasks = ["vision"]\nname = "cfg-imagery"\nnets = ["alexnet2"]',
                           head=f'stages = ["decode"]\n[outputs]\nurl = "{tmp_path / "out"}"')
    (tmp_path / "run.toml").write_text(text)
    assert main(["decode", "--config", str(tmp_path / "run.toml"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "px/stage1/vision" in printed and "px/stage1/imagery" not in printed
    by_config = decode_imagery.read_summary(store, "cfg-imagery", "px", "stage1")
    flag = ["decode", store.url, "--subject", "1", "--imagery", "--tasks", "vision", "--runs", "px", "--nets",
            "alexnet2", "--name", "flag-imagery", "--no-progress"]
    assert main(flag) == 0
    assert by_config == decode_imagery.read_summary(store, "flag-imagery", "px", "stage1")
    assert set(by_config) == {"vision"} and by_config["vision"]["PixCorr"]["n_valid"] == 18
    out = run(cfgmod.loads(text.replace("cfg-imagery", "run-imagery")), progress=False)["decode"]
    assert out["betas_per_task"] == {"vision": 18} and set(out["metrics"]) == {"px/stage1/vision"}
    assert decode_imagery.read_summary(store, "run-imagery", "px", "stage1") == by_config
    # the same section without imagery needs betas, as before
    with pytest.raises(cfgmod.ConfigError, match="decode.betas: empty"):
        cfgmod.loads(text.replace("imagery = true\ntasks = [\"vision\"]\n", ""))


@pytest.mark.parametrize("lines, match", [
    ('imagery = true\nbetas = "scan.npy"', r"decode.imagery = true decodes .* but decode.betas is set too"),
    ('imagery = true\nvia = "align-to-subj02"', r"remove decode.via"),
    ('imagery = true\ntasks = ["dreaming"]', r"decode.tasks: \['dreaming'\] are not NSD-Imagery tasks"),
    ('tasks = ["vision"]\nbetas = "scan.npy"', r"decode.tasks = \['vision'\] applies to NSD-Imagery only"),
    ("imagery = 1", r"decode.imagery: expected bool"),
])
def test_decode_config_imagery_key_refuses_bad_sections(lines, match):
    from fmri2img import config as cfgmod

    with pytest.raises(cfgmod.ConfigError, match=match):
        cfgmod.loads(pixels_decode_config("./s.zarr", lines))


@pytest.fixture()
def labels_tree(imagery_root, tmp_path):
    """A writable copy of the imagery labels and targets."""
    for rel in ("nsddata/bdata/nsdimagery", "nsddata/experiments/nsdimagery"):
        shutil.copytree(imagery_root[0] / rel, tmp_path / rel)
    return tmp_path


def _edit(path, fn):
    path.write_text(fn(path.read_text()))


BAD_LABELS = {
    "no CONDITION column": (lambda t: t.replace("CONDITION", "COND"),
                            r"nsdimagery_subj01_visA.tsv has no column CONDITION \(found .*\); expected NSD-Imagery "
                            r"trial labels, tab-separated"),
    "ragged row": (lambda t: t.rstrip("\n") + "\t1\t2\n",
                   r"nsdimagery_subj01_visA.tsv row \d+ has 9 fields but the header has 7"),
    "comma-separated": (lambda t: t.replace("\t", ","), r"has no column CONDITION"),
    "empty": (lambda t: "", r"nsdimagery_subj01_visA.tsv at .* is empty"),
    "header only": (lambda t: t.splitlines()[0] + "\n", r"has a header but no trials"),
    "a target of another set": (lambda t: _first_condition(t, "L"), r"nsdimagery_subj01_visB.tsv: condition 'L' is a "
                                                                     r"target of set B here but of set A in run visA"),
    "a damaged condition": (lambda t: _first_condition(t, "?!"), r"row 2: CONDITION is '\?!'; expected the target's"),
}


def _first_condition(text, value):
    """The TSV with the first trial's CONDITION set to ``value``."""
    lines = text.splitlines()
    header, row = lines[0].split("\t"), lines[1].split("\t")
    row[header.index("CONDITION")] = value
    return "\n".join([lines[0], "\t".join(row), *lines[2:]]) + "\n"


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_reader_refuses_malformed_label_files(labels_tree, case):
    edit, message = BAD_LABELS[case]
    layout = nsdi.ImageryLayout(str(labels_tree))
    run = "visB" if case == "a target of another set" else "visA"
    _edit(labels_tree / nsdi.ImageryLayout("").behavior(1, run), edit)
    with pytest.raises(nsd.NSDFormatError, match=message):
        nsdi.read_design(FS, layout, 1)


def test_reader_refuses_missing_or_inconsistent_files(labels_tree):
    layout, rel = nsdi.ImageryLayout(str(labels_tree)), nsdi.ImageryLayout("")
    design = nsdi.read_design(FS, layout, 1)
    table = labels_tree / rel.targets_table()
    _edit(table, lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("W,")) + "\n")
    with pytest.raises(nsd.NSDFormatError, match=r"stimuli_info.csv has no row for condition\(s\) \['W'\]"):
        nsdi.read_targets(FS, layout, design)
    _edit(table, lambda t: t + t.splitlines()[1] + "\n")
    with pytest.raises(nsd.NSDFormatError, match=r"lists condition\(s\) \['L'\] twice"):
        nsdi.read_targets(FS, layout, None)
    _edit(labels_tree / rel.behavior(1, "imgB_2"), lambda t: "\n".join(t.splitlines()[:-1]) + "\n")
    with pytest.raises(nsd.NSDFormatError, match=r"nsdimagery_subj01_imgB_2.tsv: conditions .* differ from run visB"):
        nsdi.read_design(FS, layout, 1)
    (labels_tree / rel.behavior(1, "attC")).unlink()
    with pytest.raises(nsd.NSDFileMissing, match=r"nsdimagery_subj01_attC.tsv \(NSD-Imagery trial labels of run "
                                                  r"attC\) not found .* under nsddata/bdata/nsdimagery/"):
        nsdi.read_design(FS, layout, 1)


def test_reader_refuses_a_betas_file_of_another_design(imagery_root, tmp_path):
    root, _ = imagery_root
    layout = nsdi.ImageryLayout(str(root))
    mask = nsd.read_mask(FS, nsd.NSDLayout(str(root)).roi(1, "nsdgeneral"))
    with pytest.raises(nsd.NSDFormatError, match=r"holds 90 trials .* the run TSVs give 720 betas"):
        nsdi.read_imagery_betas(FS, layout, 1, np.flatnonzero(mask.ravel()), mask.shape, 720)
    missing = (r"betas_nsdimagery.nii.gz \(NSD-Imagery single-trial betas\) not found at .*; NSD-Imagery betas are "
               r"under nsddata_betas/ppdata/subj01/func1pt8mm/")
    with pytest.raises(nsd.NSDFileMissing, match=missing):
        nsdi.read_imagery_betas(FS, nsdi.ImageryLayout(str(tmp_path)), 1, np.arange(3), mask.shape, 90)


def test_identification_among_targets_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((5, 40))
    which = rng.integers(0, 4, 30)  # target 4 is never a trial's: not a candidate
    recs = targets[which] + rng.standard_normal((30, 40))
    got = identification_among_targets(targets, recs, which)
    cands = np.unique(which)
    want = [np.mean([np.corrcoef(targets[u], r)[0, 1] < np.corrcoef(targets[t], r)[0, 1] for u in cands if u != t])
            for t, r in zip(which, recs)]
    np.testing.assert_allclose(got, want)
    recs[3] = 1.0  # a constant reconstruction is excluded, not scored
    assert np.isnan(identification_among_targets(targets, recs, which)[3])


def test_experiment_is_chosen_by_name_in_config_and_cli():
    from fmri2img import config as cfgmod
    from fmri2img.cli.data import mini_nsd_spec
    from fmri2img.cli.main import build_parser

    assert cfgmod.loads('[ingest]\nexperiment = "nsdimagery"\n').ingest.experiment == "nsdimagery"
    with pytest.raises(cfgmod.ConfigError, match=r"ingest.experiment: expected one of \['nsd', 'nsdimagery'\]"):
        cfgmod.loads('[ingest]\nexperiment = "imagery"\n')
    args = build_parser().parse_args(["mini-nsd", "somewhere", "--imagery"])
    assert mini_nsd_spec(args).imagery and not mini_nsd_spec(build_parser().parse_args(["mini-nsd", "x"])).imagery
