"""
Tests for L{revproxy.placeholders}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from revproxy.placeholders import (
    PLACEHOLDERS,
    Placeholder,
    Template,
    parseTemplate,
    renderBody,
    renderHeaderValue,
    renderLocation,
)

_LIST = (
    "{host}, {uri}, {path}, {query}, {scheme}, {client_ip}, {request_id}, {path_suffix}"
)


def values(**changes: str) -> dict[str, str]:
    """
    A value for every placeholder, changed by C{changes}.
    """
    result = {
        "host": "example.com",
        "uri": "/a/b?c=d",
        "path": "/a/b",
        "query": "c=d",
        "scheme": "https",
        "client_ip": "192.0.2.1",
        "request_id": "r1",
        "path_suffix": "b",
    }
    result.update(changes)
    return result


class ParseTests(SynchronousTestCase):
    """
    L{parseTemplate}.
    """

    def test_literal(self) -> None:
        """
        Text without braces is one literal part.
        """
        t = parseTemplate("no-store")
        self.assertEqual(t, Template("no-store", ("no-store",)))
        self.assertTrue(t.isLiteral)
        self.assertEqual(t.names(), frozenset())

    def test_empty(self) -> None:
        """
        The empty text has no parts.
        """
        self.assertEqual(parseTemplate(""), Template("", ()))

    def test_placeholders(self) -> None:
        """
        Placeholders and text alternate, in order.
        """
        t = parseTemplate("{scheme}://{host}{uri}")
        self.assertEqual(
            t.parts,
            (Placeholder("scheme"), "://", Placeholder("host"), Placeholder("uri")),
        )
        self.assertEqual(t.names(), frozenset({"scheme", "host", "uri"}))
        self.assertFalse(t.isLiteral)
        self.assertEqual(t.source, "{scheme}://{host}{uri}")

    def test_everyPlaceholder(self) -> None:
        """
        Each name of L{PLACEHOLDERS} is a placeholder.
        """
        self.assertEqual(len(PLACEHOLDERS), 8)
        for name in PLACEHOLDERS:
            self.assertEqual(
                parseTemplate("{" + name + "}").parts, (Placeholder(name),)
            )

    def test_braces(self) -> None:
        """
        C{{{} and C{}}} are literal braces, merged with the text around.
        """
        t = parseTemplate("a{{b}}c{{{host}}}")
        self.assertEqual(t.parts, ("a{b}c{", Placeholder("host"), "}"))
        self.assertEqual(parseTemplate("{{host}}").parts, ("{host}",))

    def test_unknown(self) -> None:
        """
        An unknown placeholder is an error naming it and the known ones.
        """
        for text, bad in (("/x{foo}", "{foo}"), ("{Host}", "{Host}"), ("{}", "{}")):
            e = self.assertRaises(ValueError, parseTemplate, text)
            self.assertEqual(
                str(e),
                f"{bad} is not a placeholder; these are: {_LIST} (write {{{{ and "
                "}} for literal braces)",
            )

    def test_loneBraces(self) -> None:
        """
        A brace that opens or closes no placeholder is an error.
        """
        for text in ("a{b", "{", "{host"):
            e = self.assertRaises(ValueError, parseTemplate, text)
            self.assertEqual(
                str(e), "a '{' that opens no placeholder (write {{ for a literal '{')"
            )
        for text in ("a}b", "}"):
            e = self.assertRaises(ValueError, parseTemplate, text)
            self.assertEqual(
                str(e), "a '}' that closes no placeholder (write }} for a literal '}')"
            )

    def test_nestedBrace(self) -> None:
        """
        C{{{host}} is an error: C{{{} is a literal brace, and the C{}}
        closes nothing.
        """
        e = self.assertRaises(ValueError, parseTemplate, "{{host}")
        self.assertIn("closes no placeholder", str(e))


class HeaderValueTests(SynchronousTestCase):
    """
    L{renderHeaderValue}.
    """

    def test_render(self) -> None:
        """
        Values replace placeholders; the result is UTF-8.
        """
        t = parseTemplate("id={request_id}; host={host}")
        self.assertEqual(
            renderHeaderValue(t, values(host="bücher.example")),
            "id=r1; host=bücher.example".encode(),
        )

    def test_neverABreak(self) -> None:
        """
        CR, LF, NUL, DEL and other control characters in a value become
        spaces; HTAB stays.
        """
        t = parseTemplate("X{path}")
        rendered = renderHeaderValue(
            t, values(path="/a\r\nSet-Cookie: x\x00\x7f\x85\tb")
        )
        self.assertEqual(rendered, b"X/a  Set-Cookie: x   \tb")

    @given(st.text())
    def test_anyValue(self, value: str) -> None:
        """
        Whatever the value, the rendered header has no CR, LF or NUL.
        """
        rendered = renderHeaderValue(parseTemplate("{uri}"), values(uri=value))
        for byte in b"\r\n\x00":
            self.assertNotIn(byte, rendered)


class LocationTests(SynchronousTestCase):
    """
    L{renderLocation}.
    """

    def test_render(self) -> None:
        """
        A URL made of values that need no escaping is kept as is.
        """
        t = parseTemplate("{scheme}://{host}{uri}")
        self.assertEqual(renderLocation(t, values()), b"https://example.com/a/b?c=d")

    def test_percentEncoded(self) -> None:
        """
        Spaces, non-ASCII, quotes, angle brackets, backslashes and controls
        of a value are percent-encoded; reserved characters and C{%} are
        kept.
        """
        t = parseTemplate("https://example.com/new{path_suffix}")
        self.assertEqual(
            renderLocation(t, values(path_suffix='/a b/é"<>\\^`{|}\r\n?x=1&y=%20#f')),
            b"https://example.com/new/a%20b/%C3%A9%22%3C%3E%5C%5E%60%7B%7C%7D%0D%0A"
            b"?x=1&y=%20#f",
        )

    def test_literalKept(self) -> None:
        """
        Literal text is kept as written.
        """
        t = parseTemplate("/ü ber/{path}")
        self.assertEqual(renderLocation(t, values(path="ü")), "/ü ber/%C3%BC".encode())

    @given(st.text())
    def test_anyValue(self, value: str) -> None:
        """
        Whatever the value, the rendered Location is printable ASCII without
        spaces.
        """
        rendered = renderLocation(parseTemplate("/x{path}"), values(path=value))
        self.assertTrue(all(0x21 <= b <= 0x7E for b in rendered), rendered)


class BodyTests(SynchronousTestCase):
    """
    L{renderBody}.
    """

    def test_plain(self) -> None:
        """
        Without HTML, values are as given.
        """
        t = parseTemplate("<p>{host}</p>")
        self.assertEqual(
            renderBody(t, values(host="<b>&'\""), html=False), b"<p><b>&'\"</p>"
        )

    def test_html(self) -> None:
        """
        With HTML, values are escaped; literal text is not.
        """
        t = parseTemplate("<p>{path}</p>")
        self.assertEqual(
            renderBody(t, values(path="<script>a&b'\"</script>"), html=True),
            b"<p>&lt;script&gt;a&amp;b&#x27;&quot;&lt;/script&gt;</p>",
        )

    def test_utf8(self) -> None:
        """
        The body is UTF-8.
        """
        t = parseTemplate("Grüße {host}")
        self.assertEqual(
            renderBody(t, values(host="bücher"), html=True), "Grüße bücher".encode()
        )
