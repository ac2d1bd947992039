"""One writer at a time: a lock inside the store that names its holder.

Two runs on one store would both rewrite the same templates (a template write resets its
group's completion records), so every command that writes takes this lock first and a
second one is refused with the holder named (user, host, process, command, start time).

The lock is the group ``_lock`` (attributes only, so ``xarray``/``zarr`` readers and
:meth:`Store.list_groups` ignore it).  It is created with an exclusive create where the
store has one (local disk) and read back to check that ours won (object stores, where two
creates within one round trip cannot be told apart: there it is a guard against the common
case, two runs started by hand, not a consensus protocol).  A lock left by a killed run on
this host is taken over when its process is gone; one left by another machine is removed
with ``fmri2img unlock STORE`` once that run is known to be dead.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from fmri2img.storage import secrets
from fmri2img.storage import urls

if TYPE_CHECKING:  # pragma: no cover
    from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

LOCK_DIR = "_lock"
LOCK_KEY = f"{LOCK_DIR}/zarr.json"
ATTR = "fmri2img_lock"


class StoreLockedError(urls.StorageError):
    """Another run holds the store's lock; the message names it and what to do."""


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone, or no permission: unknown
        return None


def this_holder(command: str | None = None) -> dict[str, Any]:
    """Who is taking the lock: user, host, pid (+ start time), command, time, a token."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        user = "?"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": _process_started(os.getpid()),
            "command": secrets.redact(command if command is not None else " ".join(sys.argv))[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}


def describe_holder(h: dict[str, Any]) -> str:
    return (f"{h.get('user', '?')}@{h.get('host', '?')} process {h.get('pid', '?')} "
            f"(`{h.get('command', '?')}`, since {h.get('since', '?')})")


def _document(holder: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {ATTR: holder}}).encode()


def read_holder(store: "Store") -> dict[str, Any] | None:
    """The holder recorded in the store's lock, or ``None`` when unlocked."""
    raw = sync(store.zarr_store(read_only=True).get(LOCK_KEY, prototype=default_buffer_prototype()))
    if raw is None:
        return None
    try:
        return dict(json.loads(raw.to_bytes())["attributes"][ATTR])
    except (ValueError, KeyError, TypeError):
        return {"command": "unreadable lock document"}


def _is_dead_here(h: dict[str, Any]) -> bool:
    """The holder ran on this host and its process is gone (or the pid now belongs to another process)."""
    if h.get("host") != socket.gethostname() or not isinstance(h.get("pid"), int):
        return False
    started = _process_started(h["pid"])
    if started is None:
        return True
    recorded = h.get("pid_started")
    return recorded is not None and abs(started - float(recorded)) > 1.0


def acquire(store: "Store", command: str | None = None) -> dict[str, Any]:
    """Take the lock of ``store`` or raise :class:`StoreLockedError` naming the holder."""
    zstore = store.zarr_store()
    me = this_holder(command)
    buf = default_buffer_prototype().buffer.from_bytes(_document(me))
    for _ in range(2):
        sync(zstore.set_if_not_exists(LOCK_KEY, buf))
        holder = read_holder(store)
        if holder is not None and holder.get("token") == me["token"]:
            logger.debug("lock of %s taken by %s", store.describe(), describe_holder(me))
            return me
        if holder is not None and _is_dead_here(holder):
            logger.warning("%s: taking over the lock left by %s, whose process is gone", store.describe(),
                           describe_holder(holder))
            sync(zstore.delete_dir(LOCK_DIR))
            continue
        break
    raise StoreLockedError(
        f"{store.describe()} is in use by {describe_holder(holder or {})}: two runs on one store would rewrite "
        f"each other's templates. Fix: wait for that run to finish; if it is no longer running (killed, or its "
        f"machine is gone), remove the lock with `fmri2img unlock {secrets.redact(store.url)}`"
    )


def release(store: "Store", me: dict[str, Any]) -> None:
    """Remove the lock if it is still ours."""
    holder = read_holder(store)
    if holder is not None and holder.get("token") == me.get("token"):
        sync(store.zarr_store().delete_dir(LOCK_DIR))


def unlock(store: "Store") -> dict[str, Any] | None:
    """Remove the lock whoever holds it; return the holder it named (``None``: was not locked)."""
    holder = read_holder(store)
    if holder is not None:
        sync(store.zarr_store().delete_dir(LOCK_DIR))
    return holder


@contextmanager
def held(store: "Store", command: str | None = None) -> Iterator[dict[str, Any]]:
    """Hold the lock of ``store`` for the duration of the block."""
    me = acquire(store, command)
    try:
        yield me
        store.consolidate()  # readers' consolidated metadata, written while no other writer can start
    finally:
        try:
            release(store, me)
        except Exception as exc:  # noqa: BLE001 - never hide the block's own error
            logger.warning("could not release the lock of %s (%s): remove it with `fmri2img unlock %s`",
                           store.describe(), exc, secrets.redact(store.url))
