# -*- test-case-name: tests.test_hostnames,tests.test_routing,tests.test_tls -*-
"""
Host names as revproxy reads them: a C{Host} header or an SNI name
normalized to the form of configured names, matched against exact names and
one-label C{*.} wildcards (L{HostNames}, L{RoutingTable}), and covered by a
certificate's names (L{nameCovers}).

Routing, the certificate store, the admin socket and the config all match
names here, so that a request, its TLS handshake and an operator's question
agree on which site a name belongs to.

Pure and on the hot path: no reactor, no I/O.  The common C{Host} (ASCII,
perhaps with a port) is checked by one precompiled regular expression; only
non-ASCII names and A-labels go through C{idna}.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from ipaddress import AddressValueError, IPv6Address
from typing import Generic, Protocol, TypeVar

import idna

_MAX_NAME = 253
_MAX_PORT = 65535
_CACHE_LIMIT = 4096
# "[" IPv6 "]" or a 253-byte name and its dot, then ":" and five digits; a
# UTF-8 name may take up to four bytes for each character of its A-labels.
_MAX_ASCII_VALUE = 261
_MAX_VALUE = 4 * _MAX_ASCII_VALUE

# An LDH name (underscores let through, as nginx does: the name must still be
# configured to match anything) with an optional port, on lowercased bytes.
_ASCII_HOST = re.compile(
    rb"((?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
    rb"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)"
    rb"\.?(?::([0-9]{0,5}))?"
)
_IPV6_HOST = re.compile(rb"\[([0-9a-f:.]+)\](?::([0-9]{0,5}))?")
_PORT = re.compile(rb"[0-9]{0,5}")


def _portOK(port: bytes | None) -> bool:
    """
    Whether C{port}, the digits after the colon if any, is a valid port.

    An empty port (C{example.com:}) is allowed by RFC 3986.
    """
    return not port or int(port) <= _MAX_PORT


def _normalizeIDN(value: bytes) -> str | None:
    """
    Normalize a C{Host} value with non-ASCII bytes or A-labels through
    UTS 46 and IDNA 2008.
    """
    name, colon, port = value.rpartition(b":")
    if not colon:
        name, port = value, b""
    elif _PORT.fullmatch(port) is None or not _portOK(port):
        return None
    try:
        text = name.decode("utf-8")
        encoded = idna.encode(text, uts46=True)
    except (UnicodeError, idna.IDNAError):
        return None
    if encoded.endswith(b"."):
        encoded = encoded[:-1]
    match = _ASCII_HOST.fullmatch(encoded)
    if match is None or len(encoded) > _MAX_NAME or match.group(1) != encoded:
        return None
    return encoded.decode("ascii")


def normalizeHostHeader(value: bytes) -> str | None:
    """
    Normalize a C{Host} header value to the form of configured host names.

    The port is removed (C{example.com:443}, C{[::1]:8080}), the name is
    lowercased and loses one trailing dot, an IPv6 literal loses its
    brackets and is compressed, and an internationalized name (UTF-8
    U-labels) becomes its A-labels by UTS 46.

    @return: the host name, or L{None} when C{value} is not a valid host:
        empty, with a bad port, spaces or other invalid characters, or a bad
        internationalized name.
    """
    if not value.isascii():
        if len(value) > _MAX_VALUE:
            return None
        return _normalizeIDN(value)
    if len(value) > _MAX_ASCII_VALUE:
        return None
    lowered = value.lower()
    match = _ASCII_HOST.fullmatch(lowered)
    if match is not None:
        name, port = match.groups()
        if len(name) > _MAX_NAME or not _portOK(port):
            return None
        if b"xn--" in name:
            # A-labels are checked as the configuration's were, so a bogus
            # one cannot reach a wildcard site.
            return _normalizeIDN(lowered)
        return name.decode("ascii")
    match = _IPV6_HOST.fullmatch(lowered)
    if match is None:
        return None
    literal, port = match.groups()
    if not _portOK(port):
        return None
    try:
        return str(IPv6Address(literal.decode("ascii")))
    except AddressValueError:
        return None


def normalizeServerName(raw: bytes) -> str:
    """
    Normalize the SNI name of a TLS handshake as L{normalizeHostHeader}
    normalizes a C{Host}, so that the two can be compared.

    @return: the name, or C{""} when C{raw} is not a valid host name (SNI
        carries neither a port nor an IP literal): no site has that name,
        so it routes to the default site, as its certificate did.
    """
    if b":" in raw:
        return ""
    return normalizeHostHeader(raw) or ""


T = TypeVar("T")


def isWildcard(name: str) -> bool:
    """
    Whether the configured name C{name} is a wildcard (C{*.example.com}).
    """
    return name.startswith("*.")


def wildcardParent(name: str) -> str | None:
    """
    The suffix of the one-label wildcard that would cover C{name}:
    C{"example.com"} for C{"a.example.com"}, L{None} for a name of one
    label.
    """
    label, dot, suffix = name.partition(".")
    return suffix if label and dot else None


def nameCovers(pattern: str, host: str) -> bool:
    """
    Whether the certificate name C{pattern} covers the site host C{host}.

    A wildcard C{*.example.com} covers exactly one label (C{a.example.com},
    neither C{example.com} nor C{a.b.example.com}), and the host wildcard
    C{*.example.com} only when the pattern is that same wildcard.
    """
    if pattern == host:
        return True
    if isWildcard(pattern) and not isWildcard(host):
        return wildcardParent(host) == pattern[2:]
    return False


def claims(hosts: Collection[str], host: str) -> bool:
    """
    Whether the configured names C{hosts} name the normalized C{host},
    exactly or by a one-label wildcard (as L{HostNames.match} reads them).
    """
    if host in hosts:
        return True
    parent = wildcardParent(host)
    return parent is not None and "*." + parent in hosts


class HostNames(Generic[T]):
    """
    Values by normalized host name: an exact name first, then a C{*.}
    wildcard standing for exactly one label, then L{default}.  Shared by
    host routing and the certificate store.

    @ivar default: The value for a name no entry takes, or L{None}.
    """

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}
        self.default: T | None = None

    def add(self, name: str, value: T) -> None:
        """
        Give C{value} to C{name}, a normalized name or a C{*.suffix}
        wildcard.

        @raise ValueError: C{name} has a C{*} other than as a whole first
            label.
        """
        if isWildcard(name):
            suffix = name[2:]
            if not suffix or "*" in suffix:
                raise ValueError(f"bad wildcard {name!r}")
            self._wildcard[suffix] = value
        elif "*" in name:
            raise ValueError(f"bad wildcard {name!r}")
        else:
            self._exact[name] = value

    def match(self, name: str | None) -> T | None:
        """
        The value for the normalized C{name} (L{None}: no name): an exact
        entry, then a wildcard, then L{default}.
        """
        if name is not None:
            value = self._exact.get(name)
            if value is not None:
                return value
            if self._wildcard:
                # wildcardParent, inline: every request asks.
                label, dot, suffix = name.partition(".")
                if label and dot:
                    value = self._wildcard.get(suffix)
                    if value is not None:
                        return value
        return self.default

    def values(self) -> list[T]:
        """
        The values of every entry (exact names first), without the default.
        """
        return [*self._exact.values(), *self._wildcard.values()]


class HasHosts(Protocol):
    """
    What routing needs of a site: L{revproxy.config.SiteConfig} has it.
    """

    @property
    def name(self) -> str:
        """
        The site's name, for error messages.
        """

    @property
    def hosts(self) -> tuple[str, ...]:
        """
        Normalized host names: lowercase A-labels without a trailing dot,
        C{*.example.com} wildcards, IPv6 literals without brackets.
        """

    @property
    def default(self) -> bool:
        """
        Whether requests for no other site's hosts go to this one.
        """


S = TypeVar("S", bound=HasHosts)


class RoutingTable(Generic[S]):
    """
    The sites of one configuration, looked up by host name: an exact name
    first, then a C{*.} wildcard, then the default site.
    """

    def __init__(self, sites: Iterable[S]) -> None:
        """
        @raise ValueError: two sites claim the same host or both are the
            default, or a host has a C{*} other than as a whole first label.
        """
        self._sites = tuple(sites)
        self._names: HostNames[S] = HostNames()
        self._cache: dict[bytes, S | None] = {}
        owners: dict[str, S] = {}
        for site in self._sites:
            if site.default:
                previousDefault = self._names.default
                if previousDefault is not None:
                    raise ValueError(
                        f"sites {previousDefault.name!r} and {site.name!r} "
                        "are both the default"
                    )
                self._names.default = site
            for host in site.hosts:
                previous = owners.get(host)
                if previous is not None:
                    raise ValueError(
                        f"host {host!r} belongs to sites {previous.name!r} "
                        f"and {site.name!r}"
                    )
                owners[host] = site
                try:
                    self._names.add(host, site)
                except ValueError:
                    raise ValueError(
                        f"site {site.name!r}: bad wildcard {host!r}"
                    ) from None

    @property
    def sites(self) -> tuple[S, ...]:
        """
        The sites, in the order they were given.
        """
        return self._sites

    def match(self, host: str | None) -> S | None:
        """
        The site for C{host}, normalized as by L{normalizeHostHeader}.

        A wildcard C{*.example.com} stands for exactly one label, as in
        Caddy: it matches C{a.example.com}, but neither C{example.com} nor
        C{a.b.example.com}.

        @param host: the host name, or L{None} when the request had none.
        @return: the site, or the default site when none claims C{host}, or
            L{None} when there is no default site either.
        """
        return self._names.match(host)

    def lookupHeader(self, value: bytes | None) -> S | None:
        """
        The site for a raw C{Host} header value, or L{None} when there is no
        C{Host}.

        A C{Host} that is not valid gets the same answer as a missing one.
        Answers are cached by the raw value; the cache is emptied whenever it
        would grow beyond 4096 entries, so it stays bounded however many
        names clients send.
        """
        if value is None:
            return self._names.default
        cache = self._cache
        try:
            return cache[value]
        except KeyError:
            pass
        site = self.match(normalizeHostHeader(value))
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[value] = site
        return site
