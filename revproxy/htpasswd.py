# -*- test-case-name: tests.test_htpasswd -*-
"""
htpasswd files for C{basic_auth}: reading them, checking a password, making
a hash.

Only slow, salted hashes are accepted: bcrypt (C{$2y$}, C{$2b$}, C{$2a$},
what C{htpasswd -B} writes) and argon2 (C{$argon2id$}, C{$argon2i$}).  The
others that htpasswd files hold are refused with the reason: plain text,
MD5-crypt (C{$apr1$}, C{$1$}), unsalted SHA-1 (C{{SHA}}) and DES crypt are
fast enough to brute-force from a leaked file.

Nothing here touches the reactor.  L{checkPassword} is CPU-heavy (a bcrypt
check at cost 12 takes a few hundred milliseconds): the runtime calls it in
a thread.
"""

from __future__ import annotations

import re

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

#: The bcrypt cost of L{hashPassword} and L{DUMMY_HASH}.
BCRYPT_COST = 12

#: What a bcrypt check reads of a password; longer passwords are cut
#: there, as Apache's htpasswd, nginx and crypt(3) do.
BCRYPT_MAX_PASSWORD_BYTES = 72

#: A bcrypt hash (cost 12) of a random password nobody knows: checking an
#: unknown user's password against it costs what checking a known user's
#: does, so that the time of an answer does not tell which names exist.
DUMMY_HASH = "$2b$12$nLqfaTJZN/ck1XHxD0mqzO0xqt1s/G0pj5x83hQneJwE/bUGxl7c."

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_ARGON2 = re.compile(
    r"\$argon2(id|i)\$v=[0-9]+\$m=[0-9]+,t=[0-9]+,p=[0-9]+"
    r"\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
_DES = re.compile(r"[./0-9A-Za-z]{13}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Refused hash prefixes, each with why.
_UNSAFE = (
    (
        "$apr1$",
        "an MD5-crypt hash ($apr1$) is refused: MD5-crypt is fast enough to "
        "brute-force from a leaked file",
    ),
    (
        "$1$",
        "an MD5-crypt hash ($1$) is refused: MD5-crypt is fast enough to "
        "brute-force from a leaked file",
    ),
    (
        "{SHA}",
        "a {SHA} hash is refused: unsalted SHA-1 is fast to brute-force and "
        "the same password always gives the same hash",
    ),
)
_ADVICE = "make a bcrypt hash with `revproxy hash-password` or `htpasswd -B`"


class HtpasswdError(ValueError):
    """
    An htpasswd file that cannot be used.

    @ivar problems: One C{"WHERE, line N: problem"} per problem, in file
        order.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


def _hashProblem(hash: str) -> str | None:
    """
    Why C{hash} is not accepted, else L{None}.  Never quotes the hash: a
    refused one may be a password in plain text.
    """
    if _BCRYPT.fullmatch(hash) or _ARGON2.fullmatch(hash):
        return None
    for prefix, reason in _UNSAFE:
        if hash.startswith(prefix):
            return f"{reason}; {_ADVICE}"
    if hash.startswith("$2") or hash.startswith("$argon2"):
        return f"a malformed bcrypt or argon2 hash; {_ADVICE}"
    if hash.startswith("$"):
        return (
            "an unsupported hash (only bcrypt $2y$/$2b$/$2a$ and argon2 "
            f"$argon2id$/$argon2i$ are accepted); {_ADVICE}"
        )
    if _DES.fullmatch(hash):
        return (
            "a DES crypt hash is refused: it reads only 8 characters of a "
            f"password and is fast to brute-force; {_ADVICE}"
        )
    return (
        "this looks like a password in plain text, which is refused: anyone "
        f"who reads the file can log in; {_ADVICE}"
    )


def parseHtpasswd(text: str, where: str) -> list[tuple[str, str]]:
    """
    Read an htpasswd file: one C{user:hash} a line; blank lines and lines
    starting with C{#} are skipped.

    @param where: The file's name, for messages.
    @return: Each C{(user, hash)}, in file order.
    @raise HtpasswdError: listing every problem with its line number: a
        line without C{:}, an empty user name or one with a control
        character, a refused hash, a user given twice.
    """
    users: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hash = line.partition(":")
        at = f"{where}, line {number}"
        if not sep:
            problems.append(f"{at}: expected user:hash")
            continue
        if not user:
            problems.append(f"{at}: the user name is empty")
            continue
        if _CONTROL.search(user):
            problems.append(f"{at}: the user name contains a control character")
            continue
        problem = _hashProblem(hash)
        if problem is not None:
            problems.append(f"{at}: user {user!r}: {problem}")
        elif user in seen:
            problems.append(
                f"{at}: user {user!r} is already given on line {seen[user]}"
            )
        else:
            seen[user] = number
            users.append((user, hash))
    if problems:
        raise HtpasswdError(problems)
    return users


def checkPassword(hash: str, password: bytes) -> bool:
    """
    Whether C{password} matches C{hash} (bcrypt or argon2).  Slow: call it
    off the reactor thread.

    @return: L{False} for a wrong password and for a hash that cannot be
        read; never raises for what a client sends.
    """
    if hash.startswith("$argon2"):
        try:
            return PasswordHasher().verify(hash, password)
        except (Argon2Error, InvalidHashError):
            return False
    try:
        return bcrypt.checkpw(
            password[:BCRYPT_MAX_PASSWORD_BYTES], hash.encode("ascii")
        )
    except (ValueError, UnicodeEncodeError):
        return False


def hashPassword(password: bytes, scheme: str = "bcrypt") -> str:
    """
    Hash C{password} for an htpasswd file.

    @param scheme: C{"bcrypt"} (cost L{BCRYPT_COST}) or C{"argon2"}
        (argon2id with argon2-cffi's default parameters).
    @raise ValueError: for an unknown scheme, or a password bcrypt cannot
        take whole (longer than 72 bytes).
    """
    if scheme == "argon2":
        return PasswordHasher().hash(password)
    if scheme != "bcrypt":
        raise ValueError(f"unknown scheme {scheme!r}: bcrypt or argon2")
    if len(password) > BCRYPT_MAX_PASSWORD_BYTES:
        raise ValueError(
            "bcrypt reads only the first 72 bytes of a password; use a shorter "
            "one, or argon2"
        )
    return bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_COST)).decode("ascii")
