"""Files that carry a pickle payload are refused without running it (issue 12 item 9).

Each payload, when unpickled, writes a marker file; every test asserts the loader refuses the
file with an error naming it and that the marker was never written.
"""
from __future__ import annotations

import fsspec
import numpy as np
import pytest
import torch

from fmri2img.models.weights import WeightsError, load_state_dict
from fmri2img.storage import nsd


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _pickled_checkpoint(path, marker) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)


def test_payload_is_live(tmp_path):
    """The payload really runs when unpickled unsafely (so the tests below prove something)."""
    marker = tmp_path / "ran"
    _pickled_checkpoint(tmp_path / "w.pth", marker)
    torch.load(tmp_path / "w.pth", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["vdvae.pth", "alexnet.pt", "model.th", "swav.bin"])
def test_weights_file_with_a_pickle_payload_is_refused(tmp_path, name):
    marker = tmp_path / "ran"
    _pickled_checkpoint(tmp_path / name, marker)
    with pytest.raises(WeightsError, match="weights_only=True") as err:
        load_state_dict(str(tmp_path / name))
    assert name in str(err.value)
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused(tmp_path):
    marker = tmp_path / "ran"
    _pickled_checkpoint(tmp_path / "model.safetensors", marker)
    with pytest.raises(WeightsError, match="not a readable safetensors file") as err:
        load_state_dict(str(tmp_path / "model.safetensors"))
    assert "model.safetensors" in str(err.value)
    assert not marker.exists()


def test_pytorch_model_bin_in_a_clip_directory_is_refused(tmp_path):
    from fmri2img.models import clip

    model, tok = clip.tiny_clip(seed=0)
    folder = tmp_path / "clip"
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    marker = tmp_path / "ran"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["payload"] = Payload(marker)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError) as err:
        clip.load_clip(str(folder), device="cpu")
    assert "pytorch_model.bin" in str(err.value)
    assert not marker.exists()


def test_object_captions_npy_with_a_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "ran"
    captions = np.empty((3, 5), dtype=object)
    captions[:] = "a cat"
    captions[1, 2] = Payload(marker)
    path = tmp_path / "COCO_73k_annots_curated.npy"
    np.save(path, captions, allow_pickle=True)
    with pytest.raises(nsd.NSDFormatError) as err:
        nsd.read_captions(fsspec.filesystem("file"), str(path), np.array([0, 1, 2]))
    assert "COCO_73k_annots_curated.npy" in str(err.value) and "object" in str(err.value)
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # the file does carry a live payload
    assert marker.exists()
