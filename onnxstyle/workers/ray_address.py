"""Where Ray runs for ``batch`` and ``video``: an address, checked before Ray is handed it.

``ray.init`` given an address where no Ray head answers does not fail: it rewrites a loopback
host to this node's own address and retries for minutes, printing its C++ warnings every few
seconds. So an address is first tried here, under one bound (``--ray-timeout``, default
:data:`DEFAULT_TIMEOUT` seconds, for name lookup, connect and greeting together): a TCP
connect, then the HTTP/2 greeting that every gRPC server (a head's GCS, the Ray Client
server) answers with a SETTINGS frame. An address that refuses, does not answer, or answers
with something else ends in one line naming it (a :class:`RayAddressError`, exit code 8);
Ray never sees it. (A gRPC server that is not Ray passes; ``ray.init``'s own retries then
apply. With RAY_USE_TLS set the greeting is skipped, as a TLS server does not answer it.)

The forms, from ``--ray-address`` or else ``RAY_ADDRESS``:

* none, ``""`` or ``local``: a Ray started in this process (stopped at the end);
* ``auto``: Ray's own meaning, the cluster last started on this machine by ``ray start``
  (looked up by Ray, then checked like the others);
* ``ray://host[:port]``: Ray Client (port 10001 when not given);
* ``host[:port]``: a head node's GCS (port 6379 when not given); ``[::1]:6379`` for IPv6.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ProviderError, engine_message

# Seconds for the whole check: a head on a LAN or in the same cloud region answers in
# milliseconds; a few seconds leaves room for a slow DNS without making a typo cost minutes.
DEFAULT_TIMEOUT = 5.0
CLIENT_PORT = 10001  # Ray Client's default (`ray start --head` serves it)
GCS_PORT = 6379  # a head's GCS default
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers with its own
# SETTINGS frame (type 4) before anything else, whatever the service.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4


class RayAddressError(ProviderError):
    """A Ray address that is malformed, refuses, does not answer, or is not a Ray head."""


@dataclass(frozen=True)
class RayAddress:
    """A parsed address; ``text`` is what was given, ``source`` where it came from."""

    text: str
    source: str  # "--ray-address" or "RAY_ADDRESS"
    host: str | None = None  # None: local or auto
    port: int | None = None
    client: bool = False  # ray://: Ray Client rather than a GCS

    @property
    def local(self) -> bool:
        """Start Ray in this process rather than connect to one."""
        return self.text.strip().lower() in ("", "local")

    @property
    def auto(self) -> bool:
        return self.text.strip().lower() == "auto"

    def for_ray(self) -> str | None:
        """What ``ray.init(address=...)`` is given: None starts a local Ray."""
        if self.local:
            return None
        if self.auto:
            return "auto"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{'ray://' if self.client else ''}{host}:{self.port}"


def parse(text: str, source: str = "--ray-address") -> RayAddress:
    """``text`` as a :class:`RayAddress`; a malformed one is a :class:`RayAddressError`."""
    t = text.strip()
    if t.lower() in ("", "local", "auto"):
        return RayAddress(t, source)
    client = t.lower().startswith("ray://")
    rest = t[len("ray://") :] if client else t
    if "://" in rest:
        raise RayAddressError(f"{source} {text!r}: expected ray://host:port, host:port, auto or local")
    rest = rest.rstrip("/")
    host, port = _split_host_port(rest, CLIENT_PORT if client else GCS_PORT)
    if not host or port is None or not 0 < port < 65536:
        raise RayAddressError(f"{source} {text!r}: expected ray://host:port, host:port, auto or local")
    return RayAddress(t, source, host, port, client)


def _split_host_port(rest: str, default: int) -> tuple[str, int | None]:
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ("" if not tail else "x")
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:  # a bare host, or a bare IPv6 address (no port)
        host, port_text = rest, ""
    if not port_text:
        return host, default
    return host, int(port_text) if port_text.isdigit() else None


def resolve(given: str | None, env: Mapping[str, str] | None = None) -> RayAddress:
    """The address to use: ``given`` (``--ray-address``), else ``RAY_ADDRESS``, else local."""
    env = os.environ if env is None else env
    if given is not None and given.strip():
        return parse(given, "--ray-address")
    return parse(env.get("RAY_ADDRESS", ""), "RAY_ADDRESS")


def check(address: RayAddress, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise :class:`RayAddressError` unless a gRPC server answers at ``address`` within
    ``timeout`` seconds; nothing to check for a local Ray. ``auto`` is looked up by Ray."""
    if address.local:
        return
    if address.auto:
        address = _auto(address)
        if address.auto:  # a Ray without that lookup (or none: its import error comes later)
            return
    assert address.host is not None and address.port is not None
    problem = _probe(address.host, address.port, timeout)
    if problem:
        raise RayAddressError(
            f"Ray at {address.for_ray()} ({address.source}): {problem}; is a Ray head running there? (--ray-timeout sets the wait)"
        )


def _auto(address: RayAddress) -> RayAddress:
    """``auto`` as Ray finds it (the address ``ray start`` recorded on this machine)."""
    try:
        from ray._private.services import (
            canonicalize_bootstrap_address_or_die,  # Ray's own lookup
        )
    except ImportError:
        return address
    try:
        found = canonicalize_bootstrap_address_or_die("auto")
    except Exception as e:  # noqa: BLE001 - Ray's ConnectionError when none runs here
        raise RayAddressError(f"Ray at auto ({address.source}): {engine_message(e)}") from None
    return parse(found, f"{address.source}=auto")


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when a gRPC server answers at host:port within ``timeout``, else why not.

    In a daemon thread: ``socket.create_connection``'s timeout does not cover the name
    lookup, which can block far longer; a thread left waiting on it ends with the process."""
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(_greet(host, port, timeout)), daemon=True)
    worker.start()
    worker.join(timeout)
    if not result or result[0] == "timeout":
        return f"no answer within {timeout:g} s"
    return result[0]


def _greet(host: str, port: int, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
                return None  # a TLS server does not answer a plaintext greeting: the connect is the check
            s.settimeout(max(0.05, deadline - time.monotonic()))
            s.sendall(_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.gaierror as e:
        return f"unknown host ({e.strerror})"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:  # socket.timeout is this since Python 3.10
        return "timeout"
    except OSError as e:
        return e.strerror or type(e).__name__
    if len(head) == 9 and head[3] == _SETTINGS:
        return None
    return "answers, but not as a Ray head (no gRPC)"


def init_kwargs(verbose: bool) -> dict[str, Any]:
    """Logging arguments of ``ray.init``: Ray's INFO lines and its workers' output stay out of
    the terminal unless ``--verbose``. (RAY_BACKEND_LOG_LEVEL is left alone: setting it makes
    Ray's C++ core print a line saying so; its warnings come from retries the check above avoids.)"""
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR, "configure_logging": True}
