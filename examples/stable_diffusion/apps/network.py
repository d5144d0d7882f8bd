"""Which network interfaces are up, and the environment that keeps the servers' libraries offline.

The web page and the server only ever need loopback unless told otherwise. Ray looks for the
machine's address by opening a socket towards a public DNS server when it starts, and its
dashboard probes the cloud metadata address; :func:`loopback_only` is how the server tells a
private loopback-only network namespace (where that is harmless) from a host on a network.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

__all__ = ["OFFLINE_ENV", "interfaces_up", "loopback_only", "set_offline_env"]

_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1

OFFLINE_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "SE_AVOID_STATS": "true",
}
"""Settings that turn off usage reports and update checks in Ray, Gradio, the Hub client, ORT and selenium."""


def interfaces_up() -> list[str]:
    """Names of the network interfaces that are up in this process's network namespace.

    Asks the kernel through a socket (``SIOCGIFFLAGS``) rather than reading ``/sys/class/net``,
    which shows the namespace ``/sys`` was mounted in, not the caller's.
    """
    names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("16sH", name.encode()[:15], 0)
            flags = struct.unpack("16sH", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)[:18])[1]
            if flags & _IFF_UP:
                names.append(name)
    return names


def loopback_only() -> bool:
    """Whether no interface but ``lo`` is up: a private network namespace, or a machine off every network."""
    return all(name == "lo" for name in interfaces_up())


def set_offline_env() -> None:
    """Put :data:`OFFLINE_ENV` into ``os.environ``, keeping values already set; call before importing the libraries."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
