# -*- test-case-name: tests.test_tap -*-
"""
C{twistd revproxy}: command-line options and L{makeService}.

This is the only module that imports the global reactor (L{_globalReactor}):
in L{makeService}, and in L{Options.postOptions} for the time the
certificates' expiry is checked against, unless a test gave a clock.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, cast

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from revproxy import __version__
from revproxy.config import (
    Config,
    ConfigError,
    ConfigFileError,
    checkConfig,
    loadConfig,
    quickConfig,
)
from revproxy.descriptors import DescriptorLimit, raiseDescriptorLimit
from revproxy.interfaces import IRevProxyReactor
from revproxy.reload import configWarnings
from revproxy.tls import loadTLSFiles


class Options(usage.Options):
    """
    Options of C{twistd revproxy}.
    """

    synopsis = "[--config FILE [--check]] | [--listen ENDPOINT --to URL]"
    longdesc = (
        "Run the revproxy reverse proxy on the TOML config FILE "
        "(--check: validate it and exit 0 or 1, like nginx -t), or, with no "
        "file, proxy every Host from --listen to the one upstream --to."
    )
    optFlags = [
        ["check", None, "Validate the config file, print every error, exit 0 or 1."],
    ]
    optParameters = [
        ["config", "c", None, "Path to the TOML config file."],
        ["listen", None, None, "Quick mode: endpoint to listen on, e.g. tcp:8080."],
        ["to", None, None, "Quick mode: upstream URL, e.g. http://127.0.0.1:8000."],
    ]

    #: Where --check and start-up errors are printed; a parameter for tests.
    stdout: IO[str] = sys.stdout
    stderr: IO[str] = sys.stderr
    #: What the certificates' expiry is checked against; L{None}: the global
    #: reactor.  A parameter for tests.
    clock: IReactorTime | None = None

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"revproxy {__version__}", file=self.stdout)
        sys.exit(0)

    def postOptions(self) -> None:
        quick = self["listen"] is not None or self["to"] is not None
        if quick and self["config"] is not None:
            raise usage.UsageError("use either --config or --listen/--to, not both")
        if quick and (self["listen"] is None or self["to"] is None):
            raise usage.UsageError("quick mode needs both --listen and --to")
        if not quick and self["config"] is None:
            raise usage.UsageError("--config FILE is required (or --listen and --to)")
        try:
            config = (
                quickConfig(self["listen"], self["to"])
                if quick
                else loadConfig(self["config"])
            )
        except ConfigFileError as e:
            print(f"revproxy: {e}", file=self.stderr)
            sys.exit(1)
        except ConfigError as e:
            self._exitWithErrors(list(e.errors))
        problems = checkConfig(config) if self["check"] else []
        if problems:
            self._exitWithErrors(problems)
        try:
            clock = self.clock if self.clock is not None else _globalReactor()
            tls = loadTLSFiles(config, clock.seconds())
        except ConfigError as e:
            self._exitWithErrors(list(e.errors))
        if self["check"]:
            for warning in configWarnings(config) + list(tls.warnings):
                print(f"revproxy: warning: {warning}", file=self.stdout)
            server = config.server
            if server.workers > 1:
                auto = " (auto)" if server.workers_auto else ""
                print(
                    f"revproxy: {server.workers} worker processes{auto}",
                    file=self.stdout,
                )
            cluster = config.cluster
            if cluster is not None:
                host = (
                    f"[{cluster.redis_host}]"
                    if ":" in cluster.redis_host
                    else cluster.redis_host
                )
                overTLS = " (tls)" if cluster.redis_tls else ""
                print(
                    f"revproxy: cluster node {cluster.node_name}, redis "
                    f"{host}:{cluster.redis_port}/{cluster.redis_db}{overTLS}",
                    file=self.stdout,
                )
            print(
                f"revproxy: the configuration file {self['config'] or '(quick mode)'} "
                f"syntax is ok; {len(config.sites)} site(s)\n"
                "revproxy: configuration test is successful",
                file=self.stdout,
            )
            sys.exit(0)
        self["parsed"] = config
        self["tls"] = tls

    def _exitWithErrors(self, errors: list[str]) -> None:
        source = self["config"] or "(quick mode)"
        count = len(errors)
        lines = [
            f"revproxy: configuration {source} is invalid "
            f"({count} error{'s' if count != 1 else ''}):"
        ]
        lines += [f"  {error}" for error in errors]
        print("\n".join(lines), file=self.stderr)
        sys.exit(1)


def makeService(
    options: usage.Options,
    reactor: IRevProxyReactor | None = None,
    raiseLimit: Callable[[], DescriptorLimit] = raiseDescriptorLimit,
) -> IService:
    """
    Build the service tree for the parsed options.

    Called as twistd calls it, without a reactor, this is the proxy's own
    process: it first raises the file descriptor limit (C{raiseLimit}),
    before any listener is bound, and the tree keeps the result as
    C{descriptors}.  C{--check} never gets here (it exits while the
    options are parsed), and a caller that brings its own reactor (tests)
    keeps its limit.
    """
    from revproxy.service import buildService

    descriptors = None
    if reactor is None:
        reactor = _globalReactor()
        descriptors = raiseLimit()
    config: Config = options["parsed"]
    build = buildService
    if config.server.workers > 1:
        # The supervisor of worker processes, each running buildService's
        # request path.
        from revproxy.workers.supervisor import buildSupervisor

        build = buildSupervisor
    return build(
        config,
        options["config"] or "",
        reactor,
        options.get("tls"),
        descriptors=descriptors,
    )


def _globalReactor() -> IRevProxyReactor:
    """
    The global reactor, imported (installed, if twistd has not yet) here
    only.
    """
    from twisted.internet import reactor

    return cast(IRevProxyReactor, reactor)
