"""
h2spec's hpack cases (RFC 7541): header blocks that are a valid request
followed, or preceded, by a representation the decoder must refuse, which
HTTP/2 makes a connection error of type COMPRESSION_ERROR.

The bad representations are bytes written out here; the request before
them comes from the connection's encoder, as in h2spec.  (hpack/2.3 is
only the group of 2.3.3 in h2spec and has no case of its own.)
"""

from __future__ import annotations

from tests.h2conformance.core import (
    COMPRESSION_ERROR,
    Conn,
    HeadersFrame,
    SettingsFrame,
    case,
    expectConnectionError,
)


def _integer(value: int, prefixBits: int, first: int) -> bytes:
    """
    An HPACK integer (RFC 7541 section 5.1) with a C{prefixBits}-bit
    prefix, the bits above it from C{first}.
    """
    limit = (1 << prefixBits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _send(conn: Conn, before: bytes = b"", after: bytes = b"") -> None:
    """
    A GET of C{/} on stream 1, C{before} and C{after} around its block.
    """
    frame = HeadersFrame(1, flags=["END_STREAM", "END_HEADERS"])
    frame.data = before + conn.encoder.encode(conn.request()) + after
    conn.send(frame)


# -- 2.3.3 Index Address Space


@case(
    "hpack/2.3.3", 1, "Sends a indexed header field representation with invalid index"
)
def indexedBeyondTables(conn: Conn) -> None:
    # Indexed header field, index 70.
    _send(conn, after=b"\xc6")
    expectConnectionError(conn, COMPRESSION_ERROR)


@case(
    "hpack/2.3.3", 2, "Sends a literal header field representation with invalid index"
)
def literalNameBeyondTables(conn: Conn) -> None:
    # Literal with incremental indexing, name index 70, empty value.
    _send(conn, after=_integer(70, 6, 0x40) + b"\x00")
    expectConnectionError(conn, COMPRESSION_ERROR)


# -- 4.2 Maximum Table Size


@case("hpack/4.2", 1, "Sends a dynamic table size update at the end of header block")
def tableSizeUpdateAtEnd(conn: Conn) -> None:
    # Dynamic table size update to 1, after the fields.
    _send(conn, after=_integer(1, 5, 0x20))
    expectConnectionError(conn, COMPRESSION_ERROR)


# -- 5.2 String Literal Representation

# "x-test" Huffman-coded (5 octets, the last 2 bits EOS-prefix padding).
_NAME = b"\x85\xf2\xb2\x4a\x84\xff"


@case(
    "hpack/5.2",
    1,
    "Sends a Huffman-encoded string literal representation with padding longer than 7 bits",
)
def huffmanPaddingTooLong(conn: Conn) -> None:
    # Literal without indexing, new name; the value "test" coded in 3
    # octets and then a whole octet of 1 bits.
    _send(conn, after=b"\x00" + _NAME + b"\x84\x49\x50\x9f\xff")
    expectConnectionError(conn, COMPRESSION_ERROR)


@case(
    "hpack/5.2",
    2,
    "Sends a Huffman-encoded string literal representation padded by zero",
)
def huffmanPaddedByZero(conn: Conn) -> None:
    # The value "test" with its padding bits 0, not EOS's leading 1s.
    _send(conn, after=b"\x00" + _NAME + b"\x83\x49\x50\x90")
    expectConnectionError(conn, COMPRESSION_ERROR)


@case(
    "hpack/5.2",
    3,
    "Sends a Huffman-encoded string literal representation containing the EOS symbol",
)
def huffmanWithEos(conn: Conn) -> None:
    # The value "tes", the 30-bit EOS code, then "t".
    _send(conn, after=b"\x00" + _NAME + b"\x87\x49\x51\xff\xff\xff\xfa\x7f")
    expectConnectionError(conn, COMPRESSION_ERROR)


# -- 6.1 Indexed Header Field Representation


@case("hpack/6.1", 1, "Sends a indexed header field representation with index 0")
def indexZero(conn: Conn) -> None:
    _send(conn, after=b"\x80")
    expectConnectionError(conn, COMPRESSION_ERROR)


# -- 6.3 Dynamic Table Size Update


@case(
    "hpack/6.3",
    1,
    "Sends a dynamic table size update larger than the value of SETTINGS_HEADER_TABLE_SIZE",
)
def tableSizeUpdateAboveLimit(conn: Conn) -> None:
    limit = conn.settings.get(SettingsFrame.HEADER_TABLE_SIZE, 4096)
    _send(conn, before=_integer(limit + 1, 5, 0x20))
    expectConnectionError(conn, COMPRESSION_ERROR)
