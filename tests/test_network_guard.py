"""The suite reaches loopback only: anything else fails at once, as on an offline machine."""

from __future__ import annotations

import socket

import pytest


def test_a_name_off_the_machine_does_not_resolve_and_an_address_off_it_does_not_connect() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("openaipublic.blob.core.windows.net", 443)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed anyway
    assert socket.getaddrinfo("localhost", 80)  # loopback is fine
