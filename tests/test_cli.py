"""
Tests for L{revproxy.cli}, the C{revproxy} command: its arguments and the
twistd command line they become (pure), and the journal log format.  Real
C{--check} runs in child processes are in L{tests.integration.test_cli}.
"""

from __future__ import annotations

import io
import os
import sys
from importlib.metadata import entry_points

from twisted.logger import LogEvent, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy import __version__
from revproxy.cli import (
    DEFAULT_CONFIG,
    JOURNAL_LOGGER,
    Invocation,
    formatJournalEvent,
    hashPasswordCommand,
    isJournalStream,
    journalLogObserver,
    main,
    parseArguments,
    twistdArguments,
)
from revproxy.htpasswd import checkPassword


class ParseArgumentsTests(SynchronousTestCase):
    """
    L{parseArguments} reads C{revproxy}'s own arguments.
    """

    def test_defaults(self) -> None:
        """
        Without arguments, it runs on the Debian package's config file.
        """
        self.assertEqual(parseArguments([]), Invocation(DEFAULT_CONFIG, False, ()))
        self.assertEqual(DEFAULT_CONFIG, "/etc/revproxy/config.toml")

    def test_config(self) -> None:
        """
        C{--config FILE}, C{--config=FILE} and C{-c FILE} name the file.
        """
        for args in (["--config", "a.toml"], ["--config=a.toml"], ["-c", "a.toml"]):
            self.assertEqual(parseArguments(args), Invocation("a.toml"), args)

    def test_check(self) -> None:
        """
        C{--check} asks for a validation, before or after C{--config}.
        """
        for args in (["--check", "-c", "a.toml"], ["-c", "a.toml", "--check"]):
            self.assertEqual(parseArguments(args), Invocation("a.toml", True), args)

    def test_pluginArguments(self) -> None:
        """
        What follows C{--} is kept verbatim for the plugin, even what looks
        like C{revproxy}'s own options.
        """
        self.assertEqual(
            parseArguments(["-c", "a.toml", "--", "--help", "--check", "--"]),
            Invocation("a.toml", False, ("--help", "--check", "--")),
        )

    def exits(self, args: list[str]) -> tuple[object, str, str]:
        """
        Parse C{args}, which must exit; the status and what was printed.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, parseArguments, args)
        return e.code, out.getvalue(), err.getvalue()

    def test_version(self) -> None:
        """
        C{--version} prints revproxy's and Twisted's versions and exits 0.
        """
        from twisted import __version__ as twisted

        code, out, _ = self.exits(["--version"])
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith(f"revproxy {__version__} "), out)
        self.assertIn(f"Twisted {twisted}", out)

    def test_help(self) -> None:
        """
        C{--help} describes both modes and the default file, and exits 0.
        """
        code, out, _ = self.exits(["--help"])
        self.assertEqual(code, 0)
        for text in ("--check", "--config", DEFAULT_CONFIG, "'--'", "SIGHUP"):
            self.assertIn(text, out)

    def test_unknownOption(self) -> None:
        """
        An unknown option prints the usage and exits 2.
        """
        code, _, err = self.exits(["--daemon"])
        self.assertEqual(code, 2)
        self.assertIn("usage: revproxy", err)
        self.assertIn("--daemon", err)


class TwistdArgumentsTests(SynchronousTestCase):
    """
    L{twistdArguments} spells out the twistd command line.
    """

    def test_run(self) -> None:
        """
        Running is C{twistd --nodaemon --pidfile= revproxy --config FILE}.
        """
        self.assertEqual(
            twistdArguments(Invocation("/etc/revproxy/config.toml")),
            [
                "--nodaemon",
                "--pidfile=",
                "revproxy",
                "--config",
                "/etc/revproxy/config.toml",
            ],
        )

    def test_check(self) -> None:
        """
        Checking adds C{--check} after the config file.
        """
        self.assertEqual(
            twistdArguments(Invocation("a.toml", True)),
            ["--nodaemon", "--pidfile=", "revproxy", "--config", "a.toml", "--check"],
        )

    def test_pluginArguments(self) -> None:
        """
        Plugin arguments come last, after the subcommand's own.
        """
        self.assertEqual(
            twistdArguments(Invocation("a.toml", True, ("--x", "y"))),
            [
                "--nodaemon",
                "--pidfile=",
                "revproxy",
                "--config",
                "a.toml",
                "--check",
                "--x",
                "y",
            ],
        )

    def test_journal(self) -> None:
        """
        A run whose output is the journal logs through the journal
        observer, a twistd option (before the subcommand).
        """
        self.assertEqual(
            twistdArguments(Invocation("a.toml"), journal=True),
            [
                "--nodaemon",
                "--pidfile=",
                f"--logger={JOURNAL_LOGGER}",
                "revproxy",
                "--config",
                "a.toml",
            ],
        )

    def test_journalCheck(self) -> None:
        """
        A check never changes the logger: it prints, it does not log.
        """
        self.assertEqual(
            twistdArguments(Invocation("a.toml", True), journal=True),
            twistdArguments(Invocation("a.toml", True)),
        )


class JournalStreamTests(SynchronousTestCase):
    """
    L{isJournalStream} believes C{$JOURNAL_STREAM} only for the stream it
    names.
    """

    def setUp(self) -> None:
        self.stream = open(self.mktemp(), "w")
        self.addCleanup(self.stream.close)
        status = os.fstat(self.stream.fileno())
        self.value = f"{status.st_dev}:{status.st_ino}"

    def test_same(self) -> None:
        """
        The device and inode of the stream: it is the journal.
        """
        self.assertTrue(isJournalStream({"JOURNAL_STREAM": self.value}, self.stream))

    def test_other(self) -> None:
        """
        Another file's device and inode (an inherited variable, output
        redirected): it is not.
        """
        other = open(self.mktemp(), "w")
        self.addCleanup(other.close)
        self.assertFalse(isJournalStream({"JOURNAL_STREAM": self.value}, other))

    def test_unsetOrGarbage(self) -> None:
        """
        No variable, or one that is not C{DEVICE:INODE}: it is not.
        """
        for environ in ({}, {"JOURNAL_STREAM": ""}, {"JOURNAL_STREAM": "a:b"}):
            self.assertFalse(isJournalStream(environ, self.stream), environ)

    def test_noFileDescriptor(self) -> None:
        """
        A stream without a file descriptor is not the journal.
        """
        self.assertFalse(isJournalStream({"JOURNAL_STREAM": self.value}, io.StringIO()))


def event(text: str, level: LogLevel = LogLevel.info, **extra: object) -> LogEvent:
    """
    A log event with the format C{text} at C{level}.
    """
    return {"log_format": text, "log_level": level, "log_time": 1.0, **extra}


class JournalFormatTests(SynchronousTestCase):
    """
    L{formatJournalEvent} writes what journald reads from a stream: a
    priority prefix on each line, and no timestamp.
    """

    def test_levels(self) -> None:
        """
        Each level has its syslog priority, and the text has no time.
        """
        for level, priority in (
            (LogLevel.debug, 7),
            (LogLevel.info, 6),
            (LogLevel.warn, 4),
            (LogLevel.error, 3),
            (LogLevel.critical, 2),
        ):
            self.assertEqual(
                formatJournalEvent(event("Reloaded {n}", level, n=2)),
                f"<{priority}>Reloaded 2\n",
            )

    def test_system(self) -> None:
        """
        A system other than twistd's C{-} is kept in brackets.
        """
        self.assertEqual(
            formatJournalEvent(event("x", log_system="HTTPChannel,1,127.0.0.1")),
            "<6>[HTTPChannel,1,127.0.0.1] x\n",
        )
        self.assertEqual(formatJournalEvent(event("x", log_system="-")), "<6>x\n")

    def test_onlyNewlineEndsALine(self) -> None:
        """
        Only a newline ends a journal line: VT, FF, NEL, U+2028 and the other
        characters Python's splitlines cuts at stay inside the line.
        """
        for separator in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
            text = formatJournalEvent(event("GET /a{s}b failed", s=separator))
            self.assertEqual(text, f"<6>GET /a{separator}b failed\n")
        self.assertEqual(formatJournalEvent(event("one\ntwo\n")), "<6>one\n<6>two\n")

    def test_failure(self) -> None:
        """
        A failure is at least an error, and every line of its traceback
        carries the priority (journald reads each line on its own).
        """
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        text = formatJournalEvent(event("Oops", LogLevel.info, log_failure=failure))
        assert text is not None
        lines = text.splitlines()
        self.assertGreater(len(lines), 2)
        self.assertEqual(lines[0], "<3>Oops")
        self.assertTrue(all(line.startswith("<3>") for line in lines), lines)
        self.assertIn("ZeroDivisionError", text)

    def test_empty(self) -> None:
        """
        An event without text writes nothing.
        """
        self.assertIsNone(formatJournalEvent({"log_level": LogLevel.info}))

    def test_observer(self) -> None:
        """
        The observer twistd's C{--logger} makes writes to standard output
        as it was when made.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = journalLogObserver()
        self.patch(sys, "stdout", io.StringIO())
        observer(event("Serving {n} site(s)", n=3))
        self.assertEqual(out.getvalue(), "<6>Serving 3 site(s)\n")


class EntryPointTests(SynchronousTestCase):
    """
    The installed distribution has the C{revproxy} console script.
    """

    def test_consoleScript(self) -> None:
        """
        C{revproxy} runs L{revproxy.cli.main}.
        """
        [script] = entry_points(group="console_scripts", name="revproxy")
        self.assertEqual(script.value, "revproxy.cli:main")


class _Input(io.StringIO):
    """
    Standard input, a terminal or not.
    """

    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class HashPasswordTests(SynchronousTestCase):
    """
    C{revproxy hash-password}: L{hashPasswordCommand}.
    """

    def command(
        self, args: list[str], stdin: _Input, answers: list[str] | None = None
    ) -> tuple[int, str, str, list[str]]:
        """
        Run the command; return its status, output, errors and prompts.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        prompts: list[str] = []
        replies = list(answers or [])

        def prompt(text: str) -> str:
            prompts.append(text)
            return replies.pop(0)

        status = hashPasswordCommand(args, stdin, stdout, stderr, prompt)
        return status, stdout.getvalue(), stderr.getvalue(), prompts

    def test_stdin(self) -> None:
        """
        Without a terminal, the first line of standard input is hashed with
        bcrypt, and nothing is asked.
        """
        status, out, err, prompts = self.command([], _Input("s3cret\r\nmore\n"))
        self.assertEqual((status, err, prompts), (0, "", []))
        hash = out.strip()
        self.assertTrue(hash.startswith("$2b$12$"), hash)
        self.assertEqual(out, hash + "\n")
        self.assertTrue(checkPassword(hash, b"s3cret"))

    def test_argon2(self) -> None:
        """
        C{--argon2} makes an argon2id hash.
        """
        status, out, err, _ = self.command(["--argon2"], _Input("s3cret"))
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("$argon2id$"), out)
        self.assertTrue(checkPassword(out.strip(), b"s3cret"))

    def test_terminal(self) -> None:
        """
        On a terminal the password is asked twice, without echo.
        """
        status, out, err, prompts = self.command(
            ["--argon2"], _Input(tty=True), ["pässword", "pässword"]
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(prompts, ["Password: ", "Again: "])
        self.assertTrue(checkPassword(out.strip(), "pässword".encode()))

    def test_mismatch(self) -> None:
        """
        Two different answers exit 1 without a hash.
        """
        self.assertEqual(
            self.command([], _Input(tty=True), ["one", "two"]),
            (
                1,
                "",
                "revproxy hash-password: the passwords do not match\n",
                ["Password: ", "Again: "],
            ),
        )

    def test_empty(self) -> None:
        """
        An empty password exits 1, from a terminal or standard input.
        """
        message = "revproxy hash-password: the password is empty\n"
        self.assertEqual(self.command([], _Input("\n")), (1, "", message, []))
        self.assertEqual(self.command([], _Input("")), (1, "", message, []))
        self.assertEqual(
            self.command([], _Input(tty=True), [""]), (1, "", message, ["Password: "])
        )

    def test_tooLong(self) -> None:
        """
        A password longer than bcrypt reads exits 1, saying why.
        """
        status, out, err, _ = self.command([], _Input("x" * 73))
        self.assertEqual((status, out), (1, ""))
        self.assertIn("72 bytes", err)

    def test_badArgument(self) -> None:
        """
        An unknown option is a usage error.
        """
        self.patch(sys, "stderr", io.StringIO())
        error = self.assertRaises(SystemExit, self.command, ["--md5"], _Input("x"))
        self.assertEqual(error.code, 2)

    def test_main(self) -> None:
        """
        C{revproxy hash-password} runs it, on the process's streams, and
        returns its status.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdin", _Input("s3cret\n"))
        self.patch(sys, "stdout", stdout)
        self.assertEqual(main(["hash-password", "--argon2"]), 0)
        self.assertTrue(checkPassword(stdout.getvalue().strip(), b"s3cret"))
        self.patch(sys, "stdin", _Input(""))
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main(["hash-password"]), 1)
