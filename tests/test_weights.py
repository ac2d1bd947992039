"""Safe weight loading and architecture checks (fmri2img.models.weights)."""
from __future__ import annotations

import pytest
import torch

from fmri2img.storage.weights import open_weights
from fmri2img.models.weights import WeightsError, check_state_dict, image_generator, load_into, load_state_dict


class Net(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.a = torch.nn.Linear(3, width)
        self.b = torch.nn.Conv2d(width, 2, 3)


def test_safetensors_and_torch_round_trip(tmp_path):
    from safetensors.torch import save_file

    net = Net()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        other = load_into(Net(), str(tmp_path / name), "test net")
        for k, v in net.state_dict().items():
            torch.testing.assert_close(other.state_dict()[k], v)


def test_memory_url(tmp_path):
    import fsspec

    net = Net()
    buf = fsspec.filesystem("memory")
    with buf.open("/weights/net.pth", "wb") as f:
        torch.save(net.state_dict(), f)
    sd = load_state_dict(open_weights("memory://weights/net.pth"))
    assert set(sd) == set(net.state_dict())
    with pytest.raises(WeightsError, match="is a URL: models take a local path or opened weights"):
        load_state_dict("memory://weights/net.pth")  # models never open a URL themselves


def test_wrong_architecture_lists_keys(tmp_path):
    torch.save(Net(width=5).state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"test net do not match.*3 misshapen: a.bias \(5,\) \(expected \(4,\)\), a.weight \(5, 3\) \(expected \(4, 3\)\)"):
        load_into(Net(), str(tmp_path / "w.pth"), "test net")
    sd = Net().state_dict()
    sd.pop("b.bias")
    sd["extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): b.bias; 1 unexpected key\(s\): extra"):
        check_state_dict(Net(), sd, "test net")


def test_unsafe_pickle_and_missing_file_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_state_dict(str(tmp_path / "evil.pth"))
    with pytest.raises(WeightsError, match=r"not found: set the path in the \[weights\] section"):
        load_state_dict(str(tmp_path / "nope.pth"))


def test_image_generator_depends_on_seed_and_id_only():
    a = torch.randn(3, generator=image_generator(0, 42))
    b = torch.randn(3, generator=image_generator(0, 42))
    c = torch.randn(3, generator=image_generator(0, 43))
    d = torch.randn(3, generator=image_generator(1, 42))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)
