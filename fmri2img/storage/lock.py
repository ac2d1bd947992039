"""One writer at a time: a lock inside the store that names its holder, renewed as a lease.

Two runs on one store would both rewrite the same templates (a template write resets its
group's completion records), so every command that writes takes this lock first and a
second one is refused with the holder named (user, host, process, command, start time, last
renewal).

The lock is the group ``_lock`` (attributes only, so ``xarray``/``zarr`` readers and
:meth:`Store.list_groups` ignore it).  It is created exclusively: on local disk by an
exclusive create, on S3 and GCS by a conditional write (``If-None-Match: *``, a generation
match of 0), and read back to check that ours won (stores without either, where two creates
within one round trip cannot be told apart).

While the run lives the lock is a lease: a thread rewrites its ``renewed`` time every
:data:`LEASE_S` seconds (30; ``FMRI2IMG_LOCK_LEASE_S`` changes it), one small write.  A lock
not renewed for :data:`STALE_PERIODS` periods (2 minutes) belongs to a run that is dead (killed,
its machine gone); it is reported as stale with its owner and last renewal, and taken over only
when the user says so (``--take-over-stale-lock``, :func:`taking_over_stale`) or with
``fmri2img unlock STORE``.  A lock left by a killed run on this host is taken over at once when
its process is gone.  Renewal times are the holders' clocks: machines sharing a store should
keep time (NTP); the stale threshold tolerates skew well below two minutes.
"""
from __future__ import annotations

import contextvars
import getpass
import json
import logging
import os
import socket
import sys
import threading
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
#: seconds between two renewals of a run's lease (the environment variable overrides it, e.g. for tests)
LEASE_S = float(os.environ.get("FMRI2IMG_LOCK_LEASE_S", "30"))
#: a lease not renewed for this many of its periods is stale
STALE_PERIODS = 4

_TAKE_OVER: contextvars.ContextVar[bool] = contextvars.ContextVar("fmri2img_take_over_stale", default=False)


class StoreLockedError(urls.StorageError):
    """Another run holds the store's lock; the message names it and what to do."""


@contextmanager
def taking_over_stale(enabled: bool = True) -> Iterator[None]:
    """Within the block a stale lock (:func:`is_stale`) is taken over, not refused (``--take-over-stale-lock``)."""
    token = _TAKE_OVER.set(bool(enabled))
    try:
        yield
    finally:
        _TAKE_OVER.reset(token)


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone, or no permission: unknown
        return None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def this_holder(command: str | None = None) -> dict[str, Any]:
    """Who is taking the lock: user, host, pid (+ start time), command, time, lease, a token."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        user = "?"
    now = time.time()
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": _process_started(os.getpid()),
            "command": secrets.redact(command if command is not None else " ".join(sys.argv))[:300],
            "since": _utc(now), "token": uuid.uuid4().hex, "lease_s": LEASE_S, "renewed": now, "renewals": 0}


def lease_age(h: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the holder last renewed its lease (``None``: a lock without a lease)."""
    renewed = h.get("renewed")
    if not isinstance(renewed, (int, float)) or isinstance(renewed, bool):
        return None
    return max(0.0, (time.time() if now is None else now) - float(renewed))


def is_stale(h: dict[str, Any], now: float | None = None) -> bool:
    """The holder has not renewed its lease for :data:`STALE_PERIODS` of its periods."""
    age = lease_age(h, now)
    period = h.get("lease_s")
    return age is not None and isinstance(period, (int, float)) and age > STALE_PERIODS * float(period)


def describe_holder(h: dict[str, Any]) -> str:
    """``user@host process PID (`command`, since T; lease renewed N s ago, every P s)``."""
    age = lease_age(h)
    lease = "" if age is None else (f"; lease last renewed {_utc(float(h['renewed']))}, {age:.0f} s ago, every "
                                    f"{float(h.get('lease_s') or 0):g} s")
    return (f"{h.get('user', '?')}@{h.get('host', '?')} process {h.get('pid', '?')} "
            f"(`{h.get('command', '?')}`, since {h.get('since', '?')}{lease})")


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


def _create(store: "Store", holder: dict[str, Any]) -> None:
    """Write the lock document unless one exists: a conditional write on S3/GCS, an exclusive create elsewhere."""
    data = _document(holder)
    if urls.split_url(store.url)[0] in ("s3", "gs"):
        fs, root = urls.filesystem(store.url, dict(store.storage_options) or None)
        path = f"{root.rstrip('/')}/{LOCK_KEY}"
        fs.invalidate_cache(path)
        try:  # the check first: a service or emulator that ignores the precondition still refuses the common case
            if not fs.exists(path):
                fs.pipe_file(path, data, mode="create")
        except FileExistsError:  # the precondition failed: someone created it since
            pass
        return
    sync(store.zarr_store().set_if_not_exists(LOCK_KEY, default_buffer_prototype().buffer.from_bytes(data)))


def _write(store: "Store", holder: dict[str, Any]) -> None:
    sync(store.zarr_store().set(LOCK_KEY, default_buffer_prototype().buffer.from_bytes(_document(holder))))


def acquire(store: "Store", command: str | None = None, *, take_over_stale: bool | None = None) -> dict[str, Any]:
    """Take the lock of ``store`` or raise :class:`StoreLockedError` naming the holder.

    ``take_over_stale``: take over a lock whose lease is stale (default: as :func:`taking_over_stale` says).
    """
    take_over = _TAKE_OVER.get() if take_over_stale is None else take_over_stale
    me = this_holder(command)
    holder = None
    for _ in range(2):
        _create(store, me)
        holder = read_holder(store)
        if holder is not None and holder.get("token") == me["token"]:
            logger.debug("lock of %s taken by %s", store.describe(), describe_holder(me))
            return me
        if holder is not None and (_is_dead_here(holder) or take_over and is_stale(holder)):
            why = "whose process is gone" if _is_dead_here(holder) else "whose lease is stale (--take-over-stale-lock)"
            logger.warning("%s: taking over the lock left by %s, %s", store.describe(), describe_holder(holder), why)
            sync(store.zarr_store().delete_dir(LOCK_DIR))
            continue
        break
    raise _locked(store, holder or {})


def _locked(store: "Store", holder: dict[str, Any]) -> StoreLockedError:
    url = secrets.redact(store.url)
    if is_stale(holder):
        return StoreLockedError(
            f"{store.describe()} is locked by {describe_holder(holder)}, but that lease is stale: not renewed for "
            f"more than {STALE_PERIODS} of its periods, so that run is most likely dead (killed, or its machine is "
            f"gone). Fix: if it is, rerun this command with --take-over-stale-lock (or remove the lock with "
            f"`fmri2img unlock {url}`); finished regions are kept and the run resumes")
    return StoreLockedError(
        f"{store.describe()} is in use by {describe_holder(holder)}: two runs on one store would rewrite "
        f"each other's templates. Fix: wait for that run to finish; if it is no longer running (killed, or its "
        f"machine is gone), its lease goes stale {STALE_PERIODS} periods after its last renewal and this command "
        f"then says so, or remove the lock now with `fmri2img unlock {url}`")


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


class Lease(threading.Thread):
    """Renews ``me``'s lock every ``period`` seconds until :meth:`stop` (a daemon: it dies with the process)."""

    def __init__(self, store: "Store", me: dict[str, Any], period: float | None = None) -> None:
        super().__init__(name="fmri2img-lock-lease", daemon=True)
        self.store, self.me = store, me
        self.period = float(period if period is not None else me.get("lease_s") or LEASE_S)
        self._stopped = threading.Event()
        self.lost: dict[str, Any] | None = None

    def run(self) -> None:
        while not self._stopped.wait(self.period):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried next period
                logger.warning("could not renew the lock of %s (%s); retrying in %g s", self.store.describe(), exc,
                               self.period)
            if self.lost is not None:
                return

    def renew(self) -> None:
        holder = read_holder(self.store)
        if holder is None or holder.get("token") != self.me["token"]:
            self.lost = holder or {}
            logger.error("%s: this run's lock was %s; another run may now write to the store: stop one of them",
                         self.store.describe(), f"taken over by {describe_holder(holder)}" if holder else "removed")
            return
        if self._stopped.is_set():
            return
        self.me.update(renewed=time.time(), renewals=int(self.me.get("renewals", 0)) + 1)
        _write(self.store, self.me)

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=max(5.0, self.period))


@contextmanager
def held(store: "Store", command: str | None = None, *, take_over_stale: bool | None = None
         ) -> Iterator[dict[str, Any]]:
    """Hold the lock of ``store`` for the duration of the block, renewing its lease (see :func:`acquire`)."""
    me = acquire(store, command, take_over_stale=take_over_stale)
    lease = Lease(store, me)
    lease.start()
    try:
        yield me
        store.consolidate()  # readers' consolidated metadata, written while no other writer can start
    finally:
        lease.stop()
        try:
            release(store, me)
        except Exception as exc:  # noqa: BLE001 - never hide the block's own error
            logger.warning("could not release the lock of %s (%s): remove it with `fmri2img unlock %s`",
                           store.describe(), exc, secrets.redact(store.url))
