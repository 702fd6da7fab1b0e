# -*- test-case-name: tests.test_placeholders -*-
"""
Templates with placeholders, as a redirect's C{to}, a header rule's value
and a fixed answer's C{body} are written: C{"https://example.com{uri}"}.

A template is parsed once, when the config is loaded (L{parseTemplate}), and
rendered for each request with the request's values, escaped for where the
result goes: a header value (L{renderHeaderValue}), a C{Location}
(L{renderLocation}) or a body (L{renderBody}).  Pure: no I/O.

Only the placeholders of L{PLACEHOLDERS} exist; C{"{{"} and C{"}}"} are
literal braces.
"""

from __future__ import annotations

import html as _html
import re
import unicodedata
from collections.abc import Callable, Mapping

import attrs

#: Every placeholder name, in the order the documentation gives them.
PLACEHOLDERS = (
    "host",
    "uri",
    "path",
    "query",
    "scheme",
    "client_ip",
    "request_id",
    "path_suffix",
)

_TOKENS = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")

# RFC 3986's unreserved and reserved characters, and "%" (a value that is
# already percent-encoded stays as it is).
_URI_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    b"-._~:/?#[]@!$&'()*+,;=%"
)


@attrs.frozen
class Placeholder:
    """
    One placeholder of a template, such as C{{host}}.

    @ivar name: One of L{PLACEHOLDERS}.
    """

    name: str


@attrs.frozen
class Template:
    """
    A string with placeholders, parsed.

    @ivar source: The text as written in the config.
    @ivar parts: Literal text pieces (braces unescaped) and L{Placeholder}s,
        in order; no empty text piece, no two text pieces in a row.
    """

    source: str
    parts: tuple[str | Placeholder, ...]

    def names(self) -> frozenset[str]:
        """
        The names of the placeholders the template uses.
        """
        return frozenset(p.name for p in self.parts if isinstance(p, Placeholder))

    @property
    def isLiteral(self) -> bool:
        """
        Whether the template has no placeholder: it renders the same for
        every request.
        """
        return not self.names()


def _placeholderList() -> str:
    return ", ".join("{" + name + "}" for name in PLACEHOLDERS)


def parseTemplate(text: str) -> Template:
    """
    Parse C{text}.

    @raise ValueError: naming the first unknown placeholder or lone brace.
    """
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    position = 0
    for match in _TOKENS.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif token == "{":
            raise ValueError(
                "a '{' that opens no placeholder (write {{ for a literal '{')"
            )
        elif token == "}":
            raise ValueError(
                "a '}' that closes no placeholder (write }} for a literal '}')"
            )
        else:
            name = match.group(1)
            if name not in PLACEHOLDERS:
                raise ValueError(
                    f"{token} is not a placeholder; these are: {_placeholderList()} "
                    "(write {{ and }} for literal braces)"
                )
            if "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(Placeholder(name))
    literal.append(text[position:])
    if "".join(literal):
        parts.append("".join(literal))
    return Template(source=text, parts=tuple(parts))


def _render(
    t: Template, values: Mapping[str, str], escape: Callable[[str], str]
) -> str:
    """
    The template's text with each placeholder replaced by C{escape} of its
    value.
    """
    return "".join(
        escape(values[p.name]) if isinstance(p, Placeholder) else p for p in t.parts
    )


def _headerSafe(value: str) -> str:
    """
    C{value} with every control character but HTAB (CR, LF, NUL, DEL, C1
    controls) turned into a space, so that it cannot end a header field.
    """
    return "".join(
        " " if c != "\t" and unicodedata.category(c) == "Cc" else c for c in value
    )


def renderHeaderValue(t: Template, values: Mapping[str, str]) -> bytes:
    """
    Render C{t} as a header field value, in UTF-8.

    @param values: Every name of L{PLACEHOLDERS} with its value.
    """
    return _render(t, values, _headerSafe).encode("utf-8")


def _uriSafe(value: str) -> str:
    """
    C{value} with every byte of its UTF-8 outside RFC 3986's unreserved,
    reserved and C{%} characters percent-encoded.
    """
    return "".join(
        chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in value.encode("utf-8")
    )


def renderLocation(t: Template, values: Mapping[str, str]) -> bytes:
    """
    Render C{t} as a C{Location} header value: each placeholder's value is
    percent-encoded where RFC 3986 does not allow it as it is (spaces,
    controls, non-ASCII, C{"}, C{<>}, C{\\}...); literal text is kept as
    written.
    """
    return _render(t, values, _uriSafe).encode("utf-8")


def renderBody(t: Template, values: Mapping[str, str], html: bool) -> bytes:
    """
    Render C{t} as a response body, in UTF-8.

    @param html: Whether the body is HTML, so that values are HTML-escaped
        (C{<>&"'}).
    """
    if html:
        return _render(t, values, _htmlEscape).encode("utf-8")
    return _render(t, values, str).encode("utf-8")


def _htmlEscape(value: str) -> str:
    return _html.escape(value, quote=True)
