"""Every error class of fmri2img survives the trip from a Dask worker as itself (issue 23, point 1).

The classes are found by walking every module of the package, so a new error class is tested
the day it is written. Each is pickled plainly, then the way distributed ships an error from a
worker (tblib's reducers, ``distributed.core.error_message`` / ``clean_exception``), and a sample
is raised inside tasks on a real process-based LocalCluster.
"""
from __future__ import annotations

import importlib
import pickle
import pkgutil

import pytest

import fmri2img

MESSAGE = "example.nii.gz not found at /data/example.nii.gz: check the path"


def _error_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(fmri2img.__path__, "fmri2img."):
        module = importlib.import_module(info.name)  # every module imports (optional extras are installed in CI)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__.startswith("fmri2img."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


ERRORS = _error_classes()


def _raised(cls: type) -> BaseException:
    """An instance of ``cls`` that was raised (with a traceback and a cause, as on a worker)."""
    try:
        try:
            raise FileNotFoundError(2, "No such file", "/data/example.nii.gz")
        except FileNotFoundError as cause:
            raise cls(MESSAGE) from cause
    except cls as exc:
        return exc


def test_the_walk_finds_the_package_errors():
    names = set(ERRORS)
    assert len(names) > 40
    assert {"fmri2img.storage.nsd._common.NSDFileMissing", "fmri2img.config.errors.ConfigError",
            "fmri2img.cluster.errors.ClusterError", "fmri2img.storage.lock.StoreLockedError"} <= names


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_class_round_trips_through_pickle(name):
    cls = ERRORS[name]
    exc = _raised(cls)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc) and back.args == exc.args


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_class_round_trips_as_distributed_ships_it(name):
    from distributed.core import clean_exception, error_message

    cls = ERRORS[name]
    exc = _raised(cls)
    msg = error_message(exc)  # what a worker sends: tblib's reducers installed on the class and its causes
    tb = msg["traceback"].data if msg["traceback"] is not None else None
    _, back, _ = clean_exception(msg["exception"].data, tb)
    assert type(back) is cls, f"{name} arrives as {type(back).__name__}: {back!r}"
    assert str(back) == str(exc)


def _raise(module: str, qualname: str, message: str):
    cls = getattr(importlib.import_module(module), qualname)
    raise cls(message)


@pytest.mark.slow
def test_errors_raised_in_tasks_on_worker_processes_arrive_as_themselves():
    from fmri2img.cluster import connect
    from fmri2img.cluster.errors import close_quietly

    client = connect("local", n_workers=1, processes=True, dashboard_address="127.0.0.1:0")
    try:
        futures = {name: client.submit(_raise, cls.__module__, cls.__qualname__, MESSAGE, pure=False)
                   for name, cls in ERRORS.items()}
        for name, fut in futures.items():
            exc = fut.exception()
            assert type(exc) is ERRORS[name], f"{name} arrives as {type(exc).__name__}: {exc!r}"
            assert str(exc) == str(ERRORS[name](MESSAGE))
    finally:
        close_quietly(client)


class _Unshippable(ValueError):
    """A library error with a custom signature and no __reduce__: it does not pickle back into itself."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.guard = __import__("threading").Lock()  # pickles nowhere, cloudpickle included


def _raise_unshippable():
    raise _Unshippable("/data/x.h5", "bad chunk")


@pytest.mark.slow
def test_an_error_that_cannot_ship_arrives_as_one_clear_task_error():
    from fmri2img.cluster import connect
    from fmri2img.cluster.errors import close_quietly
    from fmri2img.pipeline.tasks import Task, TaskFailed, run_tasks

    client = connect("local", n_workers=1, processes=True, dashboard_address="127.0.0.1:0")
    try:
        with pytest.raises(TaskFailed, match=r"^stage-x block-0 failed: _Unshippable: /data/x.h5: bad chunk$"):
            run_tasks([Task("block-0", _raise_unshippable)], stage="stage-x", client=client, progress=False)
    finally:
        close_quietly(client)
