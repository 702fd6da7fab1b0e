"""
Integration tests: automatic certificates over ACME, end to end.  A real
C{twistd revproxy} child process with C{tls = "acme"} sites orders its
certificates from a real pebble (Debian's ACME test server, see
L{tests.integration.pebble}), which validates the challenges against the
proxy's own listeners; Python's C{ssl} then checks what the proxy serves
against pebble's root.

pebble validates http-01 on C{127.0.0.1:httpPort} and tls-alpn-01 on
C{127.0.0.1:tlsPort} (its DNS answers 127.0.0.1 for every name), so each
test picks free loopback ports first and gives the same ones to pebble and
to the proxy's C{listen_http} and C{listen_https}.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.integration.pebble import Pebble, newPebble, startPebble
from tests.integration.support import (
    EXIT_TIMEOUT,
    ProxyProcess,
    RawResponse,
    Upstream,
    askAdmin,
    closedPort,
    configText,
    connectRaw,
    getReactor,
    replaceFile,
    spawnProxy,
    waitFor,
    waitHTTPSPorts,
    whoamiBody,
)
from tests.integration.test_acme_issuer import verifyChain
from tests.integration.test_tls import (
    handshakeFailure,
    httpGet,
    inThread,
    tlsExchange,
)

#: How long an order may take (pebble answers one in about two seconds).
ISSUE_TIMEOUT = 20.0

#: How long after it starts (or reloads) the proxy may take to start
#: ordering a certificate for a new acme site: it checks at once.
ORDER_START_TIMEOUT = 4.0

EMAIL = "ops@revproxy.example"


def placeholderName(site: str) -> str:
    """
    The common name of the self-signed placeholder of C{site}.
    """
    return f"revproxy placeholder for {site}"


def commonName(cert: x509.Certificate) -> str:
    """
    The subject's common name of C{cert}, or C{""}.
    """
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else ""


def dnsNames(cert: x509.Certificate) -> list[str]:
    """
    The DNS subject alternative names of C{cert}, sorted.
    """
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sorted(san.value.get_values_for_type(x509.DNSName))


def fileMode(path: str) -> int:
    """
    The permission bits of the file at C{path} (following symlinks).
    """
    return stat.S_IMODE(os.stat(path).st_mode)


def parseTime(text: str) -> float:
    """
    A time as the admin socket writes it (C{2030-01-02T03:04:05Z}), in
    seconds since the epoch.
    """
    when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return when.timestamp()


class _AcmeTestCase(TestCase):
    """
    An upstream C{A}; a short directory under C{/tmp} (the admin socket's
    path must stay short) for the config, the admin socket and the proxy's
    C{state_dir}; free loopback ports for the proxy's HTTP and HTTPS
    listeners, which pebble validates against.
    """

    timeout = 50

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-acme-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.stateDir = self.path("state")
        self.socketPath = self.path("admin.sock")
        self.configPath = self.path("revproxy.toml")
        self.rootFile = self.path("pebble-root.pem")
        self.httpPort = closedPort()
        self.tlsPort = closedPort()
        self.hasHTTP = True
        self.upstream = Upstream(self.reactor, "A")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.pebble: Pebble | None = None
        self.proxy: ProxyProcess | None = None

    def path(self, *names: str) -> str:
        """
        The path of C{names} under the test's directory.
        """
        return os.path.join(self.directory, *names)

    # -- pebble

    async def startPebble(self, httpPort: int | None = None) -> Pebble:
        """
        Start a pebble validating on the proxy's ports (or http-01 on
        C{httpPort}).
        """
        self.pebble = await startPebble(
            self, self.httpPort if httpPort is None else httpPort, self.tlsPort
        )
        return self.pebble

    async def writeRoot(self) -> str:
        """
        Fetch pebble's root (made anew at each start) into a file for the
        clients to trust; its path.
        """
        assert self.pebble is not None
        root = await self.pebble.root()
        with open(self.rootFile, "wb") as f:
            f.write(root)
        return self.rootFile

    def pebbleCount(self, text: str) -> int:
        """
        How many times pebble logged C{text}.
        """
        assert self.pebble is not None
        return self.pebble.output.count(text)

    # -- the proxy

    def site(
        self, name: str, hosts: Sequence[str], **extra: object
    ) -> dict[str, object]:
        """
        An acme site C{name} for C{hosts}, forwarding to the upstream.
        """
        site: dict[str, object] = {
            "name": name,
            "hosts": list(hosts),
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
            "tls": "acme",
        }
        site.update(extra)
        return site

    def writeConfig(
        self,
        sites: Sequence[dict[str, object]],
        *,
        challenge: str = "http-01",
        directoryURL: str | None = None,
        caFile: str | None = None,
        http: bool = True,
        stateDir: str | None = None,
    ) -> None:
        """
        Write the config: C{sites}, an HTTP listener on L{httpPort} (unless
        not C{http}), an HTTPS listener on L{tlsPort}, the admin socket,
        and C{[acme]} pointing at the pebble (or at C{directoryURL}).
        """
        pebble = self.pebble
        if directoryURL is None:
            assert pebble is not None
            directoryURL = pebble.directoryURL
        if caFile is None and pebble is not None:
            caFile = pebble.caFile
        self.hasHTTP = http
        server = {
            "listen_https": [f"tcp:{self.tlsPort}:interface=127.0.0.1"],
            "admin_socket_path": self.socketPath,
        }
        listen = [f"tcp:{self.httpPort}:interface=127.0.0.1"] if http else []
        text = configText(sites, stateDir or self.stateDir, listen, server)
        text += "\n[acme]\n" + "".join(
            f"{key} = {json.dumps(value)}\n"
            for key, value in (
                ("email", EMAIL),
                ("directory_url", directoryURL),
                ("ca_file", caFile or ""),
                ("challenge", challenge),
            )
        )
        replaceFile(self.configPath, text)

    async def startProxy(self) -> ProxyProcess:
        """
        Start a proxy on the config file and wait until its reactor runs
        and it serves HTTPS; it is stopped (and must exit 0) after the
        test.
        """
        if self.hasHTTP:
            proxy, port = await spawnProxy(
                self.reactor, ["--config", self.configPath], self.directory
            )
            self.assertEqual(port, self.httpPort, proxy.output)
        else:
            proxy = await self.spawnHTTPSOnly()
        self.proxy = proxy
        self.addCleanup(self.stopProxy, proxy)
        ports = await waitHTTPSPorts(proxy)
        self.assertEqual(ports, [self.tlsPort], proxy.output)
        return proxy

    async def spawnHTTPSOnly(self) -> ProxyProcess:
        """
        Start a proxy that has no HTTP listener; it is up once a TLS
        handshake, which only its running reactor answers, ends (either
        way).
        """
        proxy = ProxyProcess(
            self.reactor, ["--config", self.configPath], self.directory
        )
        try:
            await waitHTTPSPorts(proxy)
            await inThread(
                handshakeFailure,
                self.tlsPort,
                "probe.invalid",
                None,
                what="a TLS probe",
            )
        except BaseException:
            proxy.kill()
            await proxy.waitExit()
            raise
        return proxy

    async def stopProxy(self, proxy: ProxyProcess) -> None:
        """
        SIGTERM C{proxy}; it must exit 0.
        """
        running = proxy.running
        code = await proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{proxy.output}")

    def outputs(self, proxy: ProxyProcess | None = None) -> str:
        """
        The proxy's and pebble's output, for failure messages.
        """
        proxy = proxy or self.proxy
        parts = [proxy.output if proxy is not None else "(no proxy)"]
        if self.pebble is not None:
            parts.append(self.pebble.output)
        return "\n".join(parts)

    def logLines(self, text: str, proxy: ProxyProcess | None = None) -> list[str]:
        """
        The lines the proxy logged (on standard output) or wrote on
        standard error that contain C{text}.
        """
        proxy = proxy or self.proxy
        assert proxy is not None
        output = (proxy.protocol.stdout + proxy.protocol.stderr).decode(
            "utf-8", "replace"
        )
        return [line for line in output.splitlines() if text in line]

    async def waitLog(
        self,
        text: str,
        count: int = 1,
        seconds: float = ISSUE_TIMEOUT,
        proxy: ProxyProcess | None = None,
    ) -> list[str]:
        """
        Wait until the proxy has logged C{count} lines containing C{text};
        those lines.  Fail with both outputs after C{seconds}.
        """
        theProxy = proxy or self.proxy
        assert theProxy is not None
        try:
            await waitFor(
                lambda: (
                    len(self.logLines(text, theProxy)) >= count or not theProxy.running
                ),
                seconds,
                f"revproxy logging {text!r} {count} time(s)",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.outputs(theProxy)}") from None
        lines = self.logLines(text, theProxy)
        if len(lines) < count:
            raise AssertionError(
                f"revproxy exited before logging {text!r}\n{self.outputs(theProxy)}"
            )
        return lines

    async def waitIssued(self, site: str, count: int = 1) -> str:
        """
        Wait for the C{count}th "certificate issued" line of C{site}; it.
        """
        lines = await self.waitLog(f"ACME: site {site}: certificate issued for", count)
        return lines[count - 1]

    async def expectOwnOrder(self, site: str) -> None:
        """
        The proxy starts ordering C{site}'s certificate by itself, at once
        (a new acme site, at start-up or after a reload).
        """
        await self.waitLog(
            f"ACME: site {site}: ordering a certificate for",
            seconds=ORDER_START_TIMEOUT,
        )

    async def admin(self, command: str, seconds: float = EXIT_TIMEOUT) -> Any:
        """
        The answer of the admin socket to C{command}.
        """
        return await askAdmin(self.reactor, self.socketPath, command, seconds)

    async def renew(self, site: str) -> dict[str, Any]:
        """
        The answer of the admin C{renew SITE}, which ends with the order
        (or with the one in progress).
        """
        answer: dict[str, Any] = await self.admin(f"renew {site}", ISSUE_TIMEOUT)
        return answer

    async def obtain(self, site: str) -> None:
        """
        Make sure C{site} has its certificate from pebble: the admin
        C{renew} waits for the proxy's own order if one is in progress,
        or places one.
        """
        answer = await self.renew(site)
        self.assertEqual(answer["status"], "ok", f"{answer}\n{self.outputs()}")

    async def acmeCert(self, site: str) -> dict[str, Any] | None:
        """
        The admin C{certs} entry of the acme site C{site}, if any.
        """
        answer = await self.admin("certs")
        self.assertEqual(answer["status"], "ok", answer)
        entries = [
            c
            for c in answer["certificates"]
            if c["sites"] == [site] and "next_renewal" in c
        ]
        self.assertLessEqual(len(entries), 1, answer)
        return entries[0] if entries else None

    # -- clients

    async def peerCertificate(
        self, serverName: str, caFile: str | None = None
    ) -> x509.Certificate:
        """
        The certificate a new handshake with C{serverName} gets (verified
        against C{caFile}, chain and name, when given).
        """
        cert, _ = await inThread(
            tlsExchange,
            self.tlsPort,
            serverName,
            caFile,
            None,
            what=f"a handshake for {serverName}",
        )
        return cert

    async def fetch(
        self, serverName: str, caFile: str | None, path: str = "/whoami"
    ) -> tuple[x509.Certificate, RawResponse]:
        """
        GET C{path} over a new TLS connection with C{serverName} in SNI,
        verified against C{caFile} (chain and name; nothing when
        L{None}); the certificate and the response.
        """
        cert, response = await inThread(
            tlsExchange,
            self.tlsPort,
            serverName,
            caFile,
            httpGet(path, serverName),
            what=f"GET {path} over TLS to {serverName}",
        )
        assert response is not None
        return cert, response

    async def plainGet(self, path: str, host: str) -> RawResponse:
        """
        GET C{path} for C{host} over plain HTTP.
        """
        client = await connectRaw(self.reactor, self.httpPort)
        try:
            return await client.request(httpGet(path, host))
        finally:
            await client.close()

    # -- assertions

    def assertWhoami(self, response: RawResponse) -> None:
        """
        C{response} is the upstream's whole C{/whoami}.
        """
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertEqual(response.body, whoamiBody("A"))

    def assertPlaceholder(
        self, cert: x509.Certificate, site: str, names: Sequence[str]
    ) -> None:
        """
        C{cert} is the self-signed placeholder of C{site}, for C{names}.
        """
        self.assertEqual(commonName(cert), placeholderName(site))
        self.assertEqual(cert.issuer, cert.subject)
        self.assertEqual(dnsNames(cert), sorted(names))

    def assertFromPebble(self, cert: x509.Certificate, names: Sequence[str]) -> None:
        """
        C{cert} is one of pebble's, for exactly C{names}.
        """
        self.assertIn("Pebble Intermediate CA", cert.issuer.rfc4514_string())
        self.assertEqual(dnsNames(cert), sorted(names))

    def storedChain(self, site: str) -> list[x509.Certificate]:
        """
        C{site}'s chain as stored (C{current/fullchain.pem}), leaf first.
        """
        path = os.path.join(self.stateDir, "certs", site, "current", "fullchain.pem")
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())

    def assertStored(
        self, site: str, names: Sequence[str], serial: int, rootPEM: bytes
    ) -> None:
        """
        The state directory holds the account key and C{site}'s
        certificate (serial C{serial}, for C{names}, leading to
        C{rootPEM}) with its key, with the documented modes.
        """
        accountKey = os.path.join(self.stateDir, "acme", "account.key")
        siteDir = os.path.join(self.stateDir, "certs", site)
        meta = os.path.join(siteDir, "meta.json")
        chainFile = os.path.join(siteDir, "current", "fullchain.pem")
        keyFile = os.path.join(siteDir, "current", "privkey.pem")
        for path in (accountKey, meta, chainFile, keyFile):
            self.assertTrue(os.path.isfile(path), f"{path} is missing")
        self.assertEqual(oct(fileMode(accountKey)), oct(0o600), accountKey)
        self.assertEqual(oct(fileMode(keyFile)), oct(0o600), keyFile)
        with open(meta, encoding="utf-8") as f:
            record = json.load(f)
        self.assertEqual(record["names"], list(names), record)
        chain = self.storedChain(site)
        self.assertEqual(chain[0].serial_number, serial)
        pems = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
        verifyChain(pems, rootPEM, names)

    def assertCertsEntry(
        self, entry: dict[str, Any] | None, names: Sequence[str], cert: x509.Certificate
    ) -> None:
        """
        The admin C{certs} entry of an issued acme site: source, names,
        expiry of C{cert}, and the next renewal with its reason.
        """
        assert entry is not None
        self.assertEqual(entry["source"], "acme", entry)
        self.assertEqual(entry["names"], list(names), entry)
        self.assertIsNone(entry["last_error"], entry)
        self.assertFalse(entry["ordering"], entry)
        notAfter = parseTime(entry["not_after"])
        self.assertEqual(notAfter, cert.not_valid_after_utc.timestamp(), entry)
        nextRenewal = parseTime(entry["next_renewal"])
        now = self.reactor.seconds()
        self.assertTrue(now < nextRenewal < notAfter, entry)
        reason = entry["next_renewal_reason"]
        self.assertIsInstance(reason, str)
        self.assertTrue(reason and reason != "no certificate yet", entry)


class IssuanceTests(_AcmeTestCase):
    """
    A proxy that starts with no certificate gets one from pebble by
    itself, over http-01 or tls-alpn-01.
    """

    names = ["a.test", "www.a.test"]

    async def assertServedFromPebble(self, proxy: ProxyProcess) -> x509.Certificate:
        """
        A client trusting pebble's root (only) verifies the chain and each
        name, and gets the upstream's answer; what is stored is the same
        certificate.  The certificate.
        """
        root = await self.writeRoot()
        cert, response = await self.fetch("a.test", root)
        self.assertWhoami(response)
        self.assertFromPebble(cert, self.names)
        other, response = await self.fetch("www.a.test", root)
        self.assertWhoami(response)
        self.assertEqual(other.serial_number, cert.serial_number)
        with open(root, "rb") as f:
            self.assertStored("a", self.names, cert.serial_number, f.read())
        self.assertCertsEntry(await self.acmeCert("a"), self.names, cert)
        self.assertEqual(
            len(self.logLines("ACME: site a: ordering a certificate for")),
            1,
            proxy.output,
        )
        self.assertNotIn("Traceback", proxy.output)
        return cert

    async def checkPlaceholderAtStart(self, proxy: ProxyProcess) -> None:
        """
        The proxy logged that it serves a placeholder; the first handshake,
        made at once, usually still gets it (an order takes a second or
        two), or else already the issued certificate.
        """
        lines = self.logLines(
            "ACME: site a: no certificate yet; serving a self-signed "
            "placeholder until the CA issues one"
        )
        self.assertEqual(len(lines), 1, proxy.output)
        first = await self.peerCertificate("a.test")
        if commonName(first) == placeholderName("a"):
            self.assertPlaceholder(first, "a", self.names)
            # Nobody trusts it.
            root = await self.writeRoot()
            error = await inThread(
                handshakeFailure, self.tlsPort, "a.test", root, what="verifying"
            )
            if isinstance(error, ssl.SSLError):
                self.assertEqual(error.reason, "CERTIFICATE_VERIFY_FAILED", error)
        else:
            self.assertFromPebble(first, self.names)

    async def test_http01(self) -> None:
        """
        http-01: the proxy starts on a self-signed placeholder, orders at
        once, answers pebble's validation on its HTTP listener and, with no
        restart, serves the issued certificate: a client trusting pebble's
        root verifies it and gets the upstream's answer.  The certificate,
        its key (0600) and the account key (0600) are under C{state_dir}.
        """
        await self.startPebble()
        self.writeConfig([self.site("a", self.names)])
        proxy = await self.startProxy()
        await self.checkPlaceholderAtStart(proxy)
        await self.expectOwnOrder("a")
        line = await self.waitIssued("a")
        self.assertIn("certificate issued for a.test, www.a.test, expires", line)
        await self.assertServedFromPebble(proxy)

    async def test_tlsalpn01(self) -> None:
        """
        tls-alpn-01, with no HTTP listener at all: pebble validates with an
        C{acme-tls/1} handshake on the proxy's HTTPS listener, and the
        proxy then serves the issued certificate.
        """
        await self.startPebble(httpPort=closedPort())
        self.writeConfig(
            [self.site("a", self.names)], challenge="tls-alpn-01", http=False
        )
        proxy = await self.startProxy()
        await self.checkPlaceholderAtStart(proxy)
        await self.expectOwnOrder("a")
        await self.waitIssued("a")
        await self.assertServedFromPebble(proxy)


class LifecycleTests(_AcmeTestCase):
    """
    An issued certificate across restarts, forced renewals and reloads.
    """

    names = ["a.test", "www.a.test"]

    async def issuedProxy(self) -> tuple[ProxyProcess, str]:
        """
        A proxy with site C{a} on its certificate from a started pebble;
        the proxy and the path of pebble's root.
        """
        await self.startPebble()
        self.writeConfig([self.site("a", self.names)])
        proxy = await self.startProxy()
        await self.obtain("a")
        return proxy, await self.writeRoot()

    async def test_restartReusesCertificate(self) -> None:
        """
        After SIGTERM, a proxy started again on the same C{state_dir}
        serves the stored certificate (same serial) from its first
        handshake on and places no order: it logs none, and pebble issues
        nothing more.
        """
        first, root = await self.issuedProxy()
        cert, _ = await self.fetch("a.test", root)
        self.assertFromPebble(cert, self.names)
        await self.stopProxy(first)
        orders = self.pebbleCount("/order-plz")
        issued = self.pebbleCount("Issued certificate serial")
        self.assertGreaterEqual(orders, 1, self.outputs(first))
        self.assertEqual(issued, len(self.logLines("certificate issued", first)))

        second = await self.startProxy()
        again, response = await self.fetch("a.test", root)
        self.assertWhoami(response)
        self.assertEqual(again.serial_number, cert.serial_number)
        self.assertEqual(
            len(self.logLines("ACME: site a: serving the stored certificate", second)),
            1,
            second.output,
        )
        entry = await self.acmeCert("a")
        self.assertCertsEntry(entry, self.names, cert)
        # Whatever the proxy would order, it does at once after start-up.
        await deferLater(self.reactor, 0.5, lambda: None)
        self.assertEqual(self.logLines("ordering a certificate", second), [])
        self.assertEqual(self.logLines("placeholder", second), [])
        self.assertEqual(self.pebbleCount("/order-plz"), orders, self.outputs())
        self.assertEqual(self.pebbleCount("Issued certificate serial"), issued)

    async def test_forcedRenewal(self) -> None:
        """
        The admin C{renew a} answers ok once a new certificate (another
        serial, still from pebble) is in place; new handshakes get it, it
        is stored, and C{certs} shows it with its next renewal and why.
        """
        proxy, root = await self.issuedProxy()
        old, _ = await self.fetch("a.test", root)
        issuedLines = len(self.logLines("ACME: site a: certificate issued for"))
        answer = await self.renew("a")
        self.assertEqual(answer["status"], "ok", f"{answer}\n{self.outputs()}")
        described = answer["certificate"]
        self.assertEqual(
            (described["source"], described["names"], described["last_error"]),
            ("acme", self.names, None),
            answer,
        )
        await self.waitIssued("a", issuedLines + 1)
        new, response = await self.fetch("a.test", root)
        self.assertWhoami(response)
        self.assertFromPebble(new, self.names)
        self.assertNotEqual(new.serial_number, old.serial_number)
        with open(root, "rb") as f:
            self.assertStored("a", self.names, new.serial_number, f.read())
        self.assertCertsEntry(await self.acmeCert("a"), self.names, new)
        self.assertNotIn("Traceback", proxy.output)

    async def test_reloadAddsAndDropsSite(self) -> None:
        """
        A second acme site added to the config and reloaded through the
        admin socket is served at once with its placeholder, then with its
        own certificate, with no restart.  Removed again and reloaded, it
        is no longer served, and its files stay on disk.
        """
        proxy, root = await self.issuedProxy()
        siteA = self.site("a", self.names)
        siteB = self.site("b", ["b.test"])
        self.writeConfig([siteA, siteB])
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertEqual(
            len(
                self.logLines("ACME: site b: no certificate yet; serving a self-signed")
            ),
            1,
            proxy.output,
        )
        cert = await self.peerCertificate("b.test")
        if commonName(cert) == placeholderName("b"):
            self.assertPlaceholder(cert, "b", ["b.test"])
        else:
            self.assertFromPebble(cert, ["b.test"])
        await self.expectOwnOrder("b")
        await self.waitIssued("b")
        cert, response = await self.fetch("b.test", root)
        self.assertWhoami(response)
        self.assertFromPebble(cert, ["b.test"])
        certA, response = await self.fetch("a.test", root)
        self.assertWhoami(response)
        self.assertFromPebble(certA, self.names)
        self.assertCertsEntry(await self.acmeCert("b"), ["b.test"], cert)

        self.writeConfig([siteA])
        answer = await self.admin("reload")
        self.assertEqual(answer["status"], "ok", answer)
        self.assertIsNone(await self.acmeCert("b"))
        # No site has b.test any more, and there is no default site.
        result = await inThread(
            handshakeFailure, self.tlsPort, "b.test", None, what="a handshake for b"
        )
        if not isinstance(result, ssl.SSLError):
            self.fail(f"b.test still gets {result.subject}\n{proxy.output}")
        self.assertEqual(result.reason, "TLSV1_UNRECOGNIZED_NAME", repr(result))
        response = await self.plainGet("/whoami", "b.test")
        self.assertEqual(response.code, 421, response.body)
        _, response = await self.fetch("a.test", root)
        self.assertWhoami(response)
        with open(root, "rb") as f:
            self.assertStored("b", ["b.test"], cert.serial_number, f.read())


class FailureTests(_AcmeTestCase):
    """
    When certificates cannot be had, the proxy says so in one line and goes
    on serving.
    """

    names = ["a.test", "www.a.test"]

    async def test_directoryUnreachable(self) -> None:
        """
        With nothing listening at the directory URL, the site is served
        with its placeholder over HTTPS and normally over HTTP; the failed
        order is one error line with the reason; C{certs} shows the error
        and the back-off (30 to 60 s after a first failure); the back-off
        is stored.
        """
        port = closedPort()
        self.writeConfig(
            [self.site("a", self.names)],
            directoryURL=f"https://127.0.0.1:{port}/dir",
        )
        proxy = await self.startProxy()
        cert, response = await self.fetch("a.test", None)
        self.assertPlaceholder(cert, "a", self.names)
        self.assertWhoami(response)
        await self.expectOwnOrder("a")
        lines = await self.waitLog("ACME: site a: order failed")
        started = self.reactor.seconds()
        self.assertEqual(len(lines), 1, proxy.output)
        line = lines[0]
        self.assertIn("order failed (1 in a row), retrying at", line)
        self.assertIn("still serving the self-signed placeholder", line)
        self.assertIn(f"127.0.0.1:{port}", line)
        self.assertIn("refused", line.lower())
        errors = self.logLines("#error]") + self.logLines("#critical]")
        self.assertEqual(errors, lines, proxy.output)
        self.assertEqual(self.logLines("#warn]"), [], proxy.output)
        self.assertNotIn("Traceback", proxy.output)

        entry = await self.acmeCert("a")
        assert entry is not None
        self.assertEqual(entry["source"], "placeholder", entry)
        self.assertIn(f"127.0.0.1:{port}", entry["last_error"], entry)
        self.assertFalse(entry["ordering"], entry)
        self.assertTrue(
            entry["next_renewal_reason"].startswith("back-off until "), entry
        )
        delay = parseTime(entry["next_renewal"]) - started
        self.assertTrue(25 <= delay <= 61, (delay, entry))
        backoff = os.path.join(self.stateDir, "certs", "a", "backoff.json")
        self.assertTrue(os.path.isfile(backoff), backoff)

        cert, response = await self.fetch("www.a.test", None)
        self.assertPlaceholder(cert, "a", self.names)
        self.assertWhoami(response)
        self.assertWhoami(await self.plainGet("/whoami", "a.test"))
        self.assertTrue(proxy.running)

    async def test_stateDirUnusable(self) -> None:
        """
        With C{state_dir} under a regular file (nothing can be read or
        written there, even as root), the proxy starts and serves plain
        HTTP, and HTTPS with the placeholder; the failed order is one error
        line naming the path and the reason, beside one warning at start
        that the stored state cannot be read.
        """
        blocker = self.path("not-a-directory")
        with open(blocker, "w"):
            pass
        stateDir = os.path.join(blocker, "state")
        self.writeConfig(
            [self.site("a", self.names)],
            directoryURL=f"https://127.0.0.1:{closedPort()}/dir",
            stateDir=stateDir,
        )
        proxy = await self.startProxy()
        self.assertWhoami(await self.plainGet("/whoami", "a.test"))
        cert, response = await self.fetch("a.test", None)
        self.assertPlaceholder(cert, "a", self.names)
        self.assertWhoami(response)
        await self.expectOwnOrder("a")
        lines = await self.waitLog("ACME: site a: order failed")
        self.assertEqual(len(lines), 1, proxy.output)
        self.assertIn(stateDir, lines[0])
        self.assertIn("Not a directory", lines[0])
        self.assertIn("still serving the self-signed placeholder", lines[0])
        errors = self.logLines("#error]") + self.logLines("#critical]")
        self.assertEqual(errors, lines, proxy.output)
        self.assertNotIn("Traceback", proxy.output)
        entry = await self.acmeCert("a")
        assert entry is not None
        self.assertIn(stateDir, entry["last_error"], entry)
        self.assertWhoami(await self.plainGet("/whoami", "a.test"))
        _, response = await self.fetch("www.a.test", None)
        self.assertWhoami(response)
        self.assertFalse(os.path.exists(stateDir))
        # The condition in all: one warning when the site's stored state
        # cannot be read at start, and the failed order's error.
        problems = self.logLines(stateDir)
        self.assertEqual(len(problems), 2, "\n".join(problems))
        self.assertIn("cannot use its stored state", problems[0])
        self.assertEqual(problems[1], lines[0])


class RedirectTests(_AcmeTestCase):
    """
    C{redirect_http = true} on an acme site.
    """

    async def test_redirectOnlyOnceIssued(self) -> None:
        """
        While the site is on its placeholder, plain HTTP is served, not
        redirected; once its certificate is issued, it is redirected (308)
        to HTTPS, which serves it.  Challenge paths are never redirected.
        """
        pebble = newPebble(self, self.httpPort, self.tlsPort)
        # The CA file exists, but pebble does not run yet: the first order
        # (if the proxy places one) fails, and the site stays on its
        # placeholder until pebble runs and the admin renews.
        pebble.prepare()
        self.pebble = pebble
        self.writeConfig([self.site("a", ["a.test"], redirect_http=True)])
        proxy = await self.startProxy()
        challenge = "/.well-known/acme-challenge/not-a-token"

        cert = await self.peerCertificate("a.test")
        self.assertPlaceholder(cert, "a", ["a.test"])
        self.assertWhoami(await self.plainGet("/whoami?q=1", "a.test"))
        response = await self.plainGet(challenge, "a.test")
        self.assertEqual(response.code, 404, response.body)

        await pebble.start()
        await self.obtain("a")
        root = await self.writeRoot()
        response = await self.plainGet("/whoami?q=1", "a.test")
        self.assertEqual(response.code, 308, f"{response.body!r}\n{proxy.output}")
        location = f"https://a.test:{self.tlsPort}/whoami?q=1"
        self.assertEqual(response.header(b"location"), [location.encode("ascii")])
        response = await self.plainGet(challenge, "a.test")
        self.assertEqual(response.code, 404, response.body)
        cert, response = await self.fetch("a.test", root, "/whoami?q=1")
        self.assertWhoami(response)
        self.assertFromPebble(cert, ["a.test"])
