"""Open the right Transport for a device, by its inventory's ``transport`` name."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownNameError
from ..transport.local import LocalTransport
from ..transport.protocol import Transport
from .inventory import Device


def _local(device: Device) -> Transport:
    return LocalTransport(device.name)


def _ssh(device: Device) -> Transport:
    from ..transport.ssh import SshTransport  # paramiko is imported only when a lab has SSH devices

    transport: Transport = SshTransport.connect(device)
    return transport


TRANSPORTS: dict[str, Callable[[Device], Transport]] = {"local": _local, "ssh": _ssh}


def open_transport(device: Device) -> Transport:
    try:
        factory = TRANSPORTS[device.transport]
    except KeyError:
        raise UnknownNameError("transport", device.transport, list(TRANSPORTS)) from None
    return factory(device)
