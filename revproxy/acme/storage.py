# -*- test-case-name: tests.test_acme_storage -*-
"""
ACME state under C{state_dir}: the account key and account URIs, each
site's certificate and key, and each site's back-off record.

How it works: docs/internals.md, "ACME storage".
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.logger import Logger

from revproxy.acme import AcmeError
from revproxy.formatting import isoTime, oneLine
from revproxy.tls import keyMatches

_log = Logger()

_DIR_MODE = 0o700
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
_META_VERSION = 1

ACCOUNT_KEY_FILE = "account.key"
ACCOUNT_FILE = "account.json"
META_FILE = "meta.json"
BACKOFF_FILE = "backoff.json"
CHAIN_FILE = "fullchain.pem"
KEY_FILE = "privkey.pem"
CURRENT_LINK = "current"

_GENERATION = re.compile(r"[0-9]{1,18}")
_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


@attrs.frozen
class CertificateRecord:
    """
    A site's certificate as stored.

    @ivar names: The names ordered, lowercase.
    @ivar chainPEM: The chain, leaf first, PEM.
    @ivar keyPEM: The leaf's key, unencrypted PKCS8 PEM.
    @ivar notBefore: The leaf's C{notBefore}, in seconds since the epoch.
    @ivar notAfter: The leaf's C{notAfter}, in seconds since the epoch.
    @ivar issuedAt: When it was issued, in seconds since the epoch.
    @ivar directoryURL: The ACME directory it came from.
    """

    names: tuple[str, ...]
    chainPEM: bytes
    keyPEM: bytes
    notBefore: float
    notAfter: float
    issuedAt: float
    directoryURL: str


@attrs.frozen
class BackoffRecord:
    """
    A site's failed orders, so that a restart does not retry at once.

    @ivar failures: Consecutive failures, at least 1.
    @ivar retryAt: When to try again, in seconds since the epoch.
    @ivar lastError: The last error, one line.
    @ivar lastErrorAt: When it happened, in seconds since the epoch.
    """

    failures: int
    retryAt: float
    lastError: str
    lastErrorAt: float


class FileSystem:
    """
    The file system calls L{AcmeStorage} makes, one method per call, so that
    a test can make any one of them fail, or stop there as if the process
    had crashed.  Every method raises L{OSError} on failure.
    """

    def readFile(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def listDirectory(self, path: str) -> list[str]:
        return os.listdir(path)

    def readLink(self, path: str) -> str:
        return os.readlink(path)

    def makeDirectory(self, path: str, mode: int) -> None:
        """
        Create C{path} with exactly C{mode}, whatever the umask.
        """
        os.mkdir(path, mode)
        os.chmod(path, mode)

    def createTemporary(self, directory: str, name: str, mode: int) -> tuple[int, str]:
        """
        Create a new, empty file C{.NAME.RANDOM.tmp} in C{directory} with
        C{mode}.

        @return: Its file descriptor, open for writing, and its path.
        """
        fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        return fd, path

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def sync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def syncDirectory(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, source: str, destination: str) -> None:
        os.replace(source, destination)

    def link(self, source: str, destination: str) -> None:
        os.link(source, destination)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, path)

    def remove(self, path: str) -> None:
        os.unlink(path)

    def removeDirectory(self, path: str) -> None:
        os.rmdir(path)


def checkSiteName(site: str) -> None:
    """
    Check that C{site} can be used as one path component.

    @raise ValueError: It is empty, C{"."} or C{".."}, starts with a dot, or
        has a C{"/"} or NUL in it.
    """
    if not site or site.startswith(".") or "/" in site or "\0" in site:
        raise ValueError(f"unsafe site name for a directory: {site!r}")


def _reason(e: OSError) -> str:
    return oneLine(e.strerror or str(e) or type(e).__name__)


def _fail(verb: str, path: str, e: OSError) -> NoReturn:
    raise AcmeError(f"cannot {verb} {path}: {_reason(e)}") from e


def _isLeftover(entry: str, name: str | None = None) -> bool:
    """
    Whether C{entry} is a temporary file of L{FileSystem.createTemporary}
    (or of a symlink switch): of C{name}'s, or of any name.
    """
    prefix = "." if name is None else f".{name}."
    return entry.startswith(prefix) and entry.endswith(".tmp")


def _loadKey(data: bytes, path: str) -> PrivateKeyTypes:
    """
    Parse an unencrypted PEM private key.

    @raise AcmeError: It cannot be parsed, naming C{path}.
    """
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise AcmeError(f"{path}: private key is encrypted") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise AcmeError(f"{path}: no usable PEM private key") from e


def _checkPair(chainPEM: bytes, keyPEM: bytes, chainName: str, keyName: str) -> None:
    """
    Check that C{chainPEM} is a PEM chain and C{keyPEM} the leaf's key.

    @raise AcmeError: Either does not parse, or they do not match; the
        message names them by C{chainName} and C{keyName}.
    """
    try:
        chain = x509.load_pem_x509_certificates(chainPEM)
    except ValueError as e:
        raise AcmeError(f"{chainName}: no valid PEM certificate chain") from e
    if not chain:  # pragma: no cover - cryptography raises instead
        raise AcmeError(f"{chainName}: no valid PEM certificate chain")
    key = _loadKey(keyPEM, keyName)
    if not isinstance(key, _KEY_TYPES):
        raise AcmeError(f"{keyName}: unsupported key type {type(key).__name__}")
    try:
        matches = keyMatches(chain[0], key)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise AcmeError(f"{chainName}: unusable public key in the leaf") from e
    if not matches:
        raise AcmeError(f"{keyName} does not match the certificate in {chainName}")


def _rejectConstant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _parseJSON(data: bytes, path: str) -> dict[str, Any]:
    """
    Parse a JSON object.

    @raise AcmeError: It is not one, naming C{path}.
    """
    try:
        value = json.loads(data, parse_constant=_rejectConstant)
    except (ValueError, RecursionError) as e:
        raise AcmeError(f"{path}: not valid JSON") from e
    if not isinstance(value, dict):
        raise AcmeError(f"{path}: not a JSON object")
    return value


def _toJSON(value: Mapping[str, object]) -> bytes:
    return (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8")


class _Fields:
    """
    Typed access to a JSON object's fields; a missing or mistyped one is an
    L{AcmeError} naming the file and the field.
    """

    def __init__(self, value: dict[str, Any], path: str) -> None:
        self._value = value
        self._path = path

    def _bad(self, name: str, what: str) -> NoReturn:
        if name not in self._value:
            raise AcmeError(f"{self._path}: missing field {name!r}")
        raise AcmeError(f"{self._path}: field {name!r} must be {what}")

    def number(self, name: str) -> float:
        value = self._value.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self._bad(name, "a number")
        return value

    def integer(self, name: str, minimum: int) -> int:
        value = self._value.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._bad(name, f"an integer of at least {minimum}")
        return value

    def string(self, name: str) -> str:
        value = self._value.get(name)
        if not isinstance(value, str):
            self._bad(name, "a string")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._value.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._bad(name, "a list of strings")
        return tuple(value)

    def relativePath(self, name: str) -> str:
        """
        A path inside the record's directory: relative, no C{.} or C{..}.
        """
        value = self.string(name)
        parts = value.split("/")
        if "\0" in value or any(part in ("", ".", "..") for part in parts):
            self._bad(name, "a relative path inside the directory")
        return value


class AcmeStorage:
    """
    ACME state in files under C{state_dir}; see the module docstring for
    the layout and the crash-safety rules.
    """

    def __init__(self, stateDir: str, *, fileSystem: FileSystem | None = None) -> None:
        """
        @param stateDir: The C{[server] state_dir}; created (0700) when
            missing, as are its missing parents.
        @param fileSystem: The file system calls to make; tests pass one
            that fails.
        """
        self._stateDir = stateDir
        self._fs = fileSystem if fileSystem is not None else FileSystem()
        self._acmeDir = os.path.join(stateDir, "acme")
        self._certsDir = os.path.join(stateDir, "certs")

    # -- account

    def accountKey(self) -> tuple[ec.EllipticCurvePrivateKey, bool]:
        """
        The ACME account key, created on first use.

        @return: The key, and whether it was created by this call.
        @raise AcmeError: It cannot be read, parsed or written, or it is
            not an EC P-256 key.
        """
        path = os.path.join(self._acmeDir, ACCOUNT_KEY_FILE)
        existing = self._readOptional(path)
        if existing is not None:
            key = self._parseAccountKey(existing, path)
            # A crash while creating the key may have left a copy of it.
            self._removeLeftovers(self._acmeDir, ACCOUNT_KEY_FILE)
            return key, False
        self._ensureDirectory(self._acmeDir)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        created = self._createOnce(path, pem, _SECRET_MODE)
        if not created:
            data = self._readOptional(path)
            if data is None:  # pragma: no cover - removed between two calls
                raise AcmeError(f"cannot read {path}: it disappeared")
            return self._parseAccountKey(data, path), False
        return key, True

    def _parseAccountKey(self, data: bytes, path: str) -> ec.EllipticCurvePrivateKey:
        key = _loadKey(data, path)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise AcmeError(f"{path}: not an EC P-256 private key")
        return key

    def replaceAccountKey(self, keyPEM: bytes, accounts: Mapping[str, str]) -> None:
        """
        Replace the account key with C{keyPEM} (the fleet's, C{[cluster]}),
        and the account URIs with C{accounts} (the old ones were the old
        key's).

        @raise AcmeError: It is not an EC P-256 key, or cannot be written.
        """
        path = os.path.join(self._acmeDir, ACCOUNT_KEY_FILE)
        self._parseAccountKey(keyPEM, "the fleet's account key")
        self._ensureDirectory(self._acmeDir)
        self._writeAtomically(path, keyPEM, _SECRET_MODE)
        self._writeAtomically(
            os.path.join(self._acmeDir, ACCOUNT_FILE),
            _toJSON(dict(accounts)),
            _PUBLIC_MODE,
        )

    def accounts(self) -> dict[str, str]:
        """
        Every account URI, by ACME directory.

        @raise AcmeError: C{account.json} cannot be read or parsed.
        """
        return self._accounts()

    def accountURI(self, directoryURL: str) -> str | None:
        """
        The account URI registered with the ACME directory C{directoryURL},
        if any.

        @raise AcmeError: C{account.json} cannot be read or parsed.
        """
        return self._accounts().get(directoryURL)

    def saveAccountURI(self, directoryURL: str, uri: str) -> None:
        """
        Remember C{uri} as the account at C{directoryURL}; other
        directories' accounts are kept.

        @raise AcmeError: C{account.json} cannot be read, parsed or written.
        """
        accounts = self._accounts()
        accounts[directoryURL] = uri
        self._ensureDirectory(self._acmeDir)
        self._writeAtomically(
            os.path.join(self._acmeDir, ACCOUNT_FILE), _toJSON(accounts), _PUBLIC_MODE
        )

    def _accounts(self) -> dict[str, str]:
        path = os.path.join(self._acmeDir, ACCOUNT_FILE)
        data = self._readOptional(path)
        if data is None:
            return {}
        value = _parseJSON(data, path)
        if not all(isinstance(uri, str) for uri in value.values()):
            raise AcmeError(f"{path}: account URIs must be strings")
        return value

    # -- certificates

    def loadCertificate(self, site: str) -> CertificateRecord | None:
        """
        The certificate last saved for C{site}, if any.

        @raise ValueError: C{site} is not a safe directory name.
        @raise AcmeError: The record cannot be used (unreadable or corrupt
            C{meta.json}, a missing or unparsable chain or key, a key that
            does not match the leaf); the message names the file.
        """
        siteDir = self._siteDirectory(site)
        metaPath = os.path.join(siteDir, META_FILE)
        data = self._readOptional(metaPath)
        if data is None:
            return None
        fields = _Fields(_parseJSON(data, metaPath), metaPath)
        version = fields.integer("version", 1)
        if version != _META_VERSION:
            raise AcmeError(f"{metaPath}: unsupported version {version}")
        chainPath = os.path.join(siteDir, fields.relativePath("chain_file"))
        keyPath = os.path.join(siteDir, fields.relativePath("key_file"))
        record = CertificateRecord(
            names=fields.strings("names"),
            chainPEM=self._read(chainPath),
            keyPEM=self._read(keyPath),
            notBefore=fields.number("not_before"),
            notAfter=fields.number("not_after"),
            issuedAt=fields.number("issued_at"),
            directoryURL=fields.string("directory_url"),
        )
        _checkPair(record.chainPEM, record.keyPEM, chainPath, keyPath)
        return record

    def saveCertificate(self, site: str, record: CertificateRecord) -> None:
        """
        Store C{record} as C{site}'s certificate, replacing the previous one
        crash-safely: until this returns, a crash leaves the previous
        record loadable (or this one, once committed).

        @raise ValueError: C{site} is not a safe directory name.
        @raise AcmeError: The chain or key is unusable (nothing is written),
            or a file cannot be written.
        """
        siteDir = self._siteDirectory(site)
        _checkPair(
            record.chainPEM,
            record.keyPEM,
            f"the new certificate chain for site {site}",
            f"the new private key for site {site}",
        )
        self._ensureDirectory(siteDir)
        entries = self._list(siteDir)
        generation = str(
            1 + max((int(e) for e in entries if _GENERATION.fullmatch(e)), default=0)
        )
        generationDir = os.path.join(siteDir, generation)
        meta = _toJSON(
            {
                "version": _META_VERSION,
                "names": list(record.names),
                "chain_file": f"{generation}/{CHAIN_FILE}",
                "key_file": f"{generation}/{KEY_FILE}",
                "not_before": record.notBefore,
                "not_before_utc": isoTime(record.notBefore, ""),
                "not_after": record.notAfter,
                "not_after_utc": isoTime(record.notAfter, ""),
                "issued_at": record.issuedAt,
                "issued_at_utc": isoTime(record.issuedAt, ""),
                "directory_url": record.directoryURL,
            }
        )
        try:
            self._makeDirectory(generationDir)
            self._syncDirectory(siteDir)
            self._writeAtomically(
                os.path.join(generationDir, CHAIN_FILE),
                record.chainPEM,
                _PUBLIC_MODE,
                syncDirectory=False,
            )
            self._writeAtomically(
                os.path.join(generationDir, KEY_FILE),
                record.keyPEM,
                _SECRET_MODE,
                syncDirectory=False,
            )
            self._syncDirectory(generationDir)
        except AcmeError:
            self._removeQuietly(generationDir, directory=True)
            raise
        # The commit point.
        self._writeAtomically(os.path.join(siteDir, META_FILE), meta, _PUBLIC_MODE)
        keep = {generation}
        if not self._switchCurrent(siteDir, generation):
            try:
                keep.add(self._fs.readLink(os.path.join(siteDir, CURRENT_LINK)))
            except OSError:
                pass
        for entry in self._list(siteDir):
            if _isLeftover(entry):
                self._removeQuietly(os.path.join(siteDir, entry))
            elif _GENERATION.fullmatch(entry) and entry not in keep:
                self._removeQuietly(os.path.join(siteDir, entry), directory=True)

    def _switchCurrent(self, siteDir: str, generation: str) -> bool:
        """
        Point the C{current} symlink at C{generation}, atomically.  Only for
        operators, so a failure is logged, not raised.

        @return: Whether it now points there.
        """
        link = os.path.join(siteDir, CURRENT_LINK)
        temporary = os.path.join(siteDir, f".{CURRENT_LINK}.{secrets.token_hex(8)}.tmp")
        try:
            self._fs.symlink(generation, temporary)
            self._fs.replace(temporary, link)
            self._fs.syncDirectory(siteDir)
        except OSError as e:
            _log.warn(
                "Cannot point {link} at {generation}: {reason}",
                link=link,
                generation=generation,
                reason=_reason(e),
            )
            self._removeQuietly(temporary)
            return False
        return True

    # -- back-off

    def loadBackoff(self, site: str) -> BackoffRecord | None:
        """
        C{site}'s back-off record, if any.

        @raise ValueError: C{site} is not a safe directory name.
        @raise AcmeError: It cannot be read or parsed; the message names
            the file.
        """
        path = os.path.join(self._siteDirectory(site), BACKOFF_FILE)
        data = self._readOptional(path)
        if data is None:
            return None
        fields = _Fields(_parseJSON(data, path), path)
        return BackoffRecord(
            failures=fields.integer("failures", 1),
            retryAt=fields.number("retry_at"),
            lastError=fields.string("last_error"),
            lastErrorAt=fields.number("last_error_at"),
        )

    def saveBackoff(self, site: str, record: BackoffRecord | None) -> None:
        """
        Replace C{site}'s back-off record, atomically; L{None} removes it.

        @raise ValueError: C{site} is not a safe directory name, or
            C{record.failures} is less than 1.
        @raise AcmeError: It cannot be written or removed.
        """
        siteDir = self._siteDirectory(site)
        path = os.path.join(siteDir, BACKOFF_FILE)
        if record is None:
            try:
                self._fs.remove(path)
            except FileNotFoundError:
                return
            except OSError as e:
                _fail("remove", path, e)
            self._syncDirectory(siteDir)
            return
        if record.failures < 1:
            raise ValueError(f"failures must be at least 1, not {record.failures}")
        data = _toJSON(
            {
                "failures": record.failures,
                "retry_at": record.retryAt,
                "retry_at_utc": isoTime(record.retryAt, ""),
                "last_error": record.lastError,
                "last_error_at": record.lastErrorAt,
                "last_error_at_utc": isoTime(record.lastErrorAt, ""),
            }
        )
        self._ensureDirectory(siteDir)
        self._writeAtomically(path, data, _PUBLIC_MODE)

    # -- helpers

    def _siteDirectory(self, site: str) -> str:
        checkSiteName(site)
        return os.path.join(self._certsDir, site)

    def _read(self, path: str) -> bytes:
        try:
            return self._fs.readFile(path)
        except OSError as e:
            _fail("read", path, e)

    def _readOptional(self, path: str) -> bytes | None:
        """
        The contents of C{path}, or L{None} when it does not exist.
        """
        try:
            return self._fs.readFile(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            _fail("read", path, e)

    def _list(self, path: str) -> list[str]:
        try:
            return self._fs.listDirectory(path)
        except OSError as e:
            _fail("list", path, e)

    def _makeDirectory(self, path: str) -> None:
        try:
            self._fs.makeDirectory(path, _DIR_MODE)
        except OSError as e:
            _fail("create directory", path, e)

    def _syncDirectory(self, path: str) -> None:
        try:
            self._fs.syncDirectory(path)
        except OSError as e:
            _fail("sync directory", path, e)

    def _ensureDirectory(self, path: str) -> None:
        """
        Create C{path} (0700) and its missing parents, down from
        C{state_dir}'s own missing parents.
        """
        try:
            self._fs.makeDirectory(path, _DIR_MODE)
        except FileExistsError as e:
            if not os.path.isdir(path):
                raise AcmeError(
                    f"cannot create directory {path}: a file is in the way"
                ) from e
            return
        except FileNotFoundError as e:
            parent = os.path.dirname(path)
            if not parent or parent == path:
                _fail("create directory", path, e)
            self._ensureDirectory(parent)
            self._makeDirectory(path)
        except OSError as e:
            _fail("create directory", path, e)
        parent = os.path.dirname(path) or "."
        self._syncDirectory(parent)

    def _writeTemporary(self, path: str, data: bytes, mode: int) -> str:
        """
        Write C{data} to a new temporary file beside C{path} and flush it
        to disk.

        @return: The temporary file's path.
        """
        directory, name = os.path.split(path)
        try:
            fd, temporary = self._fs.createTemporary(directory or ".", name, mode)
        except OSError as e:
            _fail("write", path, e)
        try:
            try:
                self._fs.write(fd, data)
                self._fs.sync(fd)
            finally:
                self._fs.close(fd)
        except OSError as e:
            self._removeQuietly(temporary)
            _fail("write", path, e)
        return temporary

    def _writeAtomically(
        self, path: str, data: bytes, mode: int, *, syncDirectory: bool = True
    ) -> None:
        """
        Replace C{path} with C{data}: temporary file, C{fsync}, rename, then
        (unless C{syncDirectory} is false) C{fsync} of the directory.
        Leftover temporary files of the same name are removed afterwards.
        """
        temporary = self._writeTemporary(path, data, mode)
        try:
            self._fs.replace(temporary, path)
        except OSError as e:
            self._removeQuietly(temporary)
            _fail("write", path, e)
        directory, name = os.path.split(path)
        directory = directory or "."
        if syncDirectory:
            self._syncDirectory(directory)
        self._removeLeftovers(directory, name)

    def _createOnce(self, path: str, data: bytes, mode: int) -> bool:
        """
        Create C{path} with C{data} unless it exists; never replace it.

        @return: Whether this call created it.
        """
        temporary = self._writeTemporary(path, data, mode)
        directory, name = os.path.split(path)
        directory = directory or "."
        try:
            try:
                self._fs.link(temporary, path)
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # No hard links on this file system: replace instead, which
                # is only unsafe against another process creating it now.
                self._fs.replace(temporary, path)
        except OSError as e:
            _fail("write", path, e)
        finally:
            self._removeQuietly(temporary)
        self._syncDirectory(directory)
        self._removeLeftovers(directory, name)
        return True

    def _removeLeftovers(self, directory: str, name: str) -> None:
        try:
            entries = self._fs.listDirectory(directory)
        except OSError:
            return
        for entry in entries:
            if _isLeftover(entry, name):
                self._removeQuietly(os.path.join(directory, entry))

    def _removeQuietly(self, path: str, *, directory: bool = False) -> None:
        """
        Remove a file (or a directory and the files in it) that is no
        longer needed.  A failure only means it stays until the next save,
        so it is logged, not raised.
        """
        remove: Callable[[str], None] = self._fs.remove
        try:
            if directory:
                for entry in self._fs.listDirectory(path):
                    self._fs.remove(os.path.join(path, entry))
                remove = self._fs.removeDirectory
            remove(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            _log.warn("Cannot remove {path}: {reason}", path=path, reason=_reason(e))
