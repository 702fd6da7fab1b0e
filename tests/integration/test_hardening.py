"""
Integration tests: the real proxy, started as the systemd unit starts it
(C{revproxy --config FILE}, i.e. L{revproxy.cli.main}), under what the unit's
hardening does to the process, as far as it can be done without systemd:

  - W^X: the child first calls C{prctl(PR_SET_MDWE,
    PR_MDWE_REFUSE_EXEC_GAIN)} (Linux 6.3 and later), the rule systemd's
    C{MemoryDenyWriteExecute=yes} enforces (with seccomp on systemd 252):
    no memory mapping may be writable and executable at once, or become
    executable later;
  - C{UMask=0077};
  - C{SystemCallFilter=~@resources} with C{SystemCallErrorNumber=EPERM}
    as far as the descriptor limit goes: a seccomp filter that fails the
    C{setrlimit} system call with EPERM, under a lowered soft
    C{RLIMIT_NOFILE} (C{LimitNOFILE=} with a soft limit under the hard);
  - the journal as standard output (C{$JOURNAL_STREAM} naming it) and
    C{$NOTIFY_SOCKET} (C{Type=notify}).

HTTPS under W^X is checked against the shipped unit file: pyOpenSSL's SNI
and ALPN callbacks are cffi C{ffi.callback()} closures, which cffi on Linux
allocates in writable and executable memory; so the unit must say
C{MemoryDenyWriteExecute=no} while that fails, and the test says so (and
asks for C{yes}) the day it works.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import resource
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence

from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    LOOPBACK_LISTEN,
    REPO_ROOT,
    START_TIMEOUT,
    CommandResult,
    IIntegrationReactor,
    ProxyProcess,
    Upstream,
    _childEnvironment,
    _ChildProtocol,
    askAdmin,
    connectRaw,
    getReactor,
    replaceFile,
    runCommand,
    waitFor,
    waitHTTPSPorts,
    whoamiBody,
    withTimeout,
    writeConfig,
)
from tests.integration.test_tls import Authority, tool

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1

#: The unit file the Debian package installs.
UNIT_FILE = os.path.join(REPO_ROOT, "debian", "revproxy.service")

#: What cffi says when it cannot have writable and executable memory.
CFFI_WX_ERROR = b"Cannot allocate write+execute memory for ffi.callback()"

#: The seccomp audit architecture and the number of the C{setrlimit} system
#: call, by C{platform.machine()}.
SETRLIMIT_SYSCALL = {"x86_64": (0xC000003E, 160), "aarch64": (0xC00000B7, 164)}

#: The soft descriptor limit the child starts with when it denies
#: C{setrlimit}.
LOW_NOFILE = 256

#: The child: its first argument lists what to do before running
#: C{revproxy} with the remaining arguments: C{deny-wx} denies W^X,
#: C{deny-setrlimit} lowers the soft descriptor limit and has a seccomp
#: filter fail the C{setrlimit} system call with EPERM (each proven to
#: bite); then it sets the unit's umask and makes its standard output "the
#: journal".
_CHILD = f"""
import ctypes, errno, mmap, os, platform, resource, sys
modes = sys.argv.pop(1).split(",")
os.umask(0o077)
if "deny-setrlimit" in modes:
    arch, nr = {SETRLIMIT_SYSCALL!r}[platform.machine()]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min({LOW_NOFILE}, hard), hard))

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    # BPF: load the architecture (offset 4 of seccomp_data), allow another;
    # load the call's number (offset 0); setrlimit -> ERRNO(EPERM), else allow.
    ALLOW, EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
    code = (Filter * 6)(
        Filter(0x20, 0, 0, 4), Filter(0x15, 0, 3, arch),
        Filter(0x20, 0, 0, 0), Filter(0x15, 0, 1, nr),
        Filter(0x06, 0, 0, EPERM), Filter(0x06, 0, 0, ALLOW),
    )
    program = Program(len(code), code)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit("hardening: PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno()))
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    if libc.prctl(22, 2, ctypes.addressof(program), 0, 0) != 0:
        sys.exit("hardening: PR_SET_SECCOMP: " + os.strerror(ctypes.get_errno()))
    limits = (ctypes.c_ulong * 2)(min({LOW_NOFILE}, hard), hard)
    libc.syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p]
    if libc.syscall(nr, resource.RLIMIT_NOFILE, limits) == -1 and ctypes.get_errno() == errno.EPERM:
        print("hardening: setrlimit(2) denied", flush=True)
    else:
        sys.exit("hardening: the setrlimit system call was allowed")
if "deny-wx" in modes:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit("hardening: PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("hardening: W^X enforced", flush=True)
    else:
        sys.exit("hardening: a writable and executable mapping was allowed")
status = os.fstat(1)
os.environ["JOURNAL_STREAM"] = f"{{status.st_dev}}:{{status.st_ino}}"
sys.argv[0] = "revproxy"
from revproxy.cli import main
sys.exit(main())
"""


def mdweSupported() -> bool:
    """
    Whether this kernel has C{PR_SET_MDWE} (Linux 6.3 and later).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return int(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)) >= 0


def unitSetting(name: str) -> str | None:
    """
    The value the unit file gives C{name} (the last assignment wins, as
    in systemd), or L{None}.
    """
    value = None
    with open(UNIT_FILE, encoding="utf-8") as f:
        for line in f:
            key, sep, rest = line.strip().partition("=")
            if sep and key == name:
                value = rest.strip()
    return value


def isYes(value: str | None) -> bool:
    """
    Whether C{value} is a systemd boolean that means yes.
    """
    return (value or "").lower() in ("yes", "true", "on", "1")


class HardenedProxy(ProxyProcess):
    """
    A L{ProxyProcess} that is the C{revproxy} command run under the unit's
    process restrictions (see L{_CHILD}).
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        args: Sequence[str],
        cwd: str,
        denyWriteExecute: bool,
        environment: Mapping[str, str],
        denySetrlimit: bool = False,
    ) -> None:
        self.reactor = reactor
        self.args = list(args)
        self.protocol = _ChildProtocol()
        env = _childEnvironment()
        env.update(environment)
        modes = ["deny-wx" if denyWriteExecute else "allow-wx"]
        if denySetrlimit:
            modes.append("deny-setrlimit")
        self.transport = reactor.spawnProcess(
            self.protocol,
            sys.executable,
            [sys.executable, "-c", _CHILD, ",".join(modes), *args],
            env=env,
            path=cwd,
        )


class NotifyListener:
    """
    A datagram socket standing in for systemd's C{$NOTIFY_SOCKET}.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[bytes] = []

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(65536))
            except BlockingIOError:
                return

    def states(self) -> list[str]:
        """
        The first assignment of every message so far (C{READY=1}, ...).
        """
        self._read()
        return [m.split(b"\n", 1)[0].decode() for m in self.messages]

    async def waitFor(self, states: list[str]) -> None:
        """
        Wait until the messages so far begin with C{states}.
        """
        await waitFor(
            lambda: self.states()[: len(states)] == states,
            START_TIMEOUT,
            f"systemd notifications {states} (got {self.messages})",
        )

    def close(self) -> None:
        self.sock.close()


class HardeningTests(TestCase):
    """
    The proxy run as C{ExecStart=revproxy --config FILE}, under W^X, a
    0077 umask, the journal and C{Type=notify}.
    """

    timeout = 45

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-hard-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor, "U")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def spawn(
        self,
        configPath: str,
        denyWriteExecute: bool,
        environment: Mapping[str, str] | None = None,
        denySetrlimit: bool = False,
    ) -> HardenedProxy:
        """
        Start C{revproxy --config CONFIGPATH}; it is killed after the test
        if still running.
        """
        if denyWriteExecute:
            # Not skipped: the unit's MemoryDenyWriteExecute line is only as
            # good as this check, which needs PR_SET_MDWE.
            self.assertTrue(
                mdweSupported(),
                "this kernel has no PR_SET_MDWE (Linux 6.3 and later): the "
                "W^X check of the unit cannot run here",
            )
        if denySetrlimit:
            # Not skipped either: without it, nothing shows that the unit's
            # filter lets the proxy raise its limit.
            self.assertIn(
                platform.machine(),
                SETRLIMIT_SYSCALL,
                "no seccomp numbers for this architecture in SETRLIMIT_SYSCALL: "
                "the descriptor limit check of the unit cannot run here",
            )
        proxy = HardenedProxy(
            self.reactor,
            ["--config", configPath],
            self.directory,
            denyWriteExecute,
            environment or {},
            denySetrlimit,
        )

        async def kill() -> None:
            try:
                proxy.kill()
            except ProcessExitedAlready:
                # Reaped, and its output pipes not closed yet.
                pass
            await proxy.waitExit()

        self.addCleanup(kill)
        return proxy

    async def waitServing(self, proxy: HardenedProxy) -> int:
        """
        The proxy's HTTP port, once its reactor runs (it has answered a
        probe: a SIGTERM from then on is a graceful stop).
        """
        port = await proxy.waitListening()
        probe = await connectRaw(self.reactor, port)
        assert probe.transport is not None
        probe.transport.write(b"PROBE\r\n\r\n")
        await withTimeout(probe.lost, START_TIMEOUT, "revproxy answering a probe")
        return port

    def tlsConfig(self) -> tuple[str, str]:
        """
        A config with one HTTPS site, C{a.test}, on the upstream; its path
        and the CA file that signed the site's certificate.
        """
        authority = Authority()
        ca = authority.writeRoot(self.path("ca.pem"))
        certFile, keyFile = authority.issue("a.test").write(self.directory, "a")
        site: dict[str, object] = {
            "name": "a",
            "hosts": ["a.test"],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
            "tls": "files",
            "cert_file": certFile,
            "key_file": keyFile,
        }
        path = writeConfig(
            self.directory, [site], server={"listen_https": [LOOPBACK_LISTEN]}
        )
        return path, ca

    async def curlSNIAndH2(self, httpsPort: int, ca: str) -> CommandResult:
        """
        GET C{https://a.test/whoami} with SNI and ALPN C{h2} (curl); assert
        that h2 was chosen and the upstream's body came back.
        """
        output = self.path("whoami.out")
        result = await runCommand(
            self.reactor,
            [
                tool("curl"),
                "--http2",
                "--silent",
                "--show-error",
                "--verbose",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "--resolve",
                f"a.test:{httpsPort}:127.0.0.1",
                "--cacert",
                ca,
                "--output",
                output,
                "--write-out",
                "%{http_version} %{response_code}",
                f"https://a.test:{httpsPort}/whoami",
            ],
            seconds=15,
        )
        self.assertEqual((result.code, result.out), (0, b"2 200"), result)
        self.assertIn(b"ALPN: server accepted h2", result.err)
        with open(output, "rb") as f:
            self.assertEqual(f.read(), whoamiBody("U"))
        return result

    async def test_processRestrictions(self) -> None:
        """
        Under W^X and a 0077 umask, a plain-HTTP proxy serves; the admin
        socket is still mode 0660 (revproxy sets it) while the access log
        it creates is 0600; it tells systemd READY, RELOADING/READY around
        an C{ExecReload}, STOPPING on SIGTERM, then exits 0; its log lines
        carry a journal priority and no timestamp.
        """
        systemd = NotifyListener(self.path("notify"))
        self.addCleanup(systemd.close)
        socketPath = self.path("admin.sock")
        logPath = self.path("access.log")
        site: dict[str, object] = {
            "name": "u",
            "hosts": ["u.test"],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
        }
        configPath = writeConfig(
            self.directory, [site], server={"admin_socket_path": socketPath}
        )
        with open(configPath, encoding="utf-8") as f:
            text = f.read()
        replaceFile(
            configPath, text.replace('access_log = "-"', f'access_log = "{logPath}"')
        )
        proxy = self.spawn(configPath, True, {"NOTIFY_SOCKET": systemd.path})
        port = await self.waitServing(proxy)
        self.assertIn(b"hardening: W^X enforced", proxy.protocol.stdout)
        await systemd.waitFor(["READY=1"])

        client = await connectRaw(self.reactor, port)
        try:
            response = await client.request(
                b"GET /whoami HTTP/1.1\r\nHost: u.test\r\n\r\n"
            )
        finally:
            await client.close()
        self.assertEqual((response.code, response.body), (200, whoamiBody("U")))

        socketMode = os.stat(socketPath).st_mode
        self.assertTrue(stat.S_ISSOCK(socketMode))
        self.assertEqual(oct(stat.S_IMODE(socketMode)), oct(0o660))
        await waitFor(lambda: os.path.exists(logPath), START_TIMEOUT, "access log")
        self.assertEqual(oct(stat.S_IMODE(os.stat(logPath).st_mode)), oct(0o600))
        self.assertEqual(
            (await askAdmin(self.reactor, socketPath, "status"))["status"], "ok"
        )

        # The unit's ExecReload.
        reload = await runCommand(
            self.reactor,
            [
                sys.executable,
                "-m",
                "revproxy.admin_client",
                "--socket",
                socketPath,
                "reload",
            ],
        )
        self.assertEqual(reload.code, 0, reload)
        await systemd.waitFor(["READY=1", "RELOADING=1", "READY=1"])

        self.assertEqual(await proxy.terminate(), 0, proxy.output)
        await systemd.waitFor(["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"])
        lines = proxy.protocol.stdout.decode("utf-8").splitlines()
        logLines = [line for line in lines if not line.startswith("hardening:")]
        self.assertTrue(logLines)
        for line in logLines:
            self.assertRegex(line, r"^<[0-7]>")
            self.assertNotRegex(line, r"^<[0-7]>\d{4}-\d\d-\d\dT")
        self.assertIn("<6>ProxySite starting on", "\n".join(logLines))

    async def test_descriptorLimitRaisedUnderSyscallFilter(self) -> None:
        """
        Started with a soft descriptor limit under its hard limit, and with
        the C{setrlimit} system call failing with EPERM as the unit's
        C{SystemCallFilter=~@resources} makes it, the proxy raises its soft
        limit to the hard one and logs the line with both.
        """
        site: dict[str, object] = {
            "name": "u",
            "hosts": ["u.test"],
            "upstreams": [f"http://127.0.0.1:{self.upstream.port}"],
        }
        proxy = self.spawn(
            writeConfig(self.directory, [site]), False, denySetrlimit=True
        )
        await self.waitServing(proxy)
        self.assertIn(b"hardening: setrlimit(2) denied", proxy.protocol.stdout)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.assertIn(
            f"<6>File descriptor limit (RLIMIT_NOFILE): soft {min(LOW_NOFILE, hard)} "
            f"-> {hard}, hard {hard}\n".encode(),
            proxy.protocol.stdout,
        )
        self.assertEqual(await proxy.terminate(), 0, proxy.output)

    async def test_tlsWithWriteExecute(self) -> None:
        """
        Without W^X (the shipped unit), the same start-up serves HTTPS with
        SNI and ALPN C{h2}: what the W^X test compares with.
        """
        configPath, ca = self.tlsConfig()
        proxy = self.spawn(configPath, False)
        await self.waitServing(proxy)
        [httpsPort] = await waitHTTPSPorts(proxy)
        await self.curlSNIAndH2(httpsPort, ca)
        self.assertEqual(await proxy.terminate(), 0, proxy.output)

    async def test_tlsUnderWriteExecuteDenial(self) -> None:
        """
        Under W^X, HTTPS start-up fails in pyOpenSSL's C{ffi.callback()}
        (the ALPN and SNI callbacks), exit 1; so the unit must not set
        C{MemoryDenyWriteExecute=yes}.  Should it ever start, it must serve
        SNI and h2, and the unit should then turn W^X on.
        """
        configPath, ca = self.tlsConfig()
        proxy = self.spawn(configPath, True)
        setting = unitSetting("MemoryDenyWriteExecute")
        try:
            await self.waitServing(proxy)
        except AssertionError:
            # The exit status is known before the wait for the port fails;
            # the end of the process (its pipes closing) may come later.
            if proxy.protocol.exitCode is None:
                raise
            code = await proxy.waitExit()
            self.assertIn(b"hardening: W^X enforced", proxy.protocol.stdout)
            self.assertEqual(code, 1, proxy.output)
            output = proxy.protocol.stdout + proxy.protocol.stderr
            self.assertIn(CFFI_WX_ERROR, output, proxy.output)
            self.assertRegex(
                output.decode("utf-8", "replace"),
                re.compile(r"set_(alpn_select|tlsext_servername)_callback"),
            )
            self.assertFalse(
                isYes(setting),
                f"{UNIT_FILE} sets MemoryDenyWriteExecute={setting}, but HTTPS "
                "cannot start under W^X (cffi callbacks need writable and "
                "executable memory)",
            )
            return
        [httpsPort] = await waitHTTPSPorts(proxy)
        await self.curlSNIAndH2(httpsPort, ca)
        self.assertEqual(await proxy.terminate(), 0, proxy.output)
        self.assertTrue(
            isYes(setting),
            "HTTPS with SNI and ALPN works under W^X now: set "
            f"MemoryDenyWriteExecute=yes in {UNIT_FILE} (it says {setting})",
        )
