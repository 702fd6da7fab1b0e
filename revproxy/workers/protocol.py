# -*- test-case-name: tests.test_workers -*-
"""
What the supervisor and its worker processes say to each other: AMP
commands over a pair of pipes (the worker's descriptors 3 and 4).

Every command but L{Drain} goes from the supervisor to a worker.  AMP
values are at most 64 KiB; a config file, a certificate set or a
C{/metrics} exposition may be larger, so those travel as L{BigBytes},
cut over as many keys as they need.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.protocols import amp

from revproxy.certificates import LoadedCertificate

#: The most bytes of one AMP value.
_CHUNK = 0xFFFF


class BigBytes(amp.Argument):
    """
    Bytes of any length, as one AMP key when they fit and as C{name},
    C{name.1}, C{name.2}... when they do not.
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: amp.AMP,
    ) -> None:
        value: bytes = objects[name.decode("ascii")]
        chunks = [value[i : i + _CHUNK] for i in range(0, len(value), _CHUNK)]
        strings[name] = b"%d" % (len(chunks),)
        for index, chunk in enumerate(chunks):
            strings[name + b".%d" % (index,)] = chunk

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: amp.AMP,
    ) -> None:
        count = int(strings[name])
        objects[name.decode("ascii")] = b"".join(
            strings[name + b".%d" % (index,)] for index in range(count)
        )


class ApplyFailed(Exception):
    """
    A worker could not apply a config: the message says why.
    """


class Apply(amp.Command):
    """
    Serve this config (the first one starts the worker serving): the
    bytes of the file at C{path} as the supervisor validated them, the
    bytes its static settings come from (C{[server]}, C{[acme]}: the file
    the supervisor started with), and the generation to number it.
    Answers once the worker serves it.
    """

    arguments = [
        (b"path", amp.Unicode()),
        (b"config", BigBytes()),
        (b"static", BigBytes()),
        (b"generation", amp.Integer()),
    ]
    response = []
    errors = {ApplyFailed: b"APPLY_FAILED"}


class Certificates(amp.Command):
    """
    The ACME sites' certificates (issued or placeholder), all of them:
    L{encodeCertificates}.
    """

    arguments = [(b"certificates", BigBytes())]
    response = []


class Challenge(amp.Command):
    """
    Answer (C{present}) or stop answering an ACME challenge:
    C{kind} C{"http-01"} with C{key} the token, or C{"tls-alpn-01"} with
    C{key} the name.
    """

    arguments = [
        (b"kind", amp.Unicode()),
        (b"key", amp.Unicode()),
        (b"authorization", amp.Unicode()),
        (b"present", amp.Boolean()),
    ]
    response = []
    #: An unknown kind, an invalid token or name.
    errors = {ValueError: b"INVALID"}


class Health(amp.Command):
    """
    The upstreams' health as the supervisor's checks found it: a JSON list
    of C{[site, url, healthy]}.
    """

    arguments = [(b"states", BigBytes())]
    response = []


class Admin(amp.Command):
    """
    Run an admin command in the worker (C{stats}, C{tunnels},
    C{ratelimit}, C{reopen-logs}); its JSON answer.
    """

    arguments = [(b"name", amp.Unicode()), (b"args", amp.ListOf(amp.Unicode()))]
    response = [(b"answer", BigBytes())]


class Metrics(amp.Command):
    """
    The worker's metrics, in the Prometheus text format.
    """

    arguments = []
    response = [(b"exposition", BigBytes())]


class Ping(amp.Command):
    """
    A heartbeat: the worker answers with what it serves.
    """

    arguments = []
    response = [
        (b"pid", amp.Integer()),
        (b"generation", amp.Integer()),
        (b"connections", amp.Integer()),
    ]


def encodeCertificates(certificates: Mapping[str, LoadedCertificate]) -> bytes:
    """
    C{certificates} (by site name) as JSON: each chain and key in PEM.
    """
    return json.dumps(
        {
            site: {
                "chain": "".join(
                    c.public_bytes(serialization.Encoding.PEM).decode("ascii")
                    for c in cert.chain
                ),
                "key": cert.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode("ascii"),
                "names": list(cert.names),
                "issuer": cert.issuer,
                "source": cert.source,
                "path": cert.path,
            }
            for site, cert in certificates.items()
        }
    ).encode("ascii")


def decodeCertificates(data: bytes) -> dict[str, LoadedCertificate]:
    """
    The certificates L{encodeCertificates} gave.

    @raise ValueError: C{data} is not such an encoding.
    """
    decoded: dict[str, LoadedCertificate] = {}
    for site, fields in json.loads(data).items():
        chain = x509.load_pem_x509_certificates(fields["chain"].encode("ascii"))
        key = serialization.load_pem_private_key(
            fields["key"].encode("ascii"), password=None
        )
        decoded[site] = LoadedCertificate(
            chain=chain,
            key=key,  # type: ignore[arg-type]
            names=tuple(fields["names"]),
            not_after=chain[0].not_valid_after_utc.timestamp(),
            issuer=fields["issuer"],
            source=fields["source"],
            path=fields["path"],
        )
    return decoded
