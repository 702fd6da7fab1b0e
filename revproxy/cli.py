# -*- test-case-name: tests.test_cli -*-
"""
C{revproxy}: run or check the proxy without spelling out twistd.

    revproxy [--config FILE]            run in the foreground
    revproxy --check [--config FILE]    validate FILE, exit 0 or 1 (nginx -t)
    revproxy [--config FILE] -- ARGS    ARGS go to C{twistd revproxy}
    revproxy hash-password [--argon2]   print a hash for a basic_auth users_file

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
import getpass
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
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

#: The subcommand that prints a password hash (L{hashPasswordCommand}).
HASH_PASSWORD = "hash-password"

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
        usage=(
            "revproxy [--check] [--config FILE] [-- PLUGIN-ARGS...]\n"
            "       revproxy hash-password [--argon2]"
        ),
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
            "gracefully (exit 0). The admin socket: revproxy-admin(8). "
            "'revproxy hash-password' prints a password hash for a basic_auth "
            "users_file (see 'revproxy hash-password --help')."
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


def _hashPasswordParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"revproxy {HASH_PASSWORD}",
        description=(
            "Print a hash of a password for a basic_auth users_file (an "
            "htpasswd file: one NAME:HASH a line). The password is asked for "
            "twice, without echo, on a terminal; else it is the first line of "
            "standard input. bcrypt (cost 12) by default."
        ),
        epilog='Example: echo "alice:$(revproxy hash-password)" >> users',
    )
    parser.add_argument(
        "--argon2",
        action="store_true",
        help="make an argon2id hash instead of a bcrypt one",
    )
    return parser


def _readPassword(
    stdin: TextIO, prompt: Callable[[str], str]
) -> tuple[str | None, str]:
    """
    Read the password to hash: asked twice without echo when C{stdin} is a
    terminal, else its first line.

    @return: The password, or L{None} with the reason it is refused.
    """
    if stdin.isatty():
        password = prompt("Password: ")
        if password and prompt("Again: ") != password:
            return None, "the passwords do not match"
    else:
        password = stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        return None, "the password is empty"
    return password, ""


def hashPasswordCommand(
    argv: Sequence[str],
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    prompt: Callable[[str], str] = getpass.getpass,
) -> int:
    """
    C{revproxy hash-password [--argon2]}: print the hash of a password, for
    a C{basic_auth} C{users_file}.

    @param argv: the arguments after C{hash-password}.
    @param prompt: asks for a password without echo (L{getpass.getpass}).
    @return: the exit status: 0 when the hash is printed, 1 for an empty
        password, two that differ, or one the scheme cannot take.
    @raise SystemExit: for C{--help} and bad arguments, as L{argparse} does.
    """
    from revproxy.htpasswd import hashPassword

    options = _hashPasswordParser().parse_args(list(argv))
    password, problem = _readPassword(stdin, prompt)
    if password is None:
        stderr.write(f"revproxy {HASH_PASSWORD}: {problem}\n")
        return 1
    try:
        hash = hashPassword(
            password.encode("utf-8", "surrogateescape"),
            "argon2" if options.argon2 else "bcrypt",
        )
    except ValueError as e:
        stderr.write(f"revproxy {HASH_PASSWORD}: {e}\n")
        return 1
    stdout.write(hash + "\n")
    return 0


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
    The C{revproxy} command: run or check through twistd, in this process;
    or, with C{hash-password} first, L{hashPasswordCommand}.

    @param argv: the arguments, without the program name (the process's if
        L{None}).
    @return: 0 once the proxy has stopped; twistd and C{--check} exit with
        their own status by raising L{SystemExit}.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [HASH_PASSWORD]:
        return hashPasswordCommand(args[1:], sys.stdin, sys.stdout, sys.stderr)
    invocation = parseArguments(args)
    journal = isJournalStream(os.environ, sys.stdout)
    from twisted.scripts.twistd import run

    sys.argv = [sys.argv[0], *twistdArguments(invocation, journal)]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
