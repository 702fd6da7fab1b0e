"""
Tests for L{revproxy.acme.storage}: round trips, file modes, crash safety
and the errors an operator sees.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme import AcmeError
from revproxy.acme.storage import (
    AcmeStorage,
    BackoffRecord,
    CertificateRecord,
    FileSystem,
)

_CA = trustme.CA()
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_NO_ENCRYPTION = serialization.NoEncryption()
DIRECTORY = "https://acme.test/directory"
# 2026-01-01T00:00:00Z, plus a fraction that must survive the round trip.
T0 = 1767225600.123456789


def _keyPEM(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(_PEM, _PKCS8, _NO_ENCRYPTION)


def _record(*names: str, issuedAt: float = T0) -> CertificateRecord:
    """
    A fresh certificate from the test CA for C{names}, with its chain and
    PKCS8 key.
    """
    names = names or ("a.example",)
    leaf = _CA.issue_cert(*names)
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chainPEM = leaf.cert_chain_pems[0].bytes() + _CA.cert_pem.bytes()
    cert = x509.load_pem_x509_certificate(chainPEM)
    return CertificateRecord(
        names=tuple(names),
        chainPEM=chainPEM,
        keyPEM=_keyPEM(key),
        notBefore=cert.not_valid_before_utc.timestamp(),
        notAfter=cert.not_valid_after_utc.timestamp(),
        issuedAt=issuedAt,
        directoryURL=DIRECTORY,
    )


_OLD = _record("a.example", "b.example")
_NEW = _record("a.example", "b.example", issuedAt=T0 + 60 * 86400)
_NEWER = _record("a.example", issuedAt=T0 + 120 * 86400)

_BACKOFF = BackoffRecord(
    failures=3,
    retryAt=T0 + 240.5,
    lastError="a.example: connection refused (café)",
    lastErrorAt=T0,
)
_BACKOFF2 = BackoffRecord(
    failures=4, retryAt=T0 + 900.25, lastError="rate limited", lastErrorAt=T0 + 1
)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _pairMatches(chainPEM: bytes, keyPEM: bytes) -> bool:
    leaf = x509.load_pem_x509_certificates(chainPEM)[0]
    key = serialization.load_pem_private_key(keyPEM, None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return leaf.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _readBytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _writeBytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class _Crash(Exception):
    """
    The simulated crash: not an L{OSError}, so no error handling in the
    code under test runs, as when the process dies.
    """


class _CrashingFileSystem(FileSystem):
    """
    A L{FileSystem} that makes the first C{limit} changes to the disk and
    then "crashes": every further change raises L{_Crash}.  With no limit it
    just records the changes.

    @ivar changes: The changes made, as (operation, path or descriptor).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.changes: list[tuple[str, object]] = []

    def _change(self, operation: str, target: object) -> None:
        if self.limit is not None and len(self.changes) >= self.limit:
            raise _Crash(operation, target)
        self.changes.append((operation, target))

    def committedMeta(self) -> bool:
        """
        Whether C{meta.json} was renamed into place.
        """
        return any(
            operation == "replace" and str(target).endswith("/meta.json")
            for operation, target in self.changes
        )

    def makeDirectory(self, path: str, mode: int) -> None:
        self._change("makeDirectory", path)
        super().makeDirectory(path, mode)

    def createTemporary(self, directory: str, name: str, mode: int) -> tuple[int, str]:
        self._change("createTemporary", os.path.join(directory, name))
        return super().createTemporary(directory, name, mode)

    def write(self, fd: int, data: bytes) -> None:
        self._change("write", fd)
        super().write(fd, data)

    def sync(self, fd: int) -> None:
        self._change("sync", fd)
        super().sync(fd)

    def syncDirectory(self, path: str) -> None:
        self._change("syncDirectory", path)
        super().syncDirectory(path)

    def replace(self, source: str, destination: str) -> None:
        self._change("replace", destination)
        super().replace(source, destination)

    def link(self, source: str, destination: str) -> None:
        self._change("link", destination)
        super().link(source, destination)

    def symlink(self, target: str, path: str) -> None:
        self._change("symlink", path)
        super().symlink(target, path)

    def remove(self, path: str) -> None:
        self._change("remove", path)
        super().remove(path)

    def removeDirectory(self, path: str) -> None:
        self._change("removeDirectory", path)
        super().removeDirectory(path)


class _FailingFileSystem(FileSystem):
    """
    A L{FileSystem} whose method C{name} raises C{error}, for every call
    whose first argument passes C{where}.
    """

    def __init__(
        self,
        name: str,
        error: OSError,
        where: Callable[[object], bool] = lambda target: True,
    ) -> None:
        self._name = name
        self._error = error
        self._where = where
        self.failures = 0

    def __getattribute__(self, attribute: str) -> Any:
        method = super().__getattribute__(attribute)
        if attribute.startswith("_") or attribute != self._name:
            return method

        def failing(*args: object) -> object:
            if self._where(args[0]):
                self.failures += 1
                raise self._error
            return method(*args)

        return failing


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _StorageCase(SynchronousTestCase):
    """
    A state directory that does not exist yet.
    """

    def setUp(self) -> None:
        self.stateDir = os.path.join(self.mktemp(), "state")
        self.storage = AcmeStorage(self.stateDir)
        self.siteDir = os.path.join(self.stateDir, "certs", "app")

    def assertOneLine(self, error: AcmeError, message: str) -> None:
        """
        C{error}'s message is exactly C{message}, one line.
        """
        self.assertEqual(str(error), message)
        self.assertNotIn("\n", str(error))

    def siteEntries(self) -> set[str]:
        return set(os.listdir(self.siteDir))


class AccountTests(_StorageCase):
    """
    The account key and the account URIs.
    """

    def test_keyCreated(self) -> None:
        """
        The first call creates an EC P-256 key, PKCS8 PEM, mode 0600, in
        directories created 0700, and says it created it.
        """
        key, created = self.storage.accountKey()
        self.assertTrue(created)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        path = os.path.join(self.stateDir, "acme", "account.key")
        data = _readBytes(path)
        self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
        self.assertEqual(data, _keyPEM(key))
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(_mode(self.stateDir), 0o700)
        self.assertEqual(_mode(os.path.join(self.stateDir, "acme")), 0o700)
        self.assertEqual(
            os.listdir(os.path.join(self.stateDir, "acme")), ["account.key"]
        )

    def test_keyReused(self) -> None:
        """
        Later calls, here or in a new L{AcmeStorage}, load the same key and
        say it already existed.
        """
        key, _ = self.storage.accountKey()
        for storage in (self.storage, AcmeStorage(self.stateDir)):
            again, created = storage.accountKey()
            self.assertFalse(created)
            self.assertEqual(again.private_numbers(), key.private_numbers())

    def test_keyCreatedElsewhereMeanwhile(self) -> None:
        """
        If another process creates the key between the check and the
        creation, its key is kept and returned, not replaced.
        """
        other = ec.generate_private_key(ec.SECP256R1())

        class Racing(FileSystem):
            def link(self, source: str, destination: str) -> None:
                _writeBytes(destination, _keyPEM(other))
                super().link(source, destination)

        key, created = AcmeStorage(self.stateDir, fileSystem=Racing()).accountKey()
        self.assertFalse(created)
        self.assertEqual(key.private_numbers(), other.private_numbers())
        self.assertEqual(
            os.listdir(os.path.join(self.stateDir, "acme")), ["account.key"]
        )

    def test_keyWithoutHardLinks(self) -> None:
        """
        On a file system without hard links the key is renamed into place
        instead.
        """
        fs = _FailingFileSystem("link", _oserror(errno.EPERM))
        key, created = AcmeStorage(self.stateDir, fileSystem=fs).accountKey()
        self.assertEqual(fs.failures, 1)
        self.assertTrue(created)
        path = os.path.join(self.stateDir, "acme", "account.key")
        self.assertEqual(_readBytes(path), _keyPEM(key))
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(
            os.listdir(os.path.join(self.stateDir, "acme")), ["account.key"]
        )

    def test_keyCrash(self) -> None:
        """
        After a crash at any step of creating the key, the next call
        returns a usable key, and the one after returns the same key.
        """
        counting = _CrashingFileSystem()
        AcmeStorage(os.path.join(self.mktemp(), "s"), fileSystem=counting).accountKey()
        steps = len(counting.changes)
        self.assertGreater(steps, 3)
        for limit in range(steps):
            stateDir = os.path.join(self.mktemp(), "s")
            crashing = _CrashingFileSystem(limit)
            self.assertRaises(
                _Crash, AcmeStorage(stateDir, fileSystem=crashing).accountKey
            )
            key, _ = AcmeStorage(stateDir).accountKey()
            again, created = AcmeStorage(stateDir).accountKey()
            self.assertFalse(created)
            self.assertEqual(again.private_numbers(), key.private_numbers())
            acmeDir = os.path.join(stateDir, "acme")
            self.assertEqual(os.listdir(acmeDir), ["account.key"])

    def test_keyCorrupt(self) -> None:
        """
        An account key that does not parse is an L{AcmeError} naming the
        file; it is not replaced.
        """
        self.storage.accountKey()
        path = os.path.join(self.stateDir, "acme", "account.key")
        _writeBytes(path, b"garbage\n")
        e = self.assertRaises(AcmeError, self.storage.accountKey)
        self.assertOneLine(e, f"{path}: no usable PEM private key")
        self.assertEqual(_readBytes(path), b"garbage\n")

    def test_keyWrongType(self) -> None:
        """
        An RSA or P-384 account key is an L{AcmeError}.
        """
        self.storage.accountKey()
        path = os.path.join(self.stateDir, "acme", "account.key")
        for key in (
            rsa.generate_private_key(65537, 2048),
            ec.generate_private_key(ec.SECP384R1()),
        ):
            _writeBytes(path, _keyPEM(key))
            e = self.assertRaises(AcmeError, self.storage.accountKey)
            self.assertOneLine(e, f"{path}: not an EC P-256 private key")

    def test_uriRoundTrip(self) -> None:
        """
        Account URIs are kept per directory, across instances.
        """
        self.assertIsNone(self.storage.accountURI(DIRECTORY))
        self.storage.saveAccountURI(DIRECTORY, "https://acme.test/acct/1")
        self.storage.saveAccountURI("https://other.test/dir", "https://other.test/a/9")
        self.storage.saveAccountURI(DIRECTORY, "https://acme.test/acct/2")
        for storage in (self.storage, AcmeStorage(self.stateDir)):
            self.assertEqual(storage.accountURI(DIRECTORY), "https://acme.test/acct/2")
            self.assertEqual(
                storage.accountURI("https://other.test/dir"), "https://other.test/a/9"
            )
            self.assertIsNone(storage.accountURI("https://third.test/dir"))
        path = os.path.join(self.stateDir, "acme", "account.json")
        self.assertEqual(
            json.loads(_readBytes(path)),
            {
                DIRECTORY: "https://acme.test/acct/2",
                "https://other.test/dir": "https://other.test/a/9",
            },
        )
        self.assertEqual(os.listdir(os.path.dirname(path)), ["account.json"])

    def test_uriCorrupt(self) -> None:
        """
        An C{account.json} that is not a JSON object of strings is an
        L{AcmeError} naming it, for reads and writes.
        """
        self.storage.saveAccountURI(DIRECTORY, "https://acme.test/acct/1")
        path = os.path.join(self.stateDir, "acme", "account.json")
        for data, problem in [
            (b"{", "not valid JSON"),
            (b"[]", "not a JSON object"),
            (b'{"x": 1}', "account URIs must be strings"),
        ]:
            _writeBytes(path, data)
            e = self.assertRaises(AcmeError, self.storage.accountURI, DIRECTORY)
            self.assertOneLine(e, f"{path}: {problem}")
            e = self.assertRaises(
                AcmeError, self.storage.saveAccountURI, DIRECTORY, "u"
            )
            self.assertOneLine(e, f"{path}: {problem}")
            self.assertEqual(_readBytes(path), data)


class ReplaceAccountTests(_StorageCase):
    """
    L{AcmeStorage.replaceAccountKey} (the fleet's account key, with
    C{[cluster]}) and L{AcmeStorage.accounts}.
    """

    def test_replaces(self) -> None:
        """
        The key is replaced (mode 0600, read back by new instances) and the
        account URIs with the given ones (the old key's are gone); no
        temporary file is left.
        """
        self.storage.accountKey()
        self.storage.saveAccountURI(DIRECTORY, "https://acme.test/acct/old")
        fleet = ec.generate_private_key(ec.SECP256R1())
        accounts = {
            DIRECTORY: "https://acme.test/acct/fleet",
            "https://o.test/d": "https://o.test/a",
        }
        self.storage.replaceAccountKey(_keyPEM(fleet), accounts)
        path = os.path.join(self.stateDir, "acme", "account.key")
        self.assertEqual(_readBytes(path), _keyPEM(fleet))
        self.assertEqual(_mode(path), 0o600)
        for storage in (self.storage, AcmeStorage(self.stateDir)):
            key, created = storage.accountKey()
            self.assertFalse(created)
            self.assertEqual(key.private_numbers(), fleet.private_numbers())
            self.assertEqual(storage.accounts(), accounts)
        self.assertEqual(
            json.loads(_readBytes(os.path.join(self.stateDir, "acme", "account.json"))),
            accounts,
        )
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.stateDir, "acme"))),
            ["account.json", "account.key"],
        )

    def test_replacesNothingYet(self) -> None:
        """
        Without a key yet the state directory is made (0700) and the key
        written; no URIs is an empty C{account.json}.
        """
        fleet = ec.generate_private_key(ec.SECP256R1())
        self.storage.replaceAccountKey(_keyPEM(fleet), {})
        key, created = self.storage.accountKey()
        self.assertFalse(created)
        self.assertEqual(key.private_numbers(), fleet.private_numbers())
        self.assertEqual(self.storage.accounts(), {})
        self.assertEqual(_mode(os.path.join(self.stateDir, "acme")), 0o700)

    def test_rejectsOtherKeys(self) -> None:
        """
        A key that is not EC P-256 (RSA, P-384, garbage) is an
        L{AcmeError}; the local key and URIs are kept.
        """
        key, _ = self.storage.accountKey()
        self.storage.saveAccountURI(DIRECTORY, "https://acme.test/acct/1")
        for bad in (
            _keyPEM(rsa.generate_private_key(65537, 2048)),
            _keyPEM(ec.generate_private_key(ec.SECP384R1())),
            b"garbage",
        ):
            self.assertRaises(
                AcmeError,
                self.storage.replaceAccountKey,
                bad,
                {DIRECTORY: "https://acme.test/acct/2"},
            )
            again, _ = self.storage.accountKey()
            self.assertEqual(again.private_numbers(), key.private_numbers())
            self.assertEqual(
                self.storage.accounts(), {DIRECTORY: "https://acme.test/acct/1"}
            )
        e = self.assertRaises(
            AcmeError,
            self.storage.replaceAccountKey,
            _keyPEM(ec.generate_private_key(ec.SECP384R1())),
            {},
        )
        self.assertIn("not an EC P-256 private key", str(e))

    def test_accountsNone(self) -> None:
        """
        No C{account.json}: no accounts.
        """
        self.assertEqual(self.storage.accounts(), {})


class CertificateTests(_StorageCase):
    """
    Saving and loading a site's certificate.
    """

    def test_missing(self) -> None:
        """
        A site never saved has no record, and loading creates nothing.
        """
        self.assertIsNone(self.storage.loadCertificate("app"))
        self.assertFalse(os.path.exists(self.stateDir))

    def test_roundTrip(self) -> None:
        """
        The loaded record equals the saved one, here and in a new instance.
        """
        self.storage.saveCertificate("app", _OLD)
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)
        self.assertEqual(AcmeStorage(self.stateDir).loadCertificate("app"), _OLD)
        self.assertIsNone(self.storage.loadCertificate("other"))

    def test_layout(self) -> None:
        """
        The record is C{meta.json} naming a generation directory with the
        chain (0644) and key (0600); directories are 0700; C{current} links
        to the generation; C{meta.json} has readable times too.
        """
        self.storage.saveCertificate("app", _OLD)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "1"})
        for directory in (
            self.stateDir,
            os.path.join(self.stateDir, "certs"),
            self.siteDir,
            os.path.join(self.siteDir, "1"),
        ):
            self.assertEqual(_mode(directory), 0o700, directory)
        chain = os.path.join(self.siteDir, "1", "fullchain.pem")
        key = os.path.join(self.siteDir, "1", "privkey.pem")
        self.assertEqual(_readBytes(chain), _OLD.chainPEM)
        self.assertEqual(_readBytes(key), _OLD.keyPEM)
        self.assertEqual(_mode(chain), 0o644)
        self.assertEqual(_mode(key), 0o600)
        self.assertEqual(os.readlink(os.path.join(self.siteDir, "current")), "1")
        meta = json.loads(_readBytes(os.path.join(self.siteDir, "meta.json")))
        self.assertEqual(meta["chain_file"], "1/fullchain.pem")
        self.assertEqual(meta["key_file"], "1/privkey.pem")
        self.assertEqual(meta["names"], ["a.example", "b.example"])
        self.assertEqual(meta["issued_at"], T0)
        self.assertEqual(meta["issued_at_utc"], "2026-01-01T00:00:00Z")
        self.assertEqual(meta["not_after_utc"], "3000-01-01T00:00:00Z")
        self.assertEqual(meta["directory_url"], DIRECTORY)

    def test_modesWhateverTheUmask(self) -> None:
        """
        Directory and file modes are exact even under a umask that would
        remove the owner's permissions.
        """
        self.addCleanup(os.umask, os.umask(0o777))
        self.storage.saveCertificate("app", _OLD)
        self.storage.saveBackoff("app", _BACKOFF)
        self.storage.accountKey()
        os.umask(0o022)
        self.assertEqual(_mode(self.siteDir), 0o700)
        self.assertEqual(_mode(os.path.join(self.siteDir, "1")), 0o700)
        self.assertEqual(_mode(os.path.join(self.siteDir, "1", "privkey.pem")), 0o600)
        self.assertEqual(_mode(os.path.join(self.siteDir, "backoff.json")), 0o644)
        self.assertEqual(
            _mode(os.path.join(self.stateDir, "acme", "account.key")), 0o600
        )
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)

    def test_replace(self) -> None:
        """
        A second save replaces the first: a new generation, C{current}
        moved, the old generation removed.
        """
        self.storage.saveCertificate("app", _OLD)
        self.storage.saveCertificate("app", _NEW)
        self.assertEqual(self.storage.loadCertificate("app"), _NEW)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "2"})
        current = os.path.join(self.siteDir, "current")
        self.assertEqual(_readBytes(os.path.join(current, "privkey.pem")), _NEW.keyPEM)

    def test_sitesApart(self) -> None:
        """
        Each site has its own record.
        """
        self.storage.saveCertificate("app", _OLD)
        self.storage.saveCertificate("api", _NEW)
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)
        self.assertEqual(self.storage.loadCertificate("api"), _NEW)

    def assertCrashSafe(self, old: CertificateRecord | None) -> None:
        """
        A crash after each change a save makes to the disk leaves C{old}
        loadable until C{meta.json} is renamed and the new record after;
        C{current} always holds a chain and key that belong together; and
        a later save leaves only its own files.
        """

        def prepared() -> str:
            stateDir = os.path.join(self.mktemp(), "state")
            if old is not None:
                AcmeStorage(stateDir).saveCertificate("app", old)
            return stateDir

        counting = _CrashingFileSystem()
        AcmeStorage(prepared(), fileSystem=counting).saveCertificate("app", _NEW)
        steps = len(counting.changes)
        outcomes = []
        for limit in range(steps + 1):
            stateDir = prepared()
            crashing = _CrashingFileSystem(limit)
            storage = AcmeStorage(stateDir, fileSystem=crashing)
            try:
                storage.saveCertificate("app", _NEW)
            except _Crash:
                crashed = True
            else:
                crashed = False
            self.assertEqual(crashed, limit < steps)
            loaded = AcmeStorage(stateDir).loadCertificate("app")
            expected = _NEW if crashing.committedMeta() else old
            self.assertEqual(loaded, expected, f"crash after {limit} changes")
            outcomes.append(loaded is not None and loaded == _NEW)
            siteDir = os.path.join(stateDir, "certs", "app")
            current = os.path.join(siteDir, "current")
            if os.path.lexists(current):
                chain = _readBytes(os.path.join(current, "fullchain.pem"))
                key = _readBytes(os.path.join(current, "privkey.pem"))
                self.assertTrue(_pairMatches(chain, key))
                self.assertIn(chain, (_OLD.chainPEM, _NEW.chainPEM))
            AcmeStorage(stateDir).saveCertificate("app", _NEWER)
            self.assertEqual(AcmeStorage(stateDir).loadCertificate("app"), _NEWER)
            entries = set(os.listdir(siteDir))
            generations = entries - {"meta.json", "current"}
            self.assertEqual(len(generations), 1, entries)
            self.assertEqual(os.readlink(current), generations.pop())
        # Old, then new from the commit on: one switch, at the rename.
        switch = outcomes.index(True)
        self.assertEqual(outcomes, [False] * switch + [True] * (steps + 1 - switch))
        self.assertGreater(switch, 5)
        self.assertLess(switch, steps)

    def test_crashSafe(self) -> None:
        """
        A crash at any point of replacing a certificate leaves the old one
        or the new one, intact, never a mix or an error.
        """
        self.assertCrashSafe(_OLD)

    def test_crashSafeFirstSave(self) -> None:
        """
        A crash at any point of the first save leaves no record or the new
        one.
        """
        self.assertCrashSafe(None)

    def test_leftoversIgnoredThenRemoved(self) -> None:
        """
        Temporary files and unreferenced generations are ignored when
        loading and removed by the next save; other files are left alone.
        """
        self.storage.saveCertificate("app", _OLD)
        _writeBytes(os.path.join(self.siteDir, ".meta.json.x1.tmp"), b"{")
        _writeBytes(os.path.join(self.siteDir, ".backoff.json.x2.tmp"), b"")
        os.mkdir(os.path.join(self.siteDir, "7"))
        _writeBytes(os.path.join(self.siteDir, "7", "privkey.pem"), b"junk")
        _writeBytes(os.path.join(self.siteDir, "7", ".privkey.pem.x3.tmp"), b"")
        _writeBytes(os.path.join(self.siteDir, "NOTES"), b"operator's")
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)
        self.storage.saveCertificate("app", _NEW)
        self.assertEqual(self.storage.loadCertificate("app"), _NEW)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "8", "NOTES"})

    def test_diskFull(self) -> None:
        """
        A failed write is an L{AcmeError} naming the file and the reason;
        the old record stays, and the new generation is removed.
        """
        self.storage.saveCertificate("app", _OLD)
        fs = _FailingFileSystem("write", _oserror(errno.ENOSPC))
        e = self.assertRaises(
            AcmeError,
            AcmeStorage(self.stateDir, fileSystem=fs).saveCertificate,
            "app",
            _NEW,
        )
        chain = os.path.join(self.siteDir, "2", "fullchain.pem")
        self.assertOneLine(e, f"cannot write {chain}: No space left on device")
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "1"})

    def test_metaRenameFails(self) -> None:
        """
        When C{meta.json} cannot be replaced, the save fails naming it and
        the old record stays.
        """
        self.storage.saveCertificate("app", _OLD)
        meta = os.path.join(self.siteDir, "meta.json")
        fs = _FailingFileSystem(
            "replace", _oserror(errno.EIO), lambda source: ".meta.json." in str(source)
        )
        e = self.assertRaises(
            AcmeError,
            AcmeStorage(self.stateDir, fileSystem=fs).saveCertificate,
            "app",
            _NEW,
        )
        self.assertOneLine(e, f"cannot write {meta}: Input/output error")
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)
        self.assertNotIn(".meta.json.", " ".join(self.siteEntries()))

    def test_currentLinkFails(self) -> None:
        """
        When C{current} cannot be switched the save still succeeds, and the
        generation C{current} points at is kept.
        """
        self.storage.saveCertificate("app", _OLD)
        fs = _FailingFileSystem("symlink", _oserror(errno.EPERM))
        AcmeStorage(self.stateDir, fileSystem=fs).saveCertificate("app", _NEW)
        self.assertEqual(fs.failures, 1)
        self.assertEqual(self.storage.loadCertificate("app"), _NEW)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "1", "2"})
        self.assertEqual(os.readlink(os.path.join(self.siteDir, "current")), "1")
        self.storage.saveCertificate("app", _NEWER)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "3"})

    def test_cleanupFails(self) -> None:
        """
        When an old generation cannot be removed the save still succeeds;
        the next one removes it.
        """
        self.storage.saveCertificate("app", _OLD)
        fs = _FailingFileSystem("removeDirectory", _oserror(errno.EBUSY))
        AcmeStorage(self.stateDir, fileSystem=fs).saveCertificate("app", _NEW)
        self.assertEqual(fs.failures, 1)
        self.assertEqual(self.storage.loadCertificate("app"), _NEW)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "1", "2"})
        self.storage.saveCertificate("app", _NEWER)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "3"})

    def test_saveRejectsMismatch(self) -> None:
        """
        A record whose key does not match its leaf, or whose chain does not
        parse, is refused before anything is written.
        """
        self.storage.saveCertificate("app", _OLD)
        mixed = CertificateRecord(
            names=_NEW.names,
            chainPEM=_NEW.chainPEM,
            keyPEM=_OLD.keyPEM,
            notBefore=_NEW.notBefore,
            notAfter=_NEW.notAfter,
            issuedAt=_NEW.issuedAt,
            directoryURL=_NEW.directoryURL,
        )
        e = self.assertRaises(AcmeError, self.storage.saveCertificate, "app", mixed)
        self.assertOneLine(
            e,
            "the new private key for site app does not match the certificate in "
            "the new certificate chain for site app",
        )
        garbled = CertificateRecord(
            names=_NEW.names,
            chainPEM=b"not PEM",
            keyPEM=_NEW.keyPEM,
            notBefore=_NEW.notBefore,
            notAfter=_NEW.notAfter,
            issuedAt=_NEW.issuedAt,
            directoryURL=_NEW.directoryURL,
        )
        e = self.assertRaises(AcmeError, self.storage.saveCertificate, "app", garbled)
        self.assertOneLine(
            e, "the new certificate chain for site app: no valid PEM certificate chain"
        )
        self.assertEqual(self.storage.loadCertificate("app"), _OLD)
        self.assertEqual(self.siteEntries(), {"meta.json", "current", "1"})


class CorruptCertificateTests(_StorageCase):
    """
    A stored record that cannot be used is an L{AcmeError} naming the file,
    and nothing else.
    """

    def setUp(self) -> None:
        super().setUp()
        self.storage.saveCertificate("app", _OLD)
        self.meta = os.path.join(self.siteDir, "meta.json")
        self.chain = os.path.join(self.siteDir, "1", "fullchain.pem")
        self.key = os.path.join(self.siteDir, "1", "privkey.pem")

    def assertLoadFails(self, message: str) -> None:
        e = self.assertRaises(AcmeError, self.storage.loadCertificate, "app")
        self.assertOneLine(e, message)

    def editMeta(self, edit: Callable[[dict[str, Any]], object]) -> None:
        meta = json.loads(_readBytes(self.meta))
        edit(meta)
        _writeBytes(self.meta, json.dumps(meta).encode())

    def test_notJSON(self) -> None:
        """
        A C{meta.json} that is not JSON, or not an object, names the file.
        """
        for data in (b"", b"{", b"\xff\xfe", b"[1]", b'{"not_after": NaN}'):
            _writeBytes(self.meta, data)
            problem = "not a JSON object" if data == b"[1]" else "not valid JSON"
            self.assertLoadFails(f"{self.meta}: {problem}")

    def test_missingField(self) -> None:
        """
        Each field is required.
        """
        original = _readBytes(self.meta)
        for field in (
            "version",
            "names",
            "chain_file",
            "key_file",
            "not_before",
            "not_after",
            "issued_at",
            "directory_url",
        ):
            _writeBytes(self.meta, original)
            self.editMeta(lambda meta: meta.pop(field))  # noqa: B023
            self.assertLoadFails(f"{self.meta}: missing field {field!r}")

    def test_wrongTypes(self) -> None:
        """
        A field of the wrong type names the field and what it must be.
        """
        original = _readBytes(self.meta)
        for field, value, what in [
            ("names", "a.example", "a list of strings"),
            ("names", [1], "a list of strings"),
            ("not_after", "2030", "a number"),
            ("not_after", True, "a number"),
            ("not_before", "HUGE", "a number"),
            ("issued_at", None, "a number"),
            ("directory_url", 5, "a string"),
            ("version", 0, "an integer of at least 1"),
            (
                "chain_file",
                "../../../etc/passwd",
                "a relative path inside the directory",
            ),
            ("key_file", "/etc/shadow", "a relative path inside the directory"),
            ("key_file", "1/./privkey.pem", "a relative path inside the directory"),
        ]:
            _writeBytes(self.meta, original)
            self.editMeta(lambda meta: meta.update({field: value}))  # noqa: B023
            if value == "HUGE":
                # Infinity, as JSON allows it to be spelled.
                _writeBytes(
                    self.meta, _readBytes(self.meta).replace(b'"HUGE"', b"1e400")
                )
            self.assertLoadFails(f"{self.meta}: field {field!r} must be {what}")

    def test_unknownVersion(self) -> None:
        """
        A later format version is refused rather than misread.
        """
        self.editMeta(lambda meta: meta.update(version=2))
        self.assertLoadFails(f"{self.meta}: unsupported version 2")

    def test_metaUnreadable(self) -> None:
        """
        A C{meta.json} that cannot be read names the file and the reason.
        """
        os.remove(self.meta)
        os.mkdir(self.meta)
        self.assertLoadFails(f"cannot read {self.meta}: Is a directory")

    def test_missingFiles(self) -> None:
        """
        A chain or key that C{meta.json} names but is gone names that file.
        """
        os.rename(self.key, self.key + ".away")
        self.assertLoadFails(f"cannot read {self.key}: No such file or directory")
        os.remove(self.chain)
        self.assertLoadFails(f"cannot read {self.chain}: No such file or directory")

    def test_badChain(self) -> None:
        """
        A chain that does not parse names the chain file.
        """
        for data in (b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"):
            _writeBytes(self.chain, data)
            self.assertLoadFails(f"{self.chain}: no valid PEM certificate chain")

    def test_badKey(self) -> None:
        """
        A key that does not parse, or is encrypted, names the key file.
        """
        _writeBytes(self.key, b"garbage")
        self.assertLoadFails(f"{self.key}: no usable PEM private key")
        key = serialization.load_pem_private_key(_OLD.keyPEM, None)
        encrypted = key.private_bytes(
            _PEM, _PKCS8, serialization.BestAvailableEncryption(b"secret")
        )
        _writeBytes(self.key, encrypted)
        self.assertLoadFails(f"{self.key}: private key is encrypted")

    def test_keyMismatch(self) -> None:
        """
        A key that does not match the leaf names both files: a new key
        with the old chain is never served.
        """
        _writeBytes(self.key, _NEW.keyPEM)
        self.assertLoadFails(
            f"{self.key} does not match the certificate in {self.chain}"
        )

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "version",
                            "names",
                            "chain_file",
                            "key_file",
                            "not_before",
                            "not_after",
                            "issued_at",
                            "directory_url",
                            "other",
                        ]
                    ),
                    children,
                    max_size=9,
                )
            ),
            max_leaves=12,
        )
    )
    def test_anyJSONIsAcmeError(self, value: object) -> None:
        """
        Whatever JSON C{meta.json} holds, loading gives a record or an
        L{AcmeError}, never another exception.
        """
        _writeBytes(self.meta, json.dumps(value).encode())
        try:
            self.storage.loadCertificate("app")
        except AcmeError as e:
            self.assertNotIn("\n", str(e))


class BackoffTests(_StorageCase):
    """
    The back-off record.
    """

    def test_missing(self) -> None:
        """
        A site without a back-off has none, and loading creates nothing.
        """
        self.assertIsNone(self.storage.loadBackoff("app"))
        self.assertFalse(os.path.exists(self.stateDir))

    def test_roundTrip(self) -> None:
        """
        The loaded record equals the saved one, and a second save replaces
        it.
        """
        self.storage.saveBackoff("app", _BACKOFF)
        self.assertEqual(self.storage.loadBackoff("app"), _BACKOFF)
        self.storage.saveBackoff("app", _BACKOFF2)
        self.assertEqual(AcmeStorage(self.stateDir).loadBackoff("app"), _BACKOFF2)
        self.assertEqual(self.siteEntries(), {"backoff.json"})
        data = json.loads(_readBytes(os.path.join(self.siteDir, "backoff.json")))
        self.assertEqual(data["retry_at_utc"], "2026-01-01T00:15:00Z")

    def test_remove(self) -> None:
        """
        Saving L{None} removes the record; removing a missing one is fine
        and creates nothing.
        """
        self.storage.saveBackoff("app", None)
        self.assertFalse(os.path.exists(self.stateDir))
        self.storage.saveBackoff("app", _BACKOFF)
        self.storage.saveBackoff("app", None)
        self.assertIsNone(self.storage.loadBackoff("app"))
        self.assertEqual(self.siteEntries(), set())

    def test_removeFails(self) -> None:
        """
        A back-off record that cannot be removed is an L{AcmeError} naming
        it.
        """
        self.storage.saveBackoff("app", _BACKOFF)
        path = os.path.join(self.siteDir, "backoff.json")
        fs = _FailingFileSystem("remove", _oserror(errno.EACCES))
        e = self.assertRaises(
            AcmeError,
            AcmeStorage(self.stateDir, fileSystem=fs).saveBackoff,
            "app",
            None,
        )
        self.assertOneLine(e, f"cannot remove {path}: Permission denied")

    def test_independentOfCertificate(self) -> None:
        """
        Saving a certificate keeps the back-off record, and removing the
        back-off keeps the certificate.
        """
        self.storage.saveBackoff("app", _BACKOFF)
        self.storage.saveCertificate("app", _OLD)
        self.storage.saveCertificate("app", _NEW)
        self.assertEqual(self.storage.loadBackoff("app"), _BACKOFF)
        self.storage.saveBackoff("app", None)
        self.assertEqual(self.storage.loadCertificate("app"), _NEW)

    def test_corrupt(self) -> None:
        """
        A back-off record that is not JSON or lacks a field names the file.
        """
        self.storage.saveBackoff("app", _BACKOFF)
        path = os.path.join(self.siteDir, "backoff.json")
        for data, problem in [
            (b"nope", "not valid JSON"),
            (b'"x"', "not a JSON object"),
            (b"{}", "missing field 'failures'"),
            (
                b'{"failures": 0, "retry_at": 1, "last_error": "", "last_error_at": 1}',
                "field 'failures' must be an integer of at least 1",
            ),
            (
                b'{"failures": 1, "retry_at": 1, "last_error": 2, "last_error_at": 1}',
                "field 'last_error' must be a string",
            ),
        ]:
            _writeBytes(path, data)
            e = self.assertRaises(AcmeError, self.storage.loadBackoff, "app")
            self.assertOneLine(e, f"{path}: {problem}")

    def test_saveRejectsNoFailures(self) -> None:
        """
        A record with fewer than one failure is a L{ValueError}.
        """
        record = BackoffRecord(failures=0, retryAt=T0, lastError="", lastErrorAt=T0)
        self.assertRaises(ValueError, self.storage.saveBackoff, "app", record)

    def test_crashSafe(self) -> None:
        """
        A crash at any point of replacing the back-off record leaves the
        old record or the new one.
        """

        def prepared() -> str:
            stateDir = os.path.join(self.mktemp(), "state")
            AcmeStorage(stateDir).saveBackoff("app", _BACKOFF)
            return stateDir

        counting = _CrashingFileSystem()
        AcmeStorage(prepared(), fileSystem=counting).saveBackoff("app", _BACKOFF2)
        steps = len(counting.changes)
        seen = []
        for limit in range(steps):
            stateDir = prepared()
            crashing = _CrashingFileSystem(limit)
            self.assertRaises(
                _Crash,
                AcmeStorage(stateDir, fileSystem=crashing).saveBackoff,
                "app",
                _BACKOFF2,
            )
            seen.append(AcmeStorage(stateDir).loadBackoff("app"))
        self.assertEqual(seen[0], _BACKOFF)
        self.assertEqual(seen[-1], _BACKOFF2)
        self.assertEqual(set(seen), {_BACKOFF, _BACKOFF2})


class UnwritableTests(_StorageCase):
    """
    A state directory revproxy cannot write to: an L{AcmeError} with the
    path and the reason, one line.
    """

    def test_readOnlyStateDir(self) -> None:
        """
        A state directory without write permission names the directory
        that cannot be created.  (As root, where permissions do not stop
        writes, the file system reports the same error.)
        """
        os.makedirs(self.stateDir)
        os.chmod(self.stateDir, 0o500)
        self.addCleanup(os.chmod, self.stateDir, 0o700)
        probe = os.path.join(self.stateDir, "probe")
        try:
            os.mkdir(probe)
        except PermissionError:
            fs = FileSystem()
        else:
            os.rmdir(probe)
            fs = _FailingFileSystem(
                "makeDirectory",
                _oserror(errno.EACCES),
                lambda path: os.path.dirname(str(path)) == self.stateDir,
            )
        storage = AcmeStorage(self.stateDir, fileSystem=fs)
        certs = os.path.join(self.stateDir, "certs")
        acme = os.path.join(self.stateDir, "acme")
        for call, directory in [
            (lambda: storage.saveCertificate("app", _OLD), certs),
            (lambda: storage.saveBackoff("app", _BACKOFF), certs),
            (storage.accountKey, acme),
            (lambda: storage.saveAccountURI(DIRECTORY, "u"), acme),
        ]:
            e = self.assertRaises(AcmeError, call)
            self.assertOneLine(
                e, f"cannot create directory {directory}: Permission denied"
            )
        self.assertEqual(os.listdir(self.stateDir), [])

    def test_stateDirIsAFile(self) -> None:
        """
        A file where the state directory should be fails every call with
        the path and the reason.
        """
        os.makedirs(os.path.dirname(self.stateDir))
        _writeBytes(self.stateDir, b"")
        certs = os.path.join(self.stateDir, "certs")
        acme = os.path.join(self.stateDir, "acme")
        for call, message in [
            (
                lambda: self.storage.saveCertificate("app", _OLD),
                f"cannot create directory {certs}/app: Not a directory",
            ),
            (
                lambda: self.storage.loadCertificate("app"),
                f"cannot read {certs}/app/meta.json: Not a directory",
            ),
            (
                lambda: self.storage.loadBackoff("app"),
                f"cannot read {certs}/app/backoff.json: Not a directory",
            ),
            (
                self.storage.accountKey,
                f"cannot read {acme}/account.key: Not a directory",
            ),
        ]:
            e = self.assertRaises(AcmeError, call)
            self.assertOneLine(e, message)

    def test_fileInTheWay(self) -> None:
        """
        A file where the site's directory should be names that path.
        """
        os.makedirs(os.path.dirname(self.siteDir))
        _writeBytes(self.siteDir, b"")
        e = self.assertRaises(AcmeError, self.storage.saveCertificate, "app", _OLD)
        self.assertOneLine(
            e, f"cannot create directory {self.siteDir}: a file is in the way"
        )

    def test_missingParentsCreated(self) -> None:
        """
        Missing parents of the state directory are created too, 0700.
        """
        stateDir = os.path.join(self.mktemp(), "a", "b")
        AcmeStorage(stateDir).saveBackoff("app", _BACKOFF)
        self.assertEqual(_mode(os.path.dirname(stateDir)), 0o700)
        self.assertEqual(_mode(stateDir), 0o700)
        self.assertEqual(AcmeStorage(stateDir).loadBackoff("app"), _BACKOFF)


class SiteNameTests(_StorageCase):
    """
    Site names become directory names, so only safe ones are accepted.
    """

    def test_unsafe(self) -> None:
        """
        Empty, dot, dot-dot, slash, NUL and hidden names are a
        L{ValueError} for every per-site call, and nothing is created.
        """
        for site in ("", ".", "..", "a/b", "/", "../x", "a\0b", ".hidden"):
            for call in (
                lambda: self.storage.loadCertificate(site),  # noqa: B023
                lambda: self.storage.saveCertificate(site, _OLD),  # noqa: B023
                lambda: self.storage.loadBackoff(site),  # noqa: B023
                lambda: self.storage.saveBackoff(site, _BACKOFF),  # noqa: B023
                lambda: self.storage.saveBackoff(site, None),  # noqa: B023
            ):
                self.assertRaises(ValueError, call)
        self.assertFalse(os.path.exists(self.stateDir))

    def test_safe(self) -> None:
        """
        Config-style names, dots and dashes included, work.
        """
        for site in ("app", "a.b-c_D9", "x" * 64, "a..b"):
            self.storage.saveBackoff(site, _BACKOFF)
            self.assertEqual(self.storage.loadBackoff(site), _BACKOFF)
