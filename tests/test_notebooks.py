"""The notebooks: the quickstart is executed; the cluster notebook is valid and its code compiles."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["quickstart.ipynb", "nsd_on_a_cluster.ipynb"])
def test_notebook_is_valid_and_its_code_compiles(name):
    nbformat = pytest.importorskip("nbformat", reason="pip install 'fmri2img[notebooks]'")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for i, source in enumerate(code):
        ast.parse(source, filename=f"{name} cell {i}")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"


def test_cluster_notebook_covers_the_deployments():
    nbformat = pytest.importorskip("nbformat")
    text = "\n".join(c.source for c in nbformat.read(NOTEBOOKS / "nsd_on_a_cluster.ipynb", as_version=4).cells)
    for needle in ['connect("slurm"', 'job_script("slurm"', "kubernetes_spec(", 'connect("tls://',
                   "s3://natural-scenes-dataset"]:
        assert needle in text, needle


@pytest.mark.slow
def test_quickstart_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install 'fmri2img[notebooks]'")
    nbclient = pytest.importorskip("nbclient", reason="pip install 'fmri2img[notebooks]'")
    pytest.importorskip("ipykernel", reason="pip install 'fmri2img[notebooks]'")
    monkeypatch.setenv("FMRI2IMG_QUICKSTART_DIR", str(tmp_path / "qs"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders the figures
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4  # stimuli, fMRI, predictions vs truth, scores
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "predictions/subj01/pixels" in text and "done" in text  # `fmri2img status` ran
    assert (tmp_path / "qs" / "store.zarr").is_dir()
