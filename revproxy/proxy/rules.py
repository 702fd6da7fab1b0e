# -*- test-case-name: tests.test_rules -*-
"""
What a site's or route's rules do to a request and its response: the
placeholder values of a request, header rules (set, add, remove), the
prefix a mounted route strips, and the upstream's redirects written back
under that prefix (C{rewrite_redirects}).

Pure: no reactor, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from revproxy.placeholders import renderHeaderValue

if TYPE_CHECKING:
    from revproxy.config import HeaderRules
    from revproxy.proxy.exchange import Exchange
    from revproxy.runtime import SiteRoute

Headers = list[tuple[bytes, bytes]]


def placeholderValues(
    request: Exchange, route: SiteRoute, host: str | None, target: bytes
) -> dict[str, str]:
    """
    The value of every placeholder for C{request}, routed to C{route}, for
    C{host} (normalized, without port) and C{target} (origin form).
    """
    path, _, query = target.partition(b"?")
    suffix = b""
    rule = route.rule
    if rule is not None and rule.path_prefix is not None:
        prefix = rule.path_prefix.encode("utf-8")
        if path.startswith(prefix):
            suffix = path[len(prefix) :]
    if host is None:
        given = request.header(b"host")
        host = given.decode("latin-1") if given else route.fallbackHost.decode()
    return {
        "host": host,
        "uri": target.decode("latin-1"),
        "path": path.decode("latin-1"),
        "query": query.decode("latin-1"),
        "scheme": "https" if request.secure else "http",
        "client_ip": request.clientIP or "",
        "request_id": request.requestID or "",
        "path_suffix": suffix.decode("latin-1"),
    }


def applyHeaderRules(
    headers: Headers,
    rules: Iterable[HeaderRules],
    values: Mapping[str, str],
) -> Headers:
    """
    C{headers} with each of C{rules} applied in turn: its C{remove}, then
    its C{set} (every field of the name replaced by one), then its C{add}.
    """
    for rule in rules:
        drop = set(rule.remove) | {name.lower() for name, _ in rule.set}
        if drop:
            headers = [
                pair
                for pair in headers
                if pair[0].decode("latin-1").lower() not in drop
            ]
        for name, template in rule.set:
            headers.append((name.encode("ascii"), renderHeaderValue(template, values)))
        for name, template in rule.add:
            headers.append((name.encode("ascii"), renderHeaderValue(template, values)))
    return headers


def stripPrefix(target: bytes, prefix: bytes) -> bytes:
    """
    C{target} without C{prefix}, still starting with C{/}: C{/api/x?y} under
    C{/api/} is C{/x?y}, and C{/api} under C{/api/} (or C{/api}) is C{/}.
    """
    rest = target[len(prefix) :] if target.startswith(prefix) else b""
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return rest


def mountPoint(prefix: bytes) -> bytes:
    """
    The path an application is mounted at, as C{X-Forwarded-Prefix} says
    it: the prefix without its trailing C{/}.
    """
    return prefix.rstrip(b"/")


#: A Refresh value's URL part: C{5; url=/next}.
_REFRESH_URL = re.compile(rb"(?i)(\burl\s*=\s*)(\S+)")
#: A Set-Cookie's Path attribute.
_COOKIE_PATH = re.compile(rb"(?i)(;\s*path\s*=\s*)([^;]*)")


def rewriteRedirects(headers: Headers, mount: bytes, hosts: Iterable[bytes]) -> Headers:
    """
    The upstream's response C{headers} with the paths it sends the client
    to written back under C{mount} (a mounted route's prefix, without its
    trailing C{/}): C{Location}, C{Content-Location} and C{Refresh} URLs
    that are absolute paths, or absolute URLs to one of C{hosts} (the
    request's host and the upstream host), and C{Set-Cookie}'s C{Path}.
    Anything else (another site's URL, a relative path) stays as it is.
    """
    hostSet = {h.lower() for h in hosts}
    out: Headers = []
    for name, value in headers:
        lower = name.lower()
        if lower in (b"location", b"content-location"):
            value = _mountURL(value, mount, hostSet)
        elif lower == b"refresh":
            value = _REFRESH_URL.sub(
                lambda m: m.group(1) + _mountURL(m.group(2), mount, hostSet), value
            )
        elif lower == b"set-cookie":
            value = _COOKIE_PATH.sub(
                lambda m: m.group(1) + _mountPath(m.group(2).strip(), mount), value
            )
        out.append((name, value))
    return out


def _mountPath(path: bytes, mount: bytes) -> bytes:
    """
    The absolute C{path} under C{mount}, unless it is there already.
    """
    if not path.startswith(b"/") or path.startswith(b"//"):
        return path
    if path == mount or path.startswith(mount + b"/"):
        return path
    return mount + path if path != b"/" else mount + b"/"


def _mountURL(url: bytes, mount: bytes, hosts: set[bytes]) -> bytes:
    """
    C{url} (an absolute path, or an absolute URL to one of C{hosts}) with
    its path under C{mount}; any other C{url} as it is.
    """
    if url.startswith(b"/"):
        return _mountPath(url, mount)
    try:
        parts = urlsplit(url.decode("latin-1"))
    except ValueError:
        return url
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return url
    hostname = (parts.hostname or "").encode("latin-1").lower()
    netloc = parts.netloc.encode("latin-1").lower()
    if hostname not in hosts and netloc not in hosts:
        return url
    path = parts.path.encode("latin-1") or b"/"
    rest = url[len(f"{parts.scheme}://{parts.netloc}") :]
    return (
        url[: len(url) - len(rest)] + _mountPath(path, mount) + rest[len(parts.path) :]
    )
