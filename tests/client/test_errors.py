"""The daemon's exception tree is closed: every error the client package raises on purpose is
a ClientError, so one ``except ClientError`` in the CLI reports any of them."""

import inspect

import pytest

from dockercomp.client import daemon, delivery, docker_runner, errors, images, local_run, master, provision


@pytest.mark.parametrize("module", [daemon, delivery, docker_runner, errors, images, local_run, master, provision])
def test_every_client_error_is_a_client_error(module: object) -> None:
    raised = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == getattr(module, "__name__", "")
    ]
    assert all(issubclass(cls, errors.ClientError) for cls in raised), raised


def test_the_names_stay() -> None:
    for cls in (images.ImageError, delivery.DeliveryError, local_run.LocalRunError, local_run.UnitFailed):
        assert issubclass(cls, errors.ClientError)
