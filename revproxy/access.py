# -*- test-case-name: tests.test_access -*-
"""
Access control at request time: client addresses allowed or denied, HTTP
basic authentication against an htpasswd file (checked off the reactor
thread, failures rate-limited), and the answer of a forward-auth service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from revproxy.htpasswd import DUMMY_HASH, checkPassword

if TYPE_CHECKING:
    from revproxy.config import AccessRules, BasicAuth

_log = Logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Why a request was refused, as the metrics count it.
DENIED_ADDRESS = "address"
DENIED_BASIC_AUTH = "basic_auth"
DENIED_FORWARD_AUTH = "forward_auth"


class ChecksBusy(Exception):
    """
    Too many password checks wait already: this one is not made.
    """


def addressAllowed(rules: AccessRules, clientIP: str) -> bool:
    """
    Whether C{clientIP} may reach what C{rules} protect, as nginx's
    C{allow} and C{deny}: the first list (in the order the config wrote
    them) that names the client decides; a client neither names is let in
    only when there is no C{allow} list.  An IPv4 address mapped into IPv6
    is matched as the IPv4 address.
    """
    if not rules.allow and not rules.deny:
        return True
    try:
        address = ipaddress.ip_address(clientIP)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    lists = [(rules.allow, True), (rules.deny, False)]
    if not rules.allow_first:
        lists.reverse()
    for networks, verdict in lists:
        if _names(networks, address):
            return verdict
    return not rules.allow


def _names(
    networks: Iterable[Network], address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> bool:
    return any(
        address.version == network.version and address in network
        for network in networks
    )


def basicCredentials(header: bytes | None) -> tuple[str, bytes] | None:
    """
    The user and password of an C{Authorization: Basic} value, or L{None}
    when there is none or it is malformed.
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def challenge(basic: BasicAuth) -> bytes:
    """
    The C{WWW-Authenticate} value asking for C{basic}'s credentials.
    """
    return b'Basic realm="%s", charset="UTF-8"' % basic.realm.encode("utf-8")


class FailureLimit:
    """
    Failed basic-auth attempts per client address: past C{limit} failures
    within C{window} seconds, the client is refused (429) until the window
    ends.  Bounded to C{size} addresses (the oldest forgotten first).
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: int = 10,
        window: float = 60.0,
        size: int = 10000,
    ) -> None:
        self._clock = clock
        self.limit = limit
        self.window = window
        self._size = size
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked(self, client: str) -> float | None:
        """
        How many seconds C{client} stays refused, or L{None} if it may try.
        """
        entry = self._failures.get(client)
        if entry is None:
            return None
        start, count = entry
        left = start + self.window - self._clock.seconds()
        if left <= 0:
            del self._failures[client]
            return None
        return left if count >= self.limit else None

    def failed(self, client: str) -> None:
        now = self._clock.seconds()
        start, count = self._failures.pop(client, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._failures[client] = (start, count + 1)
        while len(self._failures) > self._size:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class PasswordChecks:
    """
    Checks passwords against htpasswd hashes off the reactor thread
    (C{inThread}: bcrypt or argon2 take 100-250 ms), remembering the
    successes for C{ttl} seconds so that a browser, which sends its
    credentials with every request, pays once; an unknown user is checked
    against a dummy hash, so it costs what a wrong password costs.
    """

    def __init__(
        self,
        clock: IReactorTime,
        inThread: Callable[[Callable[[], bool]], Deferred[bool]],
        ttl: float = 300.0,
        size: int = 10000,
    ) -> None:
        self._clock = clock
        self._inThread = inThread
        self._ttl = ttl
        self._size = size
        self._good: OrderedDict[bytes, float] = OrderedDict()

    def check(
        self, users: dict[str, str], user: str, password: bytes
    ) -> Deferred[bool]:
        """
        Whether C{password} is C{user}'s among C{users}.
        """
        stored = users.get(user)
        hashed = DUMMY_HASH if stored is None else stored
        key = hashlib.sha256(
            hashed.encode() + b"\0" + user.encode() + b"\0" + password
        ).digest()
        until = self._good.get(key)
        now = self._clock.seconds()
        if until is not None and until > now and stored is not None:
            return succeed(True)

        def verify() -> bool:
            return checkPassword(hashed, password) and stored is not None

        def remember(ok: bool) -> bool:
            if ok:
                self._good[key] = self._clock.seconds() + self._ttl
                self._good.move_to_end(key)
                while len(self._good) > self._size:
                    self._good.popitem(last=False)
            return ok

        return self._inThread(verify).addCallback(remember)
