"""The root conftest's guards: no network, loopback allowed, a seed per test."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

BLOCKED = dict(match="tests must not use the network")


def test_connections_outside_loopback_fail():
    for address in (("93.184.216.34", 443), ("2606:2800:220:1::", 443, 0, 0), ("example.com", 80)):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(RuntimeError, **BLOCKED):
            s.connect(address)
    with pytest.raises(RuntimeError, **BLOCKED):
        socket.create_connection(("93.184.216.34", 443), timeout=1)
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_loopback_still_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            conn, _ = server.accept()
            conn.close()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_starts_from_the_same_seed(run):
    assert torch.equal(torch.randn(3), torch.randn(3, generator=torch.Generator().manual_seed(0)))
    assert np.random.rand() == np.random.RandomState(0).rand()
    torch.randn(run)  # draws that must not leak into the next test
    np.random.rand(run)
