"""
Tests for L{revproxy.htpasswd}.
"""

from __future__ import annotations

import bcrypt
from argon2 import PasswordHasher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.htpasswd import (
    DUMMY_HASH,
    HtpasswdError,
    checkPassword,
    hashPassword,
    parseHtpasswd,
)

# Cheap hashes, so that the tests are quick.
_BCRYPT = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode("ascii")
_BCRYPT_2Y = "$2y$" + _BCRYPT[4:]
_BCRYPT_2A = "$2a$" + _BCRYPT[4:]
_ARGON2 = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("secret")
_ARGON2I = "$argon2i$v=19$m=8,t=1,p=1$c29tZXNhbHQ$W5vN7pTqv5sRtzQP8fM3Zg"


class ParseHtpasswdTests(SynchronousTestCase):
    """
    L{parseHtpasswd} accepts bcrypt and argon2 hashes and refuses the rest.
    """

    def test_accepted(self) -> None:
        """
        bcrypt (C{$2y$}, C{$2b$}, C{$2a$}) and argon2 (C{$argon2id$},
        C{$argon2i$}) entries are read in order; comments, blank lines,
        CRLF line ends and surrounding spaces are skipped.
        """
        text = (
            "# users\n"
            f"alice:{_BCRYPT_2Y}\r\n"
            "\n"
            f"  bob:{_BCRYPT}  \n"
            f"carol:{_BCRYPT_2A}\n"
            f"dave:{_ARGON2}\n"
            f"erin:{_ARGON2I}"
        )
        self.assertEqual(
            parseHtpasswd(text, "f"),
            [
                ("alice", _BCRYPT_2Y),
                ("bob", _BCRYPT),
                ("carol", _BCRYPT_2A),
                ("dave", _ARGON2),
                ("erin", _ARGON2I),
            ],
        )

    def test_empty(self) -> None:
        """
        A file without entries has no users.
        """
        self.assertEqual(parseHtpasswd("# none\n\n", "f"), [])

    def assertRefused(self, line: str, *fragments: str, lineNumber: int = 2) -> None:
        with self.assertRaises(HtpasswdError) as caught:
            parseHtpasswd(f"# first\n{line}\n", "/etc/htpasswd")
        message = str(caught.exception)
        self.assertTrue(
            message.startswith(f"/etc/htpasswd, line {lineNumber}: "), message
        )
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_unsafe(self) -> None:
        """
        Plain text, MD5-crypt, C{{SHA}} and DES crypt entries are refused,
        saying why they are unsafe, without quoting the secret.
        """
        cases = [
            ("u:hunter2", "plain text"),
            ("u:$apr1$abcdefgh$0123456789abcdefghijkl", "MD5-crypt"),
            ("u:$1$abcdefgh$0123456789abcdefghijkl", "MD5-crypt"),
            ("u:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "unsalted SHA-1"),
            ("u:rl.3StKT.4T8M", "DES crypt"),
            ("u:$6$salt$abc", "unsupported"),
            ("u:$2y$12$short", "malformed"),
        ]
        for line, reason in cases:
            self.assertRefused(line, reason, "revproxy hash-password")
            with self.assertRaises(HtpasswdError) as caught:
                parseHtpasswd(line, "f")
            self.assertNotIn(line.split(":", 1)[1], str(caught.exception))

    def test_badLines(self) -> None:
        """
        A line without C{:}, an empty user name or one with a control
        character is refused.
        """
        self.assertRefused("no-colon", "expected user:hash")
        self.assertRefused(f":{_BCRYPT}", "the user name is empty")
        self.assertRefused(f"a\x01b:{_BCRYPT}", "control character")

    def test_duplicate(self) -> None:
        """
        A user given twice is refused, naming both lines.
        """
        self.assertRefused(
            f"a:{_BCRYPT}\na:{_ARGON2}",
            "user 'a' is already given on line 2",
            lineNumber=3,
        )

    def test_everyProblem(self) -> None:
        """
        Every problem of a file is reported, one per line.
        """
        with self.assertRaises(HtpasswdError) as caught:
            parseHtpasswd("a:x\nb:y\n", "f")
        self.assertEqual(len(caught.exception.problems), 2)
        self.assertIn("f, line 2", caught.exception.problems[1])


class CheckPasswordTests(SynchronousTestCase):
    """
    L{checkPassword}.
    """

    def test_bcrypt(self) -> None:
        """
        A bcrypt hash, of any of its prefixes, matches its password only.
        """
        for hash in (_BCRYPT, _BCRYPT_2Y, _BCRYPT_2A):
            self.assertTrue(checkPassword(hash, b"secret"))
            self.assertFalse(checkPassword(hash, b"Secret"))
            self.assertFalse(checkPassword(hash, b""))

    def test_argon2(self) -> None:
        """
        An argon2 hash matches its password only.
        """
        self.assertTrue(checkPassword(_ARGON2, b"secret"))
        self.assertFalse(checkPassword(_ARGON2, b"wrong"))

    def test_neverRaises(self) -> None:
        """
        A long or odd password, or an unreadable hash, is a mismatch.
        """
        self.assertFalse(checkPassword(_BCRYPT, b"x" * 1000))
        self.assertFalse(checkPassword(_BCRYPT, b"\xff\x00"))
        self.assertFalse(checkPassword("$2b$04$bad", b"secret"))
        self.assertFalse(checkPassword("$argon2id$bad", b"secret"))
        self.assertFalse(checkPassword("plain", b"plain"))

    def test_longBcryptPassword(self) -> None:
        """
        bcrypt reads the first 72 bytes of a password, as htpasswd does.
        """
        hash = bcrypt.hashpw(b"a" * 72, bcrypt.gensalt(4)).decode("ascii")
        self.assertTrue(checkPassword(hash, b"a" * 100))

    def test_dummyHash(self) -> None:
        """
        L{DUMMY_HASH} is a valid cost-12 bcrypt hash that an ordinary
        password does not match.
        """
        self.assertTrue(DUMMY_HASH.startswith("$2b$12$"))
        self.assertEqual(parseHtpasswd(f"x:{DUMMY_HASH}", "f"), [("x", DUMMY_HASH)])
        self.assertFalse(checkPassword(DUMMY_HASH, b"password"))


class HashPasswordTests(SynchronousTestCase):
    """
    L{hashPassword}.
    """

    def test_bcrypt(self) -> None:
        """
        The default scheme is bcrypt at cost 12, which L{parseHtpasswd}
        accepts and L{checkPassword} verifies.
        """
        hash = hashPassword(b"s3cret")
        self.assertTrue(hash.startswith("$2b$12$"))
        self.assertEqual(parseHtpasswd(f"u:{hash}", "f"), [("u", hash)])
        self.assertTrue(checkPassword(hash, b"s3cret"))

    def test_argon2(self) -> None:
        """
        C{"argon2"} makes an argon2id hash.
        """
        hash = hashPassword(b"s3cret", "argon2")
        self.assertTrue(hash.startswith("$argon2id$"))
        self.assertEqual(parseHtpasswd(f"u:{hash}", "f"), [("u", hash)])
        self.assertTrue(checkPassword(hash, b"s3cret"))

    def test_refused(self) -> None:
        """
        An unknown scheme, or a password longer than bcrypt reads, is a
        L{ValueError}.
        """
        self.assertRaises(ValueError, hashPassword, b"x", "md5")
        self.assertRaises(ValueError, hashPassword, b"x" * 73)
