# -*- test-case-name: tests.test_cli -*-
"""
C{revproxy}: run or check the proxy without spelling out twistd.

    revproxy [--config FILE]            run in the foreground
    revproxy --check [--config FILE]    validate FILE, exit 0 or 1 (nginx -t)
    revproxy [--config FILE] -- ARGS    ARGS go to C{twistd revproxy}

It runs twistd in this process, with the command line that
C{twistd --nodaemon --pidfile= revproxy --config FILE} would have: the same
signals, log and exit status, and the main process systemd expects
(C{Type=notify}, C{NotifyAccess=main}).

One difference: when standard output is the systemd journal
(C{$JOURNAL_STREAM} names it), log lines carry a syslog priority prefix
(C{<3>}) and no timestamp, because the journal adds its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import attrs
from twisted.logger import FileLogObserver, LogEvent, LogLevel, eventAsText

from revproxy import __version__

#: The config file when C{--config} is not given: the Debian package's.
DEFAULT_CONFIG = "/etc/revproxy/config.toml"

#: The twistd options every run gets: in the foreground, with no pid file
#: (systemd knows the pid; C{ProtectSystem=strict} leaves nowhere to write
#: one).
TWISTD_OPTIONS = ("--nodaemon", "--pidfile=")

#: The twistd log observer factory used when standard output is the journal.
JOURNAL_LOGGER = "revproxy.cli.journalLogObserver"

#: syslog priorities (journald reads a C{<N>} prefix on each line).
_PRIORITIES = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


@attrs.frozen
class Invocation:
    """
    What C{revproxy} was asked to do.

    @ivar config: the config file.
    @ivar check: validate it and exit, instead of running.
    @ivar pluginArgs: the arguments after C{--}, for C{twistd revproxy}.
    """

    config: str = DEFAULT_CONFIG
    check: bool = False
    pluginArgs: tuple[str, ...] = ()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revproxy",
        usage="revproxy [--check] [--config FILE] [-- PLUGIN-ARGS...]",
        description=(
            "Run the revproxy HTTP/HTTPS reverse proxy in the foreground on the "
            "TOML config FILE, as 'twistd --nodaemon --pidfile= revproxy --config "
            "FILE' does; or, with --check, validate FILE and exit 0 (valid) or 1 "
            "(invalid), like 'nginx -t'."
        ),
        epilog=(
            "Arguments after '--' are passed to 'twistd revproxy' (see "
            "'twistd revproxy --help'). Signals: SIGHUP reloads the config, "
            "SIGUSR1 reopens the access log, SIGTERM and SIGINT shut down "
            "gracefully (exit 0). The admin socket: revproxy-admin(8)."
        ),
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=DEFAULT_CONFIG,
        help=f"the config file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config file, print every error, exit 0 or 1",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=(
            f"revproxy {__version__} (Twisted {_twistedVersion()}, "
            f"Python {platform.python_version()})"
        ),
    )
    return parser


def _twistedVersion() -> str:
    from twisted import __version__ as twisted

    return twisted


def parseArguments(argv: Sequence[str]) -> Invocation:
    """
    Parse C{revproxy}'s arguments (without the program name).

    @raise SystemExit: for C{--help} and C{--version} (status 0, after
        printing), and for bad arguments (status 2, after the usage).
    """
    args = list(argv)
    pluginArgs: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, pluginArgs = args[:split], args[split + 1 :]
    options = _parser().parse_args(args)
    return Invocation(options.config, options.check, tuple(pluginArgs))


def twistdArguments(invocation: Invocation, journal: bool = False) -> list[str]:
    """
    The twistd arguments (without the program name) that do what
    C{invocation} says.

    @param journal: standard output is the journal: log through
        L{journalLogObserver}.
    """
    args = list(TWISTD_OPTIONS)
    if journal and not invocation.check:
        args.append(f"--logger={JOURNAL_LOGGER}")
    args += ["revproxy", "--config", invocation.config]
    if invocation.check:
        args.append("--check")
    args += invocation.pluginArgs
    return args


def isJournalStream(environ: Mapping[str, str], stream: TextIO) -> bool:
    """
    Whether C{stream} is the journal stream systemd names in
    C{$JOURNAL_STREAM} (C{DEVICE:INODE}), as C{systemd.exec(5)} says to
    check: an inherited variable with a redirected output does not count.
    """
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def formatJournalEvent(event: LogEvent) -> str | None:
    """
    One log event as journald reads it from a stream: each line starts
    with the event's syslog priority (C{<6>} info, C{<4>} warn, C{<3>}
    error, C{<2>} critical), then C{[system]} when the event has a system
    other than twistd's C{-}, then the text.  No timestamp: the journal
    stamps each line itself.
    """
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    level = event.get("log_level", LogLevel.info)
    priority = _PRIORITIES.get(level, 6)
    if "log_failure" in event:
        priority = min(priority, 3)
    system = event.get("log_system")
    if system and system != "-":
        text = f"[{system}] {text}"
    # Only a newline ends a line for journald; splitlines() would also cut
    # at VT, FF, NEL, U+2028... which a client could put in a logged value.
    return "".join(f"<{priority}>{line}\n" for line in text.rstrip("\n").split("\n"))


def journalLogObserver() -> FileLogObserver:
    """
    twistd's C{--logger}: L{formatJournalEvent} lines on standard output
    (taken now, before twistd redirects C{sys.stdout} into the log).
    """
    return FileLogObserver(sys.stdout, formatJournalEvent)


def main(argv: Sequence[str] | None = None) -> int:
    """
    The C{revproxy} command: run or check through twistd, in this process.

    @param argv: the arguments, without the program name (the process's if
        L{None}).
    @return: 0 once the proxy has stopped; twistd and C{--check} exit with
        their own status by raising L{SystemExit}.
    """
    invocation = parseArguments(sys.argv[1:] if argv is None else argv)
    journal = isJournalStream(os.environ, sys.stdout)
    from twisted.scripts.twistd import run

    sys.argv = [sys.argv[0], *twistdArguments(invocation, journal)]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
