# -*- test-case-name: tests.test_headers -*-
"""
Header rewriting between a client, revproxy and an upstream.

Headers are lists of C{(name, value)} byte pairs in arrival order, names as
received; a repeated header (C{Set-Cookie}) is one pair per line, and every
one is kept in order.

This module is pure and on the hot path: no reactor, no I/O, no twisted.web;
lookups are against precomputed frozensets and dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)
"""
Lowercased names of the hop-by-hop headers a proxy never forwards.  Every
name that starts with C{proxy-} (see L{isHopByHop}) is hop-by-hop as well.
"""

_PROXY_PREFIX = b"proxy-"
_DEFAULT_VIA = b"1.1 revproxy"

# What upstreamRequestHeaders does with a name that is not simply copied.
_HOST = 1
_XFF = 2
_XFP = 3
_XFH = 4
_FORWARDING = 5
_DROP = 6
_VIA = 7
_REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"expect": _DROP,
    b"content-length": _DROP,
    # Sent once, by revproxy itself (the incoming one, when believed, is
    # passed in as requestID): neither repeated nor strippable.
    b"x-request-id": _DROP,
    b"via": _VIA,
}
#: Headers in which a proxy tells its upstream who the client is or how it
#: connected: passed on from a trusted peer, dropped from any other (a
#: client could otherwise pose as another address, scheme or port to an
#: application that believes them).
FORWARDING_HEADERS: frozenset[bytes] = frozenset(
    [
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"true-client-ip",
        b"x-client-ip",
        b"cf-connecting-ip",
    ]
)
_REQUEST_SPECIAL.update((name, _FORWARDING) for name in FORWARDING_HEADERS)


#: What upstreamRequestHeaders does with a field, by its lowercased name
#: (0: copy it), as _RESPONSE_KINDS for responses.
_REQUEST_KINDS: dict[bytes, int] = {}


def _requestKind(lower: bytes) -> int:
    """
    What L{upstreamRequestHeaders} does with a field called C{lower} (hop
    by hop, C{proxy-*} or with an underscore: L{_DROP}), remembered.
    """
    kind = _REQUEST_SPECIAL.get(lower)
    if kind is None:
        if lower in HOP_BY_HOP or lower.startswith(_PROXY_PREFIX) or b"_" in lower:
            kind = _DROP
        else:
            kind = 0
    elif kind != _HOST and lower.startswith(_PROXY_PREFIX):
        kind = _DROP
    if len(_REQUEST_KINDS) >= 1024:
        _REQUEST_KINDS.clear()
    _REQUEST_KINDS[lower] = kind
    return kind


def isHopByHop(lowerName: bytes, drop: frozenset[bytes] = HOP_BY_HOP) -> bool:
    """
    Whether the lowercased header name C{lowerName} is hop-by-hop.

    @param drop: the names to drop, as returned by L{hopByHopNames}.
    """
    return lowerName in drop or lowerName.startswith(_PROXY_PREFIX)


def connectionTokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """
    The lowercased, non-empty comma-separated tokens of every value of the
    C{Connection} fields C{values}: every field counts.
    """
    tokens: frozenset[bytes] | None = None
    for value in values:
        these = _valueTokens(value)
        tokens = these if tokens is None else tokens | these
    return _EMPTY if tokens is None else tokens


_EMPTY: frozenset[bytes] = frozenset()
#: The tokens of C{Connection} values seen lately: a few values
#: (C{keep-alive}, C{close}, C{Upgrade}) come with most messages.
_TOKENS: dict[bytes, frozenset[bytes]] = {}
_TOKENS_CACHE = 256


def _valueTokens(value: bytes) -> frozenset[bytes]:
    """
    The tokens of one C{Connection} value, as L{connectionTokens} counts
    them, remembered for the next message.
    """
    tokens = _TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(
            token
            for token in (part.strip().lower() for part in value.split(b","))
            if token
        )
        if len(_TOKENS) >= _TOKENS_CACHE:
            _TOKENS.clear()
        _TOKENS[value] = tokens
    return tokens


def hopByHopNames(headers: Headers) -> frozenset[bytes]:
    """
    The lowercased names to drop from C{headers}: L{HOP_BY_HOP} and every
    token listed in any C{Connection} header (L{connectionTokens}).

    Names that start with C{proxy-} are hop-by-hop too but cannot be listed in
    a set; L{isHopByHop} checks both.
    """
    values = [
        value
        for name, value in headers
        if len(name) == 10 and name.lower() == b"connection"
    ]
    if not values:
        return HOP_BY_HOP
    return HOP_BY_HOP | connectionTokens(values)


def _appendVia(out: Headers, lastVia: int, via: bytes) -> None:
    """
    Append C{via} to the last C{Via} header of C{out}, at index C{lastVia}, or
    add a new C{Via} header when C{lastVia} is negative.
    """
    if lastVia < 0:
        out.append((b"Via", via))
    else:
        name, value = out[lastVia]
        out[lastVia] = (name, value + b", " + via if value else via)


def upstreamRequestHeaders(
    headers: Headers,
    *,
    clientIP: str,
    peerTrusted: bool,
    scheme: bytes,
    host: bytes | None,
    via: bytes = _DEFAULT_VIA,
    bodyLength: int | None,
    requestID: bytes | None = None,
    lowercase: bool = False,
    drop: frozenset[bytes] | None = None,
) -> Headers:
    """
    Rewrite a client's request headers into those sent upstream.

      - Hop-by-hop headers (L{HOP_BY_HOP}, C{proxy-*} and the names listed in
        C{Connection}) are dropped, and so are C{Expect} (the proxy has
        already answered C{100-continue} and holds the body) and every
        incoming C{Content-Length} and C{X-Request-ID}.
      - A header whose name contains C{_} is dropped, as nginx does
        (C{underscores_in_headers off}): CGI and WSGI map C{-} and C{_}
        alike, so C{X_Forwarded_For} would reach an application as
        C{X-Forwarded-For}.
      - C{Host} is kept as it is, moved to the front; it is never dropped,
        even when C{Connection} lists it, since an HTTP/1.1 request without
        it is invalid.
      - From a trusted peer, C{X-Forwarded-For} is the incoming chain (all
        its headers joined with C{", "}) followed by C{clientIP};
        C{X-Forwarded-Proto} and C{X-Forwarded-Host} keep the first incoming
        value; C{Forwarded} and C{X-Real-IP} pass through.  From any other
        peer all of those are dropped and the C{X-Forwarded-*} headers start
        afresh from C{clientIP}, C{scheme} and C{host}; so are the other
        L{FORWARDING_HEADERS} (C{X-Forwarded-Port}, C{True-Client-IP},
        ...), which pass only from a trusted peer.  No C{Forwarded} header
        is generated.
      - C{via} is appended to the last C{Via} header, or sent as a new one.
      - When C{bodyLength} is not L{None}, exactly one C{Content-Length}.
      - When C{requestID} is not L{None}, exactly one C{X-Request-ID}.

    What revproxy adds (C{X-Forwarded-*}, C{Via}, C{Content-Length},
    C{X-Request-ID}) is added after the hop-by-hop headers are dropped, so
    a client's C{Connection: x-request-id} cannot strip it.

    Headers that are not rewritten keep their order; the generated ones
    follow them.  A forwarder that tunnels an C{Upgrade} adds its own
    C{Connection: Upgrade} and C{Upgrade} headers to the result.

    @param clientIP: the TCP peer's address.
    @param peerTrusted: whether the TCP peer is one of C{trusted_proxies}.
    @param scheme: C{b"http"} or C{b"https"}, as the client spoke it.
    @param host: the request's C{Host} value, or L{None} if it had none.
    @param bodyLength: the length of the body sent upstream, or L{None} when
        there is no body.
    @param lowercase: whether every name is lowercase already (an
        exchange's are), so none is lowered again.
    @param drop: the hop-by-hop names (L{hopByHopNames}), when known.
    """
    if drop is None:
        drop = hopByHopNames(headers)
    hosts: Headers = []
    out: Headers = []
    chain: list[bytes] = []
    proto: bytes | None = None
    forwardedHost: bytes | None = None
    lastVia = -1
    kinds = _REQUEST_KINDS
    listed = drop is not HOP_BY_HOP
    for pair in headers:
        lower = pair[0] if lowercase else pair[0].lower()
        kind = kinds.get(lower)
        if kind is None:
            kind = _requestKind(lower)
        if kind == _HOST:
            hosts.append(pair)
        elif listed and lower in drop:
            continue
        elif not kind:
            out.append(pair)
        elif kind == _DROP:
            continue
        elif kind == _VIA:
            lastVia = len(out)
            out.append(pair)
        elif not peerTrusted:
            continue
        elif kind == _XFF:
            chain.append(pair[1])
        elif kind == _XFP:
            if proto is None:
                proto = pair[1]
        elif kind == _XFH:
            if forwardedHost is None:
                forwardedHost = pair[1]
        else:
            out.append(pair)

    ip = clientIP.encode("ascii")
    chain = [value for value in chain if value.strip()]
    chain.append(ip)
    out.append((b"X-Forwarded-For", b", ".join(chain)))
    out.append((b"X-Forwarded-Proto", scheme if proto is None else proto))
    if forwardedHost is None:
        forwardedHost = host
    if forwardedHost is not None:
        out.append((b"X-Forwarded-Host", forwardedHost))
    if hosts:
        # Nothing moved, so lastVia still indexes into out once hosts prefix it.
        out[:0] = hosts
        if lastVia >= 0:
            lastVia += len(hosts)
    _appendVia(out, lastVia, via)
    if bodyLength is not None:
        out.append((b"Content-Length", b"%d" % (bodyLength,)))
    if requestID is not None:
        out.append((b"X-Request-ID", requestID))
    return out


#: What L{relayResponseHeaders} found among the fields it kept.
HAS_DATE = 1
HAS_REQUEST_ID = 2
HAS_HSTS = 4


def clientResponseHeaders(headers: Headers, via: bytes = _DEFAULT_VIA) -> Headers:
    """
    Rewrite an upstream's response headers into those sent to the client:
    L{relayResponseHeaders}'s fields.
    """
    return relayResponseHeaders(headers, via)[0]


def relayResponseHeaders(
    headers: Headers, via: bytes = _DEFAULT_VIA, noBody: bool = False
) -> tuple[Headers, int]:
    """
    Rewrite an upstream's response headers into those sent to the client,
    in one pass, and say which of C{Date}, C{X-Request-ID} and
    C{Strict-Transport-Security} are among them (L{HAS_DATE},
    L{HAS_REQUEST_ID}, L{HAS_HSTS}).

    Hop-by-hop headers (L{HOP_BY_HOP}, C{proxy-*} and the names listed in
    C{Connection}) are dropped: C{Transfer-Encoding} with them, since the
    server frames the body again.  C{Content-Length} is kept, as the
    forwarder passes the upstream's body through unchanged, unless the
    upstream also sent C{Transfer-Encoding}, which overrides it (RFC 9112,
    section 6.3), or C{noBody} (a 204 has no framing, a 304's length would
    describe another response: RFC 9110 sections 8.6 and 15.3.5).  Every
    other header keeps its place, and C{via} is appended to the last
    C{Via} header or sent as a new one.
    """
    out: Headers = []
    lastVia = -1
    chunked = False
    found = 0
    listed: list[bytes] | None = None
    kinds = _RESPONSE_KINDS
    for pair in headers:
        kind = kinds.get(pair[0])
        if kind is None:
            kind = _responseKind(pair[0])
        if not kind:
            out.append(pair)
        elif kind == _HOP:
            continue
        elif kind == _CONNECTION:
            if listed is None:
                listed = [pair[1]]
            else:
                listed.append(pair[1])
        elif kind == _CODING:
            chunked = True
        elif kind == _VIA:
            lastVia = len(out)
            out.append(pair)
        elif kind == _LENGTH:
            if not noBody:
                out.append(pair)
        else:
            found |= kind
            out.append(pair)
    if listed is not None and not connectionTokens(listed) <= (
        _CLOSABLE if found & _CLOSE else _DROPPED
    ):
        # The upstream's Connection names more fields to drop: rare enough
        # for a second pass, now that every one of them is known.
        drop = HOP_BY_HOP | connectionTokens(listed)
        out = [pair for pair in out if pair[0].lower() not in drop]
        lastVia = -1
        found = 0
        for index, pair in enumerate(out):
            kind = _RESPONSE_SPECIAL.get(pair[0].lower())
            if kind == _VIA:
                lastVia = index
            elif kind is not None and kind != _LENGTH:
                found |= kind
    found &= _FOUND
    if chunked:
        # A Content-Length beside Transfer-Encoding is the stuff of response
        # smuggling: the forwarder read the body by its chunks, not this.
        kept = [pair for pair in out if pair[0].lower() != b"content-length"]
        if len(kept) != len(out):
            out = kept
            lastVia = -1
            for index, pair in enumerate(out):
                if pair[0].lower() == b"via":
                    lastVia = index
    _appendVia(out, lastVia, via)
    return out, found


_LENGTH = 16
# What relayResponseHeaders notes of a kept field (_VIA: where it is).
_RESPONSE_SPECIAL: dict[bytes, int] = {
    b"via": _VIA,
    b"content-length": _LENGTH,
    b"date": HAS_DATE,
    b"x-request-id": HAS_REQUEST_ID,
    b"strict-transport-security": HAS_HSTS,
}
# A hop-by-hop name, dropped from every response.
_HOP = 32
_RESPONSE_SPECIAL.update((name, _HOP) for name in HOP_BY_HOP)
# A field named "close": kept, unless the upstream's Connection lists it,
# as "Connection: close" does; _CLOSE notes that one was kept.
_CLOSE = 64
_RESPONSE_SPECIAL[b"close"] = _CLOSE
_FOUND = HAS_DATE | HAS_REQUEST_ID | HAS_HSTS
_CONNECTION = 128
_CODING = 256
#: What relayResponseHeaders does with a field, by its name as sent (0:
#: keep it): names repeat from response to response, so one lookup
#: replaces lowering and testing each.  Bounded: an upstream may send any
#: names at all.
_RESPONSE_KINDS: dict[bytes, int] = {}
_KINDS_CACHE = 1024


def _responseKind(name: bytes) -> int:
    """
    What L{relayResponseHeaders} does with a field called C{name}, worked
    out and remembered.
    """
    lower = name.lower()
    if lower == b"connection":
        kind = _CONNECTION
    elif lower == b"transfer-encoding":
        kind = _CODING
    elif lower.startswith(_PROXY_PREFIX):
        kind = _HOP
    else:
        kind = _RESPONSE_SPECIAL.get(lower, 0)
    if len(_RESPONSE_KINDS) >= _KINDS_CACHE:
        _RESPONSE_KINDS.clear()
    _RESPONSE_KINDS[name] = kind
    return kind


# Connection tokens that drop nothing more than the first pass did.
_DROPPED = HOP_BY_HOP | {b"close"}
_CLOSABLE = HOP_BY_HOP


_Address = IPv4Address | IPv6Address
_Network = IPv4Network | IPv6Network


def _parseAddress(ip: str) -> _Address | None:
    """
    Parse C{ip}, reading an IPv4-mapped IPv6 address as its IPv4 address.

    @return: the address, or L{None} if C{ip} is not one.
    """
    try:
        address = ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


def _parseEntry(text: str) -> _Address | None:
    """
    Parse one X-Forwarded-For entry: an address, or an address with a port
    (C{a.b.c.d:port}, C{[v6]:port}, C{[v6]}).
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        inner = text[1:end]
        # Brackets hold an IPv6 address (RFC 3986), nothing else.
        return _parseAddress(inner) if ":" in inner else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        address = _parseAddress(host)
        return address if isinstance(address, IPv4Address) else None
    return _parseAddress(text)


def _inNetworks(address: _Address, trusted: Sequence[_Network]) -> bool:
    """
    Whether C{address} is in one of the networks C{trusted}.
    """
    version = address.version
    for network in trusted:
        if network.version == version and address in network:
            return True
    return False


def isTrusted(ip: str, trusted: Sequence[_Network]) -> bool:
    """
    Whether the address C{ip} is in one of the networks C{trusted}.

    An IPv4-mapped IPv6 address (C{::ffff:10.0.0.1}) counts as its IPv4
    address; a string that is not an address is never trusted.
    """
    if not trusted:
        return False
    address = _parseAddress(ip)
    return address is not None and _inNetworks(address, trusted)


def clientAddress(peerIP: str, headers: Headers, trusted: Sequence[_Network]) -> str:
    """
    The address of the client, as far as the proxy can believe it.

    That is C{peerIP}, unless the peer is trusted: then C{X-Forwarded-For} is
    walked from the right, and the first address that is not trusted itself
    is the client.  An entry with a port (C{192.0.2.1:5678},
    C{[2001:db8::1]:443}, as some balancers write it) is read as its
    address.  The walk stops at an entry that is not an address
    (C{unknown}, a name): the last trusted address walked past is the
    client then, since nothing further left can be believed.  If every
    address is trusted, the left-most one is the client.  Empty list
    elements are skipped, as RFC 9110 asks.

    @param peerIP: the TCP peer's address, returned as it is given.
    @param trusted: the networks of C{trusted_proxies}.
    @return: C{peerIP}, or an address from C{X-Forwarded-For} in its
        canonical text form (an IPv4-mapped one as its IPv4 address).
    """
    if not trusted:
        return peerIP
    peer = _parseAddress(peerIP)
    if peer is None or not _inNetworks(peer, trusted):
        return peerIP
    values = [value for name, value in headers if name.lower() == b"x-forwarded-for"]
    if not values:
        return peerIP
    entries = b",".join(values).split(b",")
    believed = peerIP
    for raw in reversed(entries):
        entry = raw.strip()
        if not entry:
            continue
        try:
            text = entry.decode("ascii")
        except UnicodeDecodeError:
            return believed
        address = _parseEntry(text)
        if address is None:
            return believed
        believed = str(address)
        if not _inNetworks(address, trusted):
            return believed
    return believed
