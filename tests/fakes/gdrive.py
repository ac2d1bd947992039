"""An in-memory fake of the Google Drive v2 API, injected under pydrive2.

pydrive2's ``GDriveFileSystem`` talks to Drive through ``GoogleDrive(auth)``,
which calls ``auth.service.files().<method>(...).execute(http=...)`` and, for
downloads, ``MediaIoBaseDownload`` over ``request.http.request(uri, headers=...)``.
The seam used here is the ``auth`` object: :class:`FakeDriveAuth` provides a
fake ``service`` (files().list/get/insert/update/patch/trash/untrash/delete/
get_media) and a fake HTTP object for media downloads, so the REAL pydrive2
``GoogleDriveFile``/``GDriveFileSystem`` code runs on top.

The fake keeps file bytes and metadata in dicts, evaluates the subset of the
``q`` query language that pydrive2 uses (``'ID' in parents``, ``title = '...'``
with ``\\'`` escapes, ``trashed = true|false``, ``mimeType = '...'``, ``and``,
``or``, ``not``, parentheses), pages list results with ``maxResults`` and
``pageToken``, matches titles case-insensitively like Drive does, allows
duplicate titles in one folder like Drive does, and answers unknown ids with a
404 ``HttpError`` in Drive's JSON error format.

Drives are registered by name in this process, so an auth object pickles by
name and an unpickled filesystem sees the same drive (like fsspec's memory://).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from typing import Any

import httplib2
from googleapiclient.errors import HttpError

FOLDER_MIME = "application/vnd.google-apps.folder"
ROOT_ID = "root"

_DRIVES: dict[str, FakeDrive] = {}
_COUNTER = itertools.count()


def _http_error(code: int, reason: str, message: str, uri: str = "") -> HttpError:
    resp = httplib2.Response({"status": code, "reason": reason})
    body = {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}
    return HttpError(resp, json.dumps(body).encode(), uri=uri)


# ----------------------------------------------------------------- queries

_TOKEN_RE = re.compile(r"\s*(?:(\()|(\))|('(?:\\.|[^'\\])*')|(=|!=)|([A-Za-z_]+))")


def _tokenize(q: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    q = q.strip()
    while pos < len(q):
        m = _TOKEN_RE.match(q, pos)
        if m is None or m.end() == pos:
            raise _http_error(400, "invalid", f"Invalid query near {q[pos:]!r}")
        lpar, rpar, string, op, word = m.groups()
        if string is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", string[1:-1])))
        elif op is not None:
            tokens.append(("op", op))
        elif word is not None:
            tokens.append(("word", word))
        else:
            tokens.append(("paren", lpar or rpar))
        pos = m.end()
    return tokens


class _Query:
    """Recursive-descent parser producing a predicate over file metadata."""

    def __init__(self, q: str):
        self.tokens = _tokenize(q)
        self.i = 0
        self.predicate = self._or()
        if self.i != len(self.tokens):
            raise _http_error(400, "invalid", f"Invalid query: trailing {self.tokens[self.i:]}")

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise _http_error(400, "invalid", "Invalid query: unexpected end")
        self.i += 1
        return tok

    def _or(self):
        parts = [self._and()]
        while self._peek() == ("word", "or"):
            self._take()
            parts.append(self._and())
        return lambda f: any(p(f) for p in parts)

    def _and(self):
        parts = [self._not()]
        while self._peek() == ("word", "and"):
            self._take()
            parts.append(self._not())
        return lambda f: all(p(f) for p in parts)

    def _not(self):
        if self._peek() == ("word", "not"):
            self._take()
            inner = self._not()
            return lambda f: not inner(f)
        if self._peek() == ("paren", "("):
            self._take()
            inner = self._or()
            if self._take() != ("paren", ")"):
                raise _http_error(400, "invalid", "Invalid query: missing ')'")
            return inner
        return self._term()

    def _term(self):
        first = self._take()
        if first[0] == "str":  # 'ID' in parents
            if self._take() != ("word", "in") or self._take() != ("word", "parents"):
                raise _http_error(400, "invalid", "Invalid query: expected 'in parents'")
            parent = first[1]
            return lambda f: any(p["id"] == parent for p in f["parents"])
        field = first[1]
        kind, op = self._take()
        if kind != "op":
            raise _http_error(400, "invalid", f"Invalid query: expected = after {field}")
        value_tok = self._take()
        negate = op == "!="
        if field == "trashed":
            want = value_tok[1].lower() == "true"
            return lambda f: (f["labels"]["trashed"] == want) != negate
        if field in ("title", "mimeType") and value_tok[0] == "str":
            want = value_tok[1].lower() if field == "title" else value_tok[1]
            norm = (lambda v: v.lower()) if field == "title" else (lambda v: v)
            return lambda f: (norm(f[field]) == want) != negate
        raise _http_error(400, "invalid", f"Invalid query: unsupported field {field!r}")


# ------------------------------------------------------------------ drive


class FakeDrive:
    """The server side: files by id (metadata dicts) and their bytes."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.RLock()
        self.files: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.ids = itertools.count(1)
        self.calls: list[str] = []

    def new_id(self) -> str:
        return f"{self.name}-id{next(self.ids):06d}"

    def lookup(self, file_id: str) -> dict[str, Any]:
        if file_id == ROOT_ID:
            return {"id": ROOT_ID, "title": "My Drive", "mimeType": FOLDER_MIME,
                    "parents": [], "labels": {"trashed": False}}
        if file_id not in self.files:
            raise _http_error(404, "notFound", f"File not found: {file_id}.")
        return self.files[file_id]

    def set_content(self, meta: dict[str, Any], data: bytes) -> None:
        self.content[meta["id"]] = data
        meta["fileSize"] = str(len(data))
        meta["md5Checksum"] = hashlib.md5(data).hexdigest()
        meta["downloadUrl"] = f"https://fake-drive.invalid/{self.name}/{meta['id']}?alt=media"


class _Request:
    """What ``files().<method>(...)`` returns: executes against the drive."""

    def __init__(self, fn, uri: str = ""):
        self._fn = fn
        self.uri = uri
        self.headers: dict[str, str] = {}
        self.http = None

    def execute(self, http=None, num_retries: int = 0):
        return self._fn()


def _media_bytes(media_body) -> bytes:
    return media_body.getbytes(0, media_body.size()) if media_body is not None else None


class _Files:
    def __init__(self, drive: FakeDrive):
        self.d = drive

    def _record(self, name: str) -> None:
        self.d.calls.append(name)

    def list(self, q: str = "", maxResults: int = 100, pageToken: str | None = None, **_: Any):
        def run():
            self._record("list")
            pred = _Query(q).predicate if q else (lambda f: True)
            with self.d.lock:
                items = sorted((dict(f) for f in self.d.files.values() if pred(f)), key=lambda f: f["id"])
            start = int(pageToken or 0)
            page = items[start:start + int(maxResults)]
            out = {"kind": "drive#fileList", "items": page}
            if start + int(maxResults) < len(items):
                out["nextPageToken"] = str(start + int(maxResults))
            return out
        return _Request(run)

    def get(self, fileId: str, fields: str | None = None, **_: Any):
        def run():
            self._record("get")
            with self.d.lock:
                return dict(self.d.lookup(fileId))
        return _Request(run)

    def insert(self, body: dict[str, Any] | None = None, media_body=None, **_: Any):
        def run():
            self._record("insert")
            body_ = dict(body or {})
            parents = body_.get("parents") or [{"id": ROOT_ID}]
            with self.d.lock:
                for p in parents:
                    if self.d.lookup(p["id"])["mimeType"] != FOLDER_MIME:
                        raise _http_error(400, "invalidParent", f"Parent {p['id']} is not a folder")
                meta = {"title": "Untitled", "mimeType": "application/octet-stream", **body_,
                        "id": self.d.new_id(), "parents": [{"id": p["id"]} for p in parents],
                        "labels": {"trashed": False}}
                if meta["mimeType"] != FOLDER_MIME:
                    self.d.set_content(meta, _media_bytes(media_body) or b"")
                self.d.files[meta["id"]] = meta
                return dict(meta)
        return _Request(run)

    def _modify(self, name: str, fileId: str, body, media_body=None):
        def run():
            self._record(name)
            with self.d.lock:
                meta = self.d.lookup(fileId)
                for key, value in (body or {}).items():
                    if key not in ("id", "labels", "fileSize", "md5Checksum"):
                        meta[key] = value
                if media_body is not None:
                    self.d.set_content(meta, _media_bytes(media_body))
                return dict(meta)
        return _Request(run)

    def update(self, fileId: str, body=None, media_body=None, **_: Any):
        return self._modify("update", fileId, body, media_body)

    def patch(self, fileId: str, body=None, **_: Any):
        return self._modify("patch", fileId, body)

    def _set_trashed(self, name: str, fileId: str, trashed: bool):
        def run():
            self._record(name)
            with self.d.lock:
                meta = self.d.lookup(fileId)
                meta["labels"]["trashed"] = trashed
                return dict(meta)
        return _Request(run)

    def trash(self, fileId: str, **_: Any):
        return self._set_trashed("trash", fileId, True)

    def untrash(self, fileId: str, **_: Any):
        return self._set_trashed("untrash", fileId, False)

    def delete(self, fileId: str, **_: Any):
        def run():
            self._record("delete")
            with self.d.lock:
                self.d.lookup(fileId)
                doomed = [fileId]
                while doomed:  # deleting a folder deletes its contents
                    fid = doomed.pop()
                    self.d.files.pop(fid, None)
                    self.d.content.pop(fid, None)
                    doomed += [f["id"] for f in self.d.files.values()
                               if any(p["id"] == fid for p in f["parents"])]
            return ""
        return _Request(run)

    def get_media(self, fileId: str, acknowledgeAbuse: bool = False, **_: Any):
        self._record("get_media")
        with self.d.lock:
            meta = self.d.lookup(fileId)
        if meta["mimeType"] == FOLDER_MIME:
            raise _http_error(403, "fileNotDownloadable", "Folders cannot be downloaded")
        return _Request(lambda: self.d.content[fileId], uri=meta["downloadUrl"])


class FakeService:
    """Stands in for ``googleapiclient.discovery.build("drive", "v2")``."""

    def __init__(self, drive: FakeDrive):
        self._files = _Files(drive)

    def files(self) -> _Files:
        return self._files


class FakeHttp:
    """Serves ``GET <downloadUrl>`` with ``range`` headers, like Drive's media endpoint."""

    _URI_RE = re.compile(r"^https://fake-drive\.invalid/([^/]+)/([^?]+)\?alt=media$")
    _RANGE_RE = re.compile(r"^bytes=(\d+)-(\d+)$")

    def request(self, uri: str, method: str = "GET", body=None, headers=None, **_: Any):
        m = self._URI_RE.match(uri)
        drive = _DRIVES.get(m.group(1)) if m else None
        if method != "GET" or drive is None:
            return httplib2.Response({"status": 404}), b"not found"
        with drive.lock:
            data = drive.content.get(m.group(2))
        if data is None:
            return httplib2.Response({"status": 404}), b"not found"
        rng = self._RANGE_RE.match((headers or {}).get("range", ""))
        if rng is None:
            return httplib2.Response({"status": 200, "content-length": str(len(data))}), data
        start, end = int(rng.group(1)), int(rng.group(2))
        if start >= len(data):
            return httplib2.Response({"status": 416, "content-range": f"bytes */{len(data)}"}), b""
        chunk = data[start:end + 1]
        resp = httplib2.Response(
            {"status": 206, "content-range": f"bytes {start}-{start + len(chunk) - 1}/{len(data)}"}
        )
        return resp, chunk


class FakeDriveAuth:
    """Duck-typed stand-in for an authorised ``pydrive2.auth.GoogleAuth``."""

    access_token_expired = False
    auth_method = "fake"

    def __init__(self, drive_name: str):
        self.drive = _DRIVES[drive_name]
        self.service = FakeService(self.drive)
        self.thread_local = threading.local()
        self.http = FakeHttp()

    def Get_Http_Object(self) -> FakeHttp:  # noqa: N802 (pydrive2's name)
        return FakeHttp()

    def __reduce__(self):
        return (FakeDriveAuth, (self.drive.name,))


def new_fake_drive() -> FakeDriveAuth:
    """Create a fresh, empty fake drive registered in this process; return its auth."""
    name = f"fakedrive{next(_COUNTER)}"
    _DRIVES[name] = FakeDrive(name)
    return FakeDriveAuth(name)


def fake_gdrive_filesystem(root: str = ROOT_ID):
    """A ``gdrive://`` filesystem (fmri2img's pydrive2 subclass) over a fresh fake drive."""
    from fmri2img.storage.gdrive import GDriveStoreFileSystem

    return GDriveStoreFileSystem(root, google_auth=new_fake_drive(), skip_instance_cache=True)
