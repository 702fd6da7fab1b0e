"""
Tests for L{revproxy.cluster.storage}: the fleet's ACME state as stored in
Redis (a fake one, L{tests.clusterfakes.FakeRedis}), private keys sealed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme import AcmeError
from revproxy.acme.storage import BackoffRecord, CertificateRecord
from revproxy.cluster.secrets import SealedKeys
from revproxy.cluster.storage import (
    ACCOUNT_CONTEXT,
    SharedAcmeState,
    certificateContext,
    decodeBackoff,
    decodeCertificate,
    encodeBackoff,
    encodeCertificate,
)
from tests.clusterfakes import FakeRedis

SECRET = bytes(range(32)) + b"-the fleet's secret"
OTHER = b"another secret, long enough to be one!!"
NOW = 1_800_000_000.0
DIRECTORY = "https://acme.test/directory"


def pemKey() -> bytes:
    """
    A new EC P-256 private key, PKCS8 PEM.
    """
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate(issuedAt: float = NOW) -> CertificateRecord:
    """
    A record as the manager keeps one (its chain is not parsed here).
    """
    return CertificateRecord(
        names=("a.test", "www.a.test"),
        chainPEM=b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        keyPEM=pemKey(),
        notBefore=issuedAt - 3600.5,
        notAfter=issuedAt + 90 * 86400,
        issuedAt=issuedAt,
        directoryURL=DIRECTORY,
    )


BACKOFF = BackoffRecord(
    failures=3, retryAt=NOW + 240.5, lastError="a.test: refused (café)", lastErrorAt=NOW
)


def run(case: SynchronousTestCase, coroutine: Any) -> Any:
    """
    The result of C{coroutine}, which must have ended at once.
    """
    d: Deferred[Any] = ensureDeferred(coroutine)
    return case.successResultOf(d)


def failure(case: SynchronousTestCase, coroutine: Any, *kinds: type) -> Any:
    """
    The exception C{coroutine} failed with at once, of one of C{kinds}.
    """
    d: Deferred[Any] = ensureDeferred(coroutine)
    return case.failureResultOf(d, *kinds).value


class CertificateEncodingTests(SynchronousTestCase):
    """
    L{encodeCertificate} and L{decodeCertificate}: a round trip with the
    key sealed for its site, and an L{AcmeError} naming the site for
    anything that cannot be used.
    """

    def setUp(self) -> None:
        self.sealer = SealedKeys(SECRET)
        self.record = certificate()

    def test_roundTrip(self) -> None:
        """
        A record comes back whole, with the node that stored it, from
        L{str} or L{bytes} (as Redis may answer).
        """
        text = encodeCertificate(self.sealer, "app", self.record, "node-a")
        for stored in (text, text.encode("utf-8")):
            record, node = decodeCertificate(self.sealer, "app", stored)
            self.assertEqual(record, self.record)
            self.assertEqual(node, "node-a")

    def test_keySealed(self) -> None:
        """
        The stored JSON holds no private key: neither the PEM nor its base64
        body; the key field is a value sealed for the site.
        """
        text = encodeCertificate(self.sealer, "app", self.record, "node-a")
        self.assertNotIn("PRIVATE KEY", text)
        body = b"".join(self.record.keyPEM.splitlines()[1:-1]).decode("ascii")
        self.assertNotIn(body[:40], text)
        self.assertNotIn(base64.b64encode(self.record.keyPEM).decode()[:40], text)
        value = json.loads(text)
        sealed = base64.b64decode(value["key"])
        self.assertEqual(
            self.sealer.open(sealed, certificateContext("app")), self.record.keyPEM
        )
        self.assertEqual(value["node"], "node-a")
        self.assertEqual(value["names"], ["a.test", "www.a.test"])

    def test_otherSecret(self) -> None:
        """
        A record sealed with another cluster secret is an L{AcmeError}
        naming the site.
        """
        text = encodeCertificate(SealedKeys(OTHER), "app", self.record, "node-a")
        e = self.assertRaises(AcmeError, decodeCertificate, self.sealer, "app", text)
        self.assertIn("the certificate of site app", str(e))

    def test_otherSite(self) -> None:
        """
        A record sealed for another site does not open as this one's: an
        L{AcmeError} naming the site read.
        """
        text = encodeCertificate(self.sealer, "other", self.record, "node-a")
        e = self.assertRaises(AcmeError, decodeCertificate, self.sealer, "app", text)
        self.assertIn("the certificate of site app", str(e))

    def test_unknownNode(self) -> None:
        """
        A record without a node (or with one that is not a string) says
        C{"?"}.
        """
        value = json.loads(encodeCertificate(self.sealer, "app", self.record, "n"))
        for node in (None, 5):
            value["node"] = node
            _, found = decodeCertificate(self.sealer, "app", json.dumps(value))
            self.assertEqual(found, "?")

    def test_malformed(self) -> None:
        """
        Whatever is not a record as stored is an L{AcmeError} naming the
        site: not a string, not JSON, not an object, a field missing or of
        the wrong type, a key that is not base64.
        """
        good = json.loads(encodeCertificate(self.sealer, "app", self.record, "n"))
        cases: list[object] = [
            None,
            42,
            "{",
            "[]",
            json.dumps({**good, "names": []}),
            json.dumps({**good, "names": "a.test"}),
            json.dumps({**good, "names": ["a.test", 3]}),
            json.dumps({**good, "key": "not base64!"}),
            json.dumps({**good, "key": 5}),
            json.dumps({**good, "chain": None}),
            json.dumps({**good, "chain": "caf\u00e9"}),
            json.dumps({**good, "notAfter": "soon"}),
            json.dumps({**good, "notBefore": True}),
            json.dumps({**good, "issuedAt": None}),
            json.dumps({**good, "directory": 1}),
            '{"names": ["a.test"], "notAfter": NaN}',
        ]
        for field in ("names", "key", "chain", "notBefore", "notAfter", "issuedAt"):
            cases.append(json.dumps({k: v for k, v in good.items() if k != field}))
        for text in cases:
            e = self.assertRaises(
                AcmeError, decodeCertificate, self.sealer, "app", text
            )
            self.assertIn("the certificate of site app in Redis", str(e), text)
            self.assertNotIn("\n", str(e))


class BackoffEncodingTests(SynchronousTestCase):
    """
    L{encodeBackoff} and L{decodeBackoff}.
    """

    def test_roundTrip(self) -> None:
        """
        A back-off comes back whole, with the node whose order failed.
        """
        text = encodeBackoff(BACKOFF, "node-b")
        for stored in (text, text.encode("utf-8")):
            self.assertEqual(decodeBackoff("app", stored), (BACKOFF, "node-b"))

    def test_malformed(self) -> None:
        """
        A back-off that is not one as stored is an L{AcmeError} naming the
        site.
        """
        good = json.loads(encodeBackoff(BACKOFF, "node-b"))
        cases: list[object] = [
            None,
            "nope",
            "[1]",
            json.dumps({**good, "failures": 0}),
            json.dumps({**good, "failures": True}),
            json.dumps({**good, "failures": 1.5}),
            json.dumps({**good, "retryAt": "later"}),
            json.dumps({**good, "lastError": None}),
            json.dumps({**good, "lastErrorAt": [1]}),
            json.dumps({k: v for k, v in good.items() if k != "retryAt"}),
        ]
        for text in cases:
            e = self.assertRaises(AcmeError, decodeBackoff, "app", text)
            self.assertIn("the back-off of site app in Redis", str(e), text)


class SharedAcmeStateTests(SynchronousTestCase):
    """
    L{SharedAcmeState} on a fake Redis: the keys under the prefix, the
    certificate and back-off round trips, the back-off's expiry, the
    account created once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.redis = FakeRedis(self.clock)
        self.sealer = SealedKeys(SECRET)
        self.shared = SharedAcmeState(self.redis, "rp:", self.sealer, "node-a")

    def test_certificate(self) -> None:
        """
        A saved certificate is one JSON string under C{PREFIXcert:SITE}, no
        expiry, its key sealed; it loads back with the node that saved it.
        """
        self.assertIsNone(run(self, self.shared.loadCertificate("app")))
        record = certificate()
        run(self, self.shared.saveCertificate("app", record))
        self.assertEqual(self.redis.sent("SET")[0][:2], ("SET", "rp:cert:app"))
        self.assertEqual(len(self.redis.sent("SET")[0]), 3)
        stored = self.redis.get("rp:cert:app")
        assert stored is not None
        self.assertNotIn("PRIVATE KEY", stored)
        self.assertEqual(
            run(self, self.shared.loadCertificate("app")), (record, "node-a")
        )
        other = SharedAcmeState(self.redis, "rp:", self.sealer, "node-b")
        self.assertEqual(run(self, other.loadCertificate("app")), (record, "node-a"))
        self.assertIsNone(run(self, self.shared.loadCertificate("other")))

    def test_certificateOtherSecret(self) -> None:
        """
        A certificate saved by a node with another secret fails to load
        with an L{AcmeError} naming the site.
        """
        other = SharedAcmeState(self.redis, "rp:", SealedKeys(OTHER), "node-b")
        run(self, other.saveCertificate("app", certificate()))
        e = failure(self, self.shared.loadCertificate("app"), AcmeError)
        self.assertIn("site app", str(e))

    def test_backoff(self) -> None:
        """
        A saved back-off lives under C{PREFIXbackoff:SITE} until C{keep}
        seconds after its C{retryAt} (C{PX} in ms, rounded up), loads back
        with the node, and is gone once expired; saving L{None} deletes it.
        """
        self.assertIsNone(run(self, self.shared.loadBackoff("app")))
        run(self, self.shared.saveBackoff("app", BACKOFF, NOW, keep=100.0))
        [sent] = self.redis.sent("SET")
        self.assertEqual(sent[0:2], ("SET", "rp:backoff:app"))
        self.assertEqual(sent[3:], ("PX", 340_500))
        self.assertEqual(run(self, self.shared.loadBackoff("app")), (BACKOFF, "node-a"))
        self.clock.advance(340.4)
        self.assertIsNotNone(run(self, self.shared.loadBackoff("app")))
        self.clock.advance(0.1)
        self.assertIsNone(run(self, self.shared.loadBackoff("app")))

        run(self, self.shared.saveBackoff("app", BACKOFF, NOW))
        self.assertIsNotNone(run(self, self.shared.loadBackoff("app")))
        run(self, self.shared.saveBackoff("app", None, NOW))
        self.assertEqual(self.redis.sent("DEL"), [("DEL", "rp:backoff:app")])
        self.assertIsNone(run(self, self.shared.loadBackoff("app")))

    def test_backoffAtLeastASecond(self) -> None:
        """
        A back-off already over when saved is kept for a second (C{PX}
        must be positive).
        """
        run(self, self.shared.saveBackoff("app", BACKOFF, NOW + 10_000))
        self.assertEqual(self.redis.sent("SET")[0][3:], ("PX", 1000))

    def test_backoffMalformed(self) -> None:
        """
        A back-off that does not parse fails to load with an L{AcmeError}.
        """
        self.redis.data["rp:backoff:app"] = ("{}", float("inf"))
        failure(self, self.shared.loadBackoff("app"), AcmeError)

    def test_noAccount(self) -> None:
        """
        Without a fleet account there is no key and no URIs.
        """
        self.assertEqual(run(self, self.shared.loadAccount()), (None, {}))
        self.assertEqual(self.redis.sent("HGETALL"), [("HGETALL", "rp:account")])

    def test_accountCreatedOnce(self) -> None:
        """
        The first key offered becomes the fleet's (C{HSETNX}, sealed for
        the account); a second is refused and the first kept.
        """
        first, second = pemKey(), pemKey()
        self.assertTrue(run(self, self.shared.createAccount(first)))
        other = SharedAcmeState(self.redis, "rp:", self.sealer, "node-b")
        self.assertFalse(run(self, other.createAccount(second)))
        self.assertEqual(len(self.redis.sent("HSETNX")), 2)
        sealed = self.redis.hashes["rp:account"]["key"]
        self.assertNotIn("PRIVATE KEY", sealed)
        self.assertEqual(
            self.sealer.open(base64.b64decode(sealed), ACCOUNT_CONTEXT), first
        )
        self.assertEqual(run(self, other.loadAccount()), (first, {}))

    def test_accountURIs(self) -> None:
        """
        The account's URIs come back by directory, with the key; other
        fields of the hash are ignored.
        """
        key = pemKey()
        run(self, self.shared.createAccount(key))
        run(self, self.shared.saveAccountURI(DIRECTORY, "https://acme.test/acct/1"))
        run(self, self.shared.saveAccountURI("https://o.test/d", "https://o.test/a"))
        run(self, self.shared.saveAccountURI(DIRECTORY, "https://acme.test/acct/2"))
        self.redis.hashes["rp:account"]["other"] = "x"
        self.assertEqual(
            run(self, self.shared.loadAccount()),
            (
                key,
                {
                    DIRECTORY: "https://acme.test/acct/2",
                    "https://o.test/d": "https://o.test/a",
                },
            ),
        )

    def test_accountURIsWithoutKey(self) -> None:
        """
        URIs without a key come back with no key.
        """
        run(self, self.shared.saveAccountURI(DIRECTORY, "https://acme.test/a"))
        self.assertEqual(
            run(self, self.shared.loadAccount()),
            (None, {DIRECTORY: "https://acme.test/a"}),
        )

    def test_accountSealedElsewhere(self) -> None:
        """
        An account key that does not open (another secret, or not base64)
        fails to load with an L{AcmeError} about the fleet's account key.
        """
        other = SharedAcmeState(self.redis, "rp:", SealedKeys(OTHER), "node-b")
        run(self, other.createAccount(pemKey()))
        e = failure(self, self.shared.loadAccount(), AcmeError)
        self.assertIn("the fleet's account key in Redis", str(e))
        self.redis.hashes["rp:account"]["key"] = "not base64!"
        e = failure(self, self.shared.loadAccount(), AcmeError)
        self.assertIn("the fleet's account key in Redis", str(e))

    def test_redisDown(self) -> None:
        """
        While Redis is down every call fails at once with
        L{ConnectionError}.
        """
        self.redis.up = False
        for call in (
            self.shared.loadCertificate("app"),
            self.shared.saveCertificate("app", certificate()),
            self.shared.loadBackoff("app"),
            self.shared.saveBackoff("app", None, NOW),
            self.shared.loadAccount(),
            self.shared.createAccount(pemKey()),
            self.shared.saveAccountURI(DIRECTORY, "u"),
        ):
            failure(self, call, ConnectionError)
