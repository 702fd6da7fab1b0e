# -*- test-case-name: tests.test_cluster_storage -*-
"""
The fleet's ACME state in Redis (C{[cluster]}): the account key and
URIs, each site's certificate, and each site's back-off, as the nodes
share them.  Private keys are sealed (L{revproxy.cluster.secrets}) with
the cluster secret, bound to what they are: a Redis dump alone gives no
private key.

Each node keeps its own copy in C{state_dir} (L{revproxy.acme.storage});
this is only what is shared.  The keys, under C{[cluster] key_prefix}:

  - C{account}: a hash, C{key} the sealed account key (base64), and
    C{uri:DIRECTORY} the account's URI at each ACME directory;
  - C{cert:SITE}: one JSON string (written at once): the names, the
    chain, the sealed key, its dates, the directory and the node that
    ordered it;
  - C{backoff:SITE}: one JSON string, expiring when the back-off ends.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from revproxy.acme import AcmeError
from revproxy.acme.storage import BackoffRecord, CertificateRecord
from revproxy.cluster.secrets import SealedKeys, SealError

ACCOUNT_CONTEXT = "account"


class Commands(Protocol):
    """
    What this needs of L{revproxy.cluster.redis.RedisLink}.
    """

    def command(self, *args: Any) -> Deferred[Any]: ...


class ForeignSecret(AcmeError):
    """
    A sealed key in Redis does not open with this node's secret: another
    node has another C{secret_file} (or the value was altered).  Nothing
    may overwrite it from here: the two nodes would replace each other's
    certificates, each time ordering one from the CA.
    """


def certificateContext(site: str) -> str:
    """
    What a site's sealed certificate key is bound to.
    """
    return f"site:{site}"


def encodeCertificate(
    sealer: SealedKeys, site: str, record: CertificateRecord, node: str
) -> str:
    """
    C{record} as stored in Redis, its key sealed for C{site}.
    """
    sealed = sealer.seal(record.keyPEM, certificateContext(site))
    return json.dumps(
        {
            "names": list(record.names),
            "chain": record.chainPEM.decode("ascii"),
            "key": base64.b64encode(sealed).decode("ascii"),
            "notBefore": record.notBefore,
            "notAfter": record.notAfter,
            "issuedAt": record.issuedAt,
            "directory": record.directoryURL,
            "node": node,
        },
        sort_keys=True,
    )


def _fields(text: object, what: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise AcmeError(f"{what} in Redis is not a string")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AcmeError(f"{what} in Redis is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise AcmeError(f"{what} in Redis is not a JSON object")
    return value


def _number(value: dict[str, Any], name: str, what: str) -> float:
    number = value.get(name)
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or not math.isfinite(number)
    ):
        raise AcmeError(f"{what} in Redis: {name!r} is not a number")
    return float(number)


def _string(value: dict[str, Any], name: str, what: str) -> str:
    text = value.get(name)
    if not isinstance(text, str):
        raise AcmeError(f"{what} in Redis: {name!r} is not a string")
    return text


def decodeCertificate(
    sealer: SealedKeys, site: str, text: object
) -> tuple[CertificateRecord, str]:
    """
    A certificate as L{encodeCertificate} stored it, and the node that
    ordered it.

    @raise AcmeError: It is malformed, or its key does not open (another
        secret, another site's key, altered).
    """
    what = f"the certificate of site {site}"
    value = _fields(text, what)
    names = value.get("names")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise AcmeError(f"{what} in Redis: 'names' is not a list of names")
    try:
        sealed = base64.b64decode(_string(value, "key", what), validate=True)
        keyPEM = sealer.open(sealed, certificateContext(site))
        chainPEM = _string(value, "chain", what).encode("ascii")
    except (binascii.Error, UnicodeEncodeError) as e:
        raise AcmeError(f"{what} in Redis: {e}") from None
    except SealError as e:
        raise ForeignSecret(f"{what} in Redis: {e}") from None
    record = CertificateRecord(
        names=tuple(names),
        chainPEM=chainPEM,
        keyPEM=keyPEM,
        notBefore=_number(value, "notBefore", what),
        notAfter=_number(value, "notAfter", what),
        issuedAt=_number(value, "issuedAt", what),
        directoryURL=_string(value, "directory", what),
    )
    node = value.get("node")
    return record, node if isinstance(node, str) else "?"


def encodeBackoff(record: BackoffRecord, node: str) -> str:
    return json.dumps(
        {
            "failures": record.failures,
            "retryAt": record.retryAt,
            "lastError": record.lastError,
            "lastErrorAt": record.lastErrorAt,
            "node": node,
        },
        sort_keys=True,
    )


def decodeBackoff(site: str, text: object) -> tuple[BackoffRecord, str]:
    """
    A back-off as L{encodeBackoff} stored it, and the node whose order
    failed.

    @raise AcmeError: It is malformed.
    """
    what = f"the back-off of site {site}"
    value = _fields(text, what)
    failures = value.get("failures")
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise AcmeError(f"{what} in Redis: 'failures' is not a positive integer")
    node = value.get("node")
    return (
        BackoffRecord(
            failures=failures,
            retryAt=_number(value, "retryAt", what),
            lastError=_string(value, "lastError", what),
            lastErrorAt=_number(value, "lastErrorAt", what),
        ),
        node if isinstance(node, str) else "?",
    )


class SharedAcmeState:
    """
    The fleet's ACME state in Redis; every call needs Redis up (a call
    made while it is down fails at once with L{ConnectionError}).
    """

    def __init__(
        self, redis: Commands, prefix: str, sealer: SealedKeys, node: str
    ) -> None:
        """
        @param prefix: C{[cluster] key_prefix}.
        @param node: This node, recorded with what it writes.
        """
        self.redis = redis
        self.prefix = prefix
        self.sealer = sealer
        self.node = node

    def certificateKey(self, site: str) -> str:
        return f"{self.prefix}cert:{site}"

    def backoffKey(self, site: str) -> str:
        return f"{self.prefix}backoff:{site}"

    @property
    def accountKey(self) -> str:
        return f"{self.prefix}account"

    async def loadCertificate(self, site: str) -> tuple[CertificateRecord, str] | None:
        """
        C{site}'s certificate and the node that ordered it, or L{None}.

        @raise AcmeError: It cannot be used (see L{decodeCertificate}).
        """
        text = await self.redis.command("GET", self.certificateKey(site))
        if text is None:
            return None
        return decodeCertificate(self.sealer, site, text)

    async def saveCertificate(self, site: str, record: CertificateRecord) -> None:
        await self.redis.command(
            "SET",
            self.certificateKey(site),
            encodeCertificate(self.sealer, site, record, self.node),
        )

    async def loadBackoff(self, site: str) -> tuple[BackoffRecord, str] | None:
        text = await self.redis.command("GET", self.backoffKey(site))
        if text is None:
            return None
        return decodeBackoff(site, text)

    async def saveBackoff(
        self, site: str, record: BackoffRecord | None, now: float, keep: float = 0.0
    ) -> None:
        """
        Share C{record} until C{keep} seconds after its C{retryAt} (or
        clear it: L{None}).
        """
        key = self.backoffKey(site)
        if record is None:
            await self.redis.command("DEL", key)
            return
        ms = max(1000, math.ceil((record.retryAt - now + keep) * 1000))
        await self.redis.command("SET", key, encodeBackoff(record, self.node), "PX", ms)

    async def loadAccount(self) -> tuple[bytes | None, dict[str, str]]:
        """
        The fleet's account key (PEM, or L{None} when there is none yet)
        and its URIs by directory.

        @raise AcmeError: The key does not open.
        """
        reply = await self.redis.command("HGETALL", self.accountKey)
        fields: dict[Any, Any] = {}
        if isinstance(reply, dict):
            fields = reply
        elif isinstance(reply, list):
            fields = dict(zip(reply[0::2], reply[1::2], strict=False))
        uris = {
            name[len("uri:") :]: value
            for name, value in fields.items()
            if isinstance(name, str)
            and name.startswith("uri:")
            and isinstance(value, str)
        }
        sealed = fields.get("key")
        if not isinstance(sealed, str):
            return None, uris
        try:
            keyPEM = self.sealer.open(
                base64.b64decode(sealed, validate=True), ACCOUNT_CONTEXT
            )
        except binascii.Error as e:
            raise AcmeError(f"the fleet's account key in Redis: {e}") from None
        except SealError as e:
            raise ForeignSecret(f"the fleet's account key in Redis: {e}") from None
        return keyPEM, uris

    async def createAccount(self, keyPEM: bytes) -> bool:
        """
        Make C{keyPEM} the fleet's account key, unless there is one.

        @return: Whether it is now (C{False}: another node's came first).
        """
        sealed = base64.b64encode(self.sealer.seal(keyPEM, ACCOUNT_CONTEXT))
        created = await self.redis.command(
            "HSETNX", self.accountKey, "key", sealed.decode("ascii")
        )
        return bool(created)

    async def saveAccountURI(self, directory: str, uri: str) -> None:
        await self.redis.command("HSET", self.accountKey, f"uri:{directory}", uri)
