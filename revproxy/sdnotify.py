# -*- test-case-name: tests.test_sdnotify,tests.integration.test_sdnotify -*-
"""
systemd's service notification protocol (C{sd_notify(3)}), without a
dependency: one datagram of C{KEY=VALUE} lines per state change, sent over
C{AF_UNIX} to the socket systemd names in C{$NOTIFY_SOCKET}.

With C{Type=notify} systemd waits for C{READY=1} before it calls the
service started, and shows the last C{STATUS=} line in C{systemctl
status}.  Without C{$NOTIFY_SOCKET} (not run by systemd, or not with
C{Type=notify}) every method does nothing.  Nothing here raises: a proxy
must not fail because its supervisor's socket went away.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.logger import Logger

from revproxy.formatting import shorten
from revproxy.reload import Refused, ReloadResult

_log = Logger()

#: The environment variable systemd sets for C{Type=notify} services.
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def _monotonicMicroseconds() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, the clock systemd compares
    C{MONOTONIC_USEC} with.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socketAddress(value: str) -> bytes | None:
    """
    The C{AF_UNIX} address that a C{$NOTIFY_SOCKET} value names: a path
    (C{/run/systemd/notify}), or an abstract socket (C{@name}, sent with a
    leading NUL byte); L{None} for anything else (empty, relative, or a
    C{vsock:} address, which this module does not speak).
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def oneLine(text: str) -> str:
    """
    C{text} fit for one C{KEY=VALUE} line: line breaks would start new
    assignments (a config error message must not be able to say
    C{READY=1}), so they become spaces.
    """
    return " ".join(text.splitlines()).replace("\0", " ").strip()


class Notifier:
    """
    Tells systemd what state the service is in.

    C{$NOTIFY_SOCKET} is read once, when the notifier is made.  systemd only
    accepts messages from the main process under C{NotifyAccess=main}, which
    is this one: twistd runs in the foreground, in-process.

    @ivar address: the socket's address, or L{None} when disabled.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        monotonic: Callable[[], int] = _monotonicMicroseconds,
    ) -> None:
        """
        @param environ: where to read C{NOTIFY_SOCKET} (L{os.environ} if
            L{None}).
        @param monotonic: C{CLOCK_MONOTONIC} in microseconds.
        """
        value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
        self.address = socketAddress(value)
        self._monotonic = monotonic
        self._failed = False
        if value and self.address is None:
            _log.warn(
                "Not notifying systemd: unsupported NOTIFY_SOCKET address {value!r}",
                value=value,
            )

    @property
    def enabled(self) -> bool:
        """
        Whether there is a socket to notify.
        """
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        """
        The service is up (start-up is complete, or a reload is over).
        """
        self.send("READY=1", *self._status(status))

    def reloading(self, status: str | None = None) -> None:
        """
        A reload has begun.  systemd 253 and later match it with the next
        C{READY=1} and want C{MONOTONIC_USEC} beside it; 252 ignores both
        it and the extra field.
        """
        self.send(
            "RELOADING=1",
            f"MONOTONIC_USEC={self._monotonic()}",
            *self._status(status),
        )

    def stopping(self, status: str | None = None) -> None:
        """
        A graceful shutdown has begun.
        """
        self.send("STOPPING=1", *self._status(status))

    def status(self, text: str) -> None:
        """
        Set the one-line status that C{systemctl status} shows.
        """
        self.send(*self._status(text))

    @staticmethod
    def _status(text: str | None) -> list[str]:
        return [] if text is None else [f"STATUS={oneLine(text)}"]

    def send(self, *assignments: str) -> None:
        """
        Send C{assignments} (C{KEY=VALUE} strings) as one datagram; do
        nothing when disabled.  A failure is logged once, then ignored.
        """
        address = self.address
        if address is None or not assignments:
            return
        data = ("\n".join(assignments) + "\n").encode("utf-8")
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
            ) as sock:
                # Never block the reactor on a full queue: systemd reads
                # its notification socket promptly, and a lost status line
                # is better than a stalled proxy.
                sock.sendto(data, socket.MSG_DONTWAIT, address)
        except Exception as e:
            if not self._failed:
                self._failed = True
                _log.warn(
                    "Cannot notify systemd at {address!r}: {reason} (further "
                    "failures are not logged)",
                    address=address,
                    reason=getattr(e, "strerror", None) or str(e),
                )


def servingStatus(
    sites: int, generation: int, reload: ReloadResult | None = None
) -> str:
    """
    The one-line status systemd shows for a proxy serving C{sites} sites
    from config C{generation}, after the result of a reload if there was
    one.
    """
    serving = f"serving {sites} site(s), config generation {generation}"
    if reload is None:
        return serving[0].upper() + serving[1:]
    if isinstance(reload, Refused):
        message = shorten(reload.message, 300)
    elif reload.failed:
        message = shorten("partially applied, failed: " + ", ".join(reload.failed), 300)
    else:
        return f"Reloaded: {serving}"
    return f"Reload failed, {serving}: {message}"
