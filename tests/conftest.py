"""Shared fixtures of every test: a fixed seed per test and no network.

Tests build tiny models from configs (``tests/helpers.py``) and never download: the
Hugging Face hub is switched to offline mode, and a socket connection to anything but the
loopback interface raises (the distributed test's gloo rendezvous on 127.0.0.1 and the
browser tests' chromedriver on localhost keep working).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket

import numpy as np
import pytest
import torch

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def pytest_configure(config) -> None:
    # Before any test module imports huggingface_hub/transformers, which read these once;
    # subprocesses started by tests inherit them.
    os.environ.update(OFFLINE_ENV)


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        return False


class NetworkAccessError(RuntimeError):
    """A test tried to reach the network."""


def _guard(method):
    def guarded(self, address, *args, **kwargs):
        if not _is_loopback(address):
            raise NetworkAccessError(f"tests must not use the network; tried to connect to "
                                     f"{address!r} (build models from tests/helpers.py)")
        return method(self, address, *args, **kwargs)
    return guarded


@pytest.fixture(scope="session", autouse=True)
def _no_network():
    """Every socket connection outside the loopback interface fails, and the hub is offline."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        try:
            import huggingface_hub.constants as hub
        except ImportError:
            pass
        else:
            mp.setattr(hub, "HF_HUB_OFFLINE", True)
        mp.setattr(socket.socket, "connect", _guard(socket.socket.connect))
        mp.setattr(socket.socket, "connect_ex", _guard(socket.socket.connect_ex))
        yield


@pytest.fixture(autouse=True)
def _seeded():
    """The same seed before every test: torch, numpy's global generator and ``random``."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
