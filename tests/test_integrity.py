"""An honest store (issue 12): foreign targets refused before writing, checksummed chunks,
``status --verify`` naming bad chunks, decode errors naming array, chunk and fix."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from fmri2img.cli.main import main
from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.storage import identity
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from fmri2img.storage.verify import ChunkDecodeError
from tests import storecompare
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)

BETAS = "subjects/subj01/betas"


@pytest.fixture(scope="module")
def reference(mini_nsd, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("ref") / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    return store


def _copy(store: Store, tmp_path) -> Store:
    target = tmp_path / "copy.zarr"
    shutil.copytree(store.url, target)
    return Store(str(target))


# -- item 3: foreign targets -------------------------------------------------------------------

def _v2_store(path):
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("temperature", shape=(4,), dtype="f4")[:] = 1.0
    return path


def _foreign_v3_store(path):
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.attrs["project"] = "climate"
    g.create_array("temperature", shape=(4,), dtype="f4")[:] = 1.0
    return path


def _folder_of_files(path):
    path.mkdir()
    (path / "notes.txt").write_text("my thesis")
    return path


@pytest.mark.parametrize("make, expected", [(_v2_store, "Zarr v2"), (_foreign_v3_store, "not an fmri2img store"),
                                            (_folder_of_files, "not an fmri2img store")])
def test_foreign_target_is_refused_before_anything_is_written(mini_nsd, tmp_path, make, expected):
    target = make(tmp_path / "other.zarr")
    before = storecompare.files(target)
    with pytest.raises(identity.ForeignStoreError, match=expected) as err:
        ingest(Store(str(target)), Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    assert "Nothing was written" in str(err.value) and "Fix:" in str(err.value)
    assert storecompare.files(target) == before


def test_status_names_a_v2_store_and_does_not_call_it_empty(tmp_path, capsys):
    target = _v2_store(tmp_path / "v2.zarr")
    assert main(["status", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Zarr v2" in err and "empty (nothing ingested" not in err


def test_store_that_is_a_regular_file_gives_one_error_line(mini_nsd, tmp_path, capsys):
    target = tmp_path / "store.zarr"
    target.write_text("not a store")
    assert main(["status", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and "regular file" in err and "Traceback" not in err
    with pytest.raises(identity.ForeignStoreError, match="regular file"):
        ingest(Store(str(target)), Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    assert target.read_text() == "not a store"


def test_a_new_store_is_marked_and_accepted_again(reference):
    assert identity.inspect(reference).kind == "fmri2img"
    root = zarr.open_group(reference.url, mode="r", zarr_format=3)
    assert root.attrs[identity.MARKER] == identity.STORE_FORMAT


# -- item 4: checksums, verify, decode errors ---------------------------------------------------

def test_every_written_array_carries_a_crc32c_checksum(reference):
    root = zarr.open_group(reference.url, mode="r", zarr_format=3)
    arrays = [(p, n) for p, n in root.members(max_depth=None) if isinstance(n, zarr.Array) and p != "_runlog"]
    assert len(arrays) > 20
    for path, arr in arrays:
        assert any(isinstance(c, Crc32cCodec) for c in arr.metadata.codecs), path


def _chunk(store: Store, array: str, key: str):
    from pathlib import Path

    return Path(store.url) / array / key


def test_verify_names_flipped_truncated_and_missing_chunks_and_repair_rewrites_them(reference, mini_nsd, tmp_path,
                                                                                      capsys):
    store = _copy(reference, tmp_path)
    assert main(["status", store.url, "--verify"]) == 0
    assert "matches its checksum" in capsys.readouterr().out

    flipped = _chunk(store, f"{BETAS}/betas", "c/1/0")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    truncated = _chunk(store, "subjects/subj01/train/fmri", "c/0/0")
    truncated.write_bytes(truncated.read_bytes()[:-7])
    _chunk(store, "stimuli/images", "c/1/0/0/0").unlink()
    before = storecompare.records(store)

    assert main(["status", store.url, "--verify"]) == 1
    out, err = capsys.readouterr()
    assert f"{BETAS}/betas chunk c/1/0 (region session-02)" in out
    assert "subjects/subj01/train/fmri chunk c/0/0" in out
    assert "stimuli/images chunk c/1/0/0/0 (region images-0001): missing" in out
    assert "--verify --repair" in err and "ingest" in err
    assert storecompare.records(store).keys() == before.keys()  # verify alone changes nothing
    for group, values in before.items():
        assert np.array_equal(storecompare.records(store)[group], values)

    assert main(["status", store.url, "--verify", "--repair"]) == 1
    capsys.readouterr()
    assert store.progress(BETAS) == (3, 4)
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    assert main(["status", store.url, "--verify"]) == 0
    storecompare.assert_same_arrays(store, reference)


def test_a_decode_error_names_the_array_the_chunk_and_the_fix(reference, tmp_path):
    store = _copy(reference, tmp_path)
    flipped = _chunk(store, f"{BETAS}/betas", "c/2/0")
    data = bytearray(flipped.read_bytes())
    data[5] ^= 0x01
    flipped.write_bytes(bytes(data))
    with pytest.raises(ChunkDecodeError) as err:
        store.open_dataset(BETAS).betas.values
    message = str(err.value)
    assert f"chunk c/2/0 of array {BETAS}/betas" in message
    assert "--verify --repair" in message and "ingest stage" in message
    with pytest.raises(ChunkDecodeError, match="c/2/0"):
        store.group(BETAS)["betas"][:]


def test_status_json_verify(reference, tmp_path, capsys):
    store = _copy(reference, tmp_path)
    _chunk(store, f"{BETAS}/betas", "c/0/0").write_bytes(b"garbage")
    assert main(["status", store.url, "--verify", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out.splitlines()[0])
    assert [(r["array"], r["chunk"]) for r in rows] == [("betas", "c/0/0")]
