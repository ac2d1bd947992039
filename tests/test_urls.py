"""URL parsing, the scheme registry, credentials rules, redaction and errors
of fmri2img.storage.urls (and the gdrive:// filesystem it builds)."""

from __future__ import annotations

import os
import pickle
import sys

import fsspec
import numpy as np
import pytest
import zarr

from fmri2img.storage import urls
from fmri2img.storage.secrets import redact
from fmri2img.storage.urls import (
    SCHEMES,
    BackendNotInstalledError,
    MissingCredentialsError,
    StorageError,
    StoreNotWritableError,
    UnknownSchemeError,
    check_writable,
    describe,
    filesystem,
    join,
    resolve_options,
    split_url,
    zarr_store,
)
from tests.cloud_helpers import DUMMY_SECRET, make_bucket, s3_options

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"


@pytest.fixture()
def no_aws_credentials(monkeypatch, tmp_path):
    """An environment where botocore finds no AWS credentials and no endpoint."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        empty = tmp_path / name.lower()
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# ------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("url", "scheme", "rest"),
    [
        ("s3://bucket/a/b.zarr", "s3", "bucket/a/b.zarr"),
        ("GS://bucket/x", "gs", "bucket/x"),
        ("memory://x", "memory", "x"),
        ("./runs/demo/store.zarr", "", "./runs/demo/store.zarr"),
        ("/abs/path", "", "/abs/path"),
        ("C:\\data\\x.zarr", "", "C:\\data\\x.zarr"),
        ("gdrive://root/f/x.zarr", "gdrive", "root/f/x.zarr"),
    ],
)
def test_split_url(url, scheme, rest):
    assert split_url(url) == (scheme, rest)


def test_registry_covers_every_documented_scheme():
    assert {"", "file", "memory", "s3", "gs", "gcs", "gdrive"} <= set(SCHEMES)
    assert all(callable(factory) for factory in SCHEMES.values())


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string_url_is_refused(bad):
    with pytest.raises(StorageError, match="non-empty string"):
        split_url(bad)


def test_unknown_scheme_lists_supported_schemes_and_hides_password():
    with pytest.raises(UnknownSchemeError) as info:
        zarr_store(f"ftp://alice:{SECRET}@host/x.zarr")
    message = str(info.value)
    assert SECRET not in message
    assert "'ftp'" in message and "s3://" in message and "gdrive://" in message
    assert "alice:***@host" in message


def test_local_and_file_urls_give_absolute_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = filesystem("rel/x.zarr")
    assert fs.protocol[0] == "file" and path == str(tmp_path / "rel" / "x.zarr")
    assert filesystem(f"file://{tmp_path}/y.zarr")[1] == str(tmp_path / "y.zarr")
    store = zarr_store("rel/x.zarr")
    assert isinstance(store, zarr.storage.LocalStore)
    assert str(store.root) == str(tmp_path / "rel" / "x.zarr")


def test_memory_urls_share_state_across_calls():
    url = "memory://urls-test-shared/x.zarr"
    zarr.create_array(zarr_store(url), name="a", shape=(3,), dtype="i4")[:] = [1, 2, 3]
    again = zarr.open_array(zarr_store(url, read_only=True), path="a", mode="r")
    np.testing.assert_array_equal(again[:], [1, 2, 3])
    fs, path = filesystem(url)
    assert path == "/urls-test-shared/x.zarr" and fs.exists(f"{path}/a/zarr.json")


def test_s3_and_gs_stores_use_async_filesystems(s3_endpoint):
    store = zarr_store("s3://bucket/x.zarr", s3_options(s3_endpoint))
    assert isinstance(store, zarr.storage.FsspecStore)
    assert store.fs.async_impl and store.fs.asynchronous
    assert store.path == "bucket/x.zarr"
    sync_fs, path = filesystem("s3://bucket/x.zarr/", s3_options(s3_endpoint))
    assert not sync_fs.asynchronous and path == "bucket/x.zarr"


@pytest.mark.parametrize(
    ("url", "parts", "expected"),
    [
        ("s3://b/x.zarr", ("subjects", "subj01"), "s3://b/x.zarr/subjects/subj01"),
        ("s3://b/x.zarr/", ("/a/", "b/"), "s3://b/x.zarr/a/b"),
        ("memory://m", ("k",), "memory://m/k"),
        ("runs/store.zarr", ("features", "vdvae"), "runs/store.zarr/features/vdvae"),
        ("gdrive://root/f", (), "gdrive://root/f"),
    ],
)
def test_join_keeps_scheme(url, parts, expected):
    assert join(url, *parts) == expected


# ----------------------------------------------------------- redaction


def test_redact_removes_every_secret_from_nested_options():
    options = {
        "key": "AKIAIOSFODNN7EXAMPLE",
        "secret": SECRET,
        "token": SECRET + "tok",
        "anon": False,
        "endpoint_url": f"http://user:{SECRET}pw@127.0.0.1:9000",
        "client_kwargs": {"aws_secret_access_key": SECRET, "region_name": "eu-west-1"},
        "credentials": {"private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"},
        "client_secret": SECRET,
        "password": SECRET,
        "nested": [{"api_key": SECRET}, ("x", f"https://h/p?token={SECRET}&x=1")],
        "note": "id AKIAIOSFODNN7EXAMPLE in text",
        "client_json_file_path": "/keys/sa.json",
        "fs": fsspec.filesystem("memory"),
    }
    original = repr(options)
    clean = redact(options)
    text = repr(clean)
    for secret in (SECRET, "AKIAIOSFODNN7EXAMPLE", "MIIE"):
        assert secret not in text
    assert clean["anon"] is False
    assert clean["client_kwargs"]["region_name"] == "eu-west-1"
    assert clean["endpoint_url"] == "http://user:***@127.0.0.1:9000"
    assert clean["nested"][1][1] == "https://h/p?token=***&x=1"
    assert clean["client_json_file_path"] == "/keys/sa.json"  # a path, not a secret
    assert clean["fs"] == "<MemoryFileSystem>"
    assert repr(options) == original  # the input is not modified


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"https://bob:{SECRET}@example.org/x", "https://bob:***@example.org/x"),
        (f"https://{SECRET}@github.com/o/r", "https://***@github.com/o/r"),
        ("s3://bucket/plain/path", "s3://bucket/plain/path"),
        (f"s3://b/k?X-Amz-Signature={SECRET}", "s3://b/k?X-Amz-Signature=***"),
    ],
)
def test_redact_urls(url, expected):
    assert redact(url) == expected


def test_gcs_token_modes_are_not_secrets():
    assert redact({"token": "anon"}) == {"token": "anon"}
    assert redact({"token": {"refresh_token": SECRET}}) == {"token": {"refresh_token": "***"}}


# ------------------------------------------------------------ describe


def test_describe_s3_anonymous_with_endpoint():
    text = describe("s3://bucket/x", {"anon": True, "endpoint_url": "http://127.0.0.1:5000"})
    assert text == "s3://bucket/x (anonymous, endpoint http://127.0.0.1:5000)"


def test_describe_never_shows_credentials():
    text = describe("s3://bucket/x", {"key": "AKIAIOSFODNN7EXAMPLE", "secret": SECRET})
    assert "key/secret" in text and SECRET not in text and "AKIA" not in text
    assert describe("gs://b/x", {"token": {"private_key": SECRET}}) == "gs://b/x (token from storage_options)"
    assert describe("memory://m") == "memory://m (in-memory, this process only)"
    assert describe("/data/x.zarr") == "/data/x.zarr (local)"


def test_describe_reports_missing_credentials_without_raising(no_aws_credentials):
    assert describe("s3://private/x") == "s3://private/x (no credentials found)"


# ------------------------------------------------------- S3 credentials


def test_s3_without_credentials_or_anon_is_refused(no_aws_credentials):
    with pytest.raises(MissingCredentialsError) as info:
        filesystem("s3://private-bucket/x.zarr")
    message = str(info.value)
    assert "s3://private-bucket/x.zarr" in message
    assert "{'anon': True}" in message and "AWS_ACCESS_KEY_ID" in message
    with pytest.raises(MissingCredentialsError):
        zarr_store("s3://private-bucket/x.zarr")


def test_s3_anon_or_explicit_credentials_pass(no_aws_credentials):
    assert resolve_options("s3://b/x", {"anon": True}) == {"anon": True}
    assert resolve_options("s3://b/x", {"key": "k", "secret": "s"}) == {"key": "k", "secret": "s"}
    assert resolve_options("s3://b/x", {"anon": False}) == {"anon": False}  # trust instance roles


def test_s3_credentials_from_environment_are_found(no_aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert resolve_options("s3://b/x") == {}


def test_s3_unknown_profile_is_named(no_aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(MissingCredentialsError, match="no-such-profile"):
        resolve_options("s3://b/x")


def test_nsd_bucket_defaults_to_anonymous(no_aws_credentials):
    opts = resolve_options("s3://natural-scenes-dataset/nsddata/experiments/nsd/nsd_expdesign.mat")
    assert opts == {"anon": True}
    fs, path = filesystem("s3://natural-scenes-dataset/nsddata")  # builds a client, no requests
    assert fs.anon is True and path == "natural-scenes-dataset/nsddata"
    assert "anonymous" in describe("s3://natural-scenes-dataset/nsddata")


def test_nsd_bucket_uses_credentials_when_present(no_aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert "anon" not in resolve_options("s3://natural-scenes-dataset/x")


def test_aws_endpoint_url_env_is_honoured(no_aws_credentials, monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert resolve_options("s3://envbucket/x")["endpoint_url"] == s3_endpoint
    make_bucket("s3://envbucket", {"endpoint_url": s3_endpoint})
    url = "s3://envbucket/env.zarr"
    zarr.create_array(zarr_store(url), name="a", shape=(2,), dtype="u1")[:] = [4, 5]
    np.testing.assert_array_equal(zarr.open_array(zarr_store(url), path="a", mode="r")[:], [4, 5])
    # the object really is on the moto server, read without the env var
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    fs, _ = filesystem(url, s3_options(s3_endpoint))
    assert fs.exists("envbucket/env.zarr/a/zarr.json")
    assert f"endpoint {s3_endpoint}" not in describe(url)


def test_aws_endpoint_url_s3_wins_and_options_win_over_env(no_aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    assert resolve_options("s3://b/x")["endpoint_url"] == "http://s3only:2"
    assert resolve_options("s3://b/x", {"endpoint_url": "http://mine:3"})["endpoint_url"] == "http://mine:3"


# ------------------------------------------------------------------ GCS


def test_gcs_emulator_endpoint_defaults_to_anonymous(monkeypatch):
    monkeypatch.delenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", raising=False)
    opts = resolve_options("gs://b/x", {"endpoint_url": "http://127.0.0.1:1"})
    assert opts == {"endpoint_url": "http://127.0.0.1:1", "token": "anon"}
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"


# ------------------------------------------------------ writability probe


def test_unwritable_local_path_is_reported(tmp_path):
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory")
    url = str(blocker / "store.zarr")
    with pytest.raises(StoreNotWritableError) as info:
        check_writable(url)
    assert url in str(info.value) and "Fix:" in str(info.value)


def test_missing_bucket_is_not_writable_and_secret_stays_hidden(s3_endpoint):
    opts = s3_options(s3_endpoint)
    with pytest.raises(StoreNotWritableError) as info:
        check_writable("s3://no-such-bucket-here/x.zarr", opts)
    assert DUMMY_SECRET not in str(info.value)
    assert "s3://no-such-bucket-here/x.zarr" in str(info.value)
    fs, _ = filesystem("s3://no-such-bucket-here", opts)
    assert not fs.exists("no-such-bucket-here")  # the probe never creates buckets


def test_check_writable_creates_local_directory_and_removes_probe(tmp_path):
    target = tmp_path / "new" / "store.zarr"
    check_writable(str(target))
    assert target.is_dir() and list(target.iterdir()) == []


# --------------------------------------------------- optional backends


@pytest.mark.parametrize(("url", "module", "extra"), [("s3://b/x", "s3fs", "cloud"), ("gs://b/x", "gcsfs", "cloud"),
                                                     ("gdrive://root/x", "pydrive2.fs", "drive")])
def test_missing_backend_names_the_extra(monkeypatch, url, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendNotInstalledError, match=rf"fmri2img\[{extra}\]"):
        filesystem(url, {"anon": True, "token": "anon"} if "gdrive" not in url else {})


# ---------------------------------------------------------------- gdrive


def test_gdrive_needs_a_root_and_credentials():
    pytest.importorskip("pydrive2.fs")
    with pytest.raises(StorageError, match="needs a root"):
        filesystem("gdrive:///x.zarr")
    with pytest.raises(MissingCredentialsError, match="client_json_file_path"):
        filesystem("gdrive://root/x.zarr")


def test_gdrive_given_fs_must_be_a_drive_filesystem_with_the_same_root(gdrive_target):
    _, opts = gdrive_target
    with pytest.raises(StorageError, match="expected a pydrive2 GDriveFileSystem"):
        filesystem("gdrive://root/x", {"fs": fsspec.filesystem("memory")})
    with pytest.raises(StorageError, match="rooted at 'root'"):
        filesystem("gdrive://someFolderId/x", opts)


def test_gdrive_plain_pydrive2_filesystem_is_adopted_and_overwrites_in_place():
    pytest.importorskip("pydrive2.fs")
    from pydrive2.fs import GDriveFileSystem

    from fmri2img.storage.gdrive import GDriveStoreFileSystem
    from tests.fakes.gdrive import new_fake_drive

    auth = new_fake_drive()
    fs, path = filesystem("gdrive://root/d/x.zarr", {"fs": GDriveFileSystem("root", google_auth=auth)})
    assert isinstance(fs, GDriveStoreFileSystem) and path == "root/d/x.zarr"
    fs.pipe_file(f"{path}/k", b"first version")
    fs.pipe_file(f"{path}/k", b"second")
    assert fs.cat_file(f"{path}/k") == b"second"
    assert fs.cat_file(f"{path}/k", start=1, end=4) == b"eco"
    titles = [f["title"] for f in auth.drive.files.values()]
    assert titles.count("k") == 1
    fs.rm(f"{path}", recursive=True)
    assert not fs.exists(f"{path}/k")
    fs.pipe_file(f"{path}/k", b"after delete")  # recreated folders, not the trashed ones
    assert fs.cat_file(f"{path}/k") == b"after delete"


def test_gdrive_store_pickles_to_the_same_drive(gdrive_target):
    url, opts = gdrive_target
    store = zarr_store(f"{url}/p.zarr", opts)
    zarr.create_array(store, name="a", shape=(2,), dtype="i2")[:] = [3, 4]
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(zarr.open_array(clone, path="a", mode="r")[:], [3, 4])


def test_fake_drive_query_language():
    pytest.importorskip("pydrive2.fs")
    from tests.fakes.gdrive import new_fake_drive

    auth = new_fake_drive()
    files = auth.service.files()
    folder = files.insert(body={"title": "F", "mimeType": "application/vnd.google-apps.folder"}).execute()
    a = files.insert(body={"title": "It's", "parents": [{"id": folder["id"]}]}).execute()
    files.insert(body={"title": "other", "parents": [{"id": folder["id"]}]}).execute()
    gone = files.insert(body={"title": "it's", "parents": [{"id": folder["id"]}]}).execute()
    files.trash(fileId=gone["id"]).execute()

    def titles(q, **kw):
        return sorted(f["title"] for f in files.list(q=q, **kw).execute()["items"])

    parent = f"'{folder['id']}' in parents"
    assert titles(f"trashed=false and ({parent}) and title='it\\'s'") == ["It's"]
    assert titles(f"{parent} and trashed = true") == ["it's"]
    assert titles(f"({parent} or 'nope' in parents) and not title='other'") == ["It's", "it's"]
    assert titles("'root' in parents") == ["F"]
    page = files.list(q=parent, maxResults=2).execute()
    rest = files.list(q=parent, maxResults=2, pageToken=page["nextPageToken"]).execute()
    assert len(page["items"]) == 2 and len(rest["items"]) == 1 and "nextPageToken" not in rest
    with pytest.raises(Exception, match="unsupported field"):
        files.list(q="owner='me'").execute()
    assert files.get(fileId=a["id"]).execute()["title"] == "It's"


def test_s3_profile_from_options_is_checked(no_aws_credentials, tmp_path, monkeypatch):
    with pytest.raises(MissingCredentialsError, match="'lab'"):
        resolve_options("s3://b/x", {"profile": "lab"})
    creds = tmp_path / "credentials"
    creds.write_text(f"[lab]\naws_access_key_id = k\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    assert resolve_options("s3://b/x", {"profile": "lab"}) == {"profile": "lab"}
    assert describe("s3://b/x", {"profile": "lab"}) == "s3://b/x (profile lab)"


def test_redact_keeps_ordinary_fields_that_resemble_secret_names():
    attrs = {"session": 12, "n_tokens": 77, "authors": "Ozcelik & VanRullen", "keys": ["a"], "google_auth": object()}
    clean = redact(attrs)
    assert clean["session"] == 12 and clean["n_tokens"] == 77
    assert clean["authors"] == "Ozcelik & VanRullen" and clean["keys"] == ["a"]
    assert clean["google_auth"] == "***"
