# -*- test-case-name: tests.test_config -*-
"""
The revproxy configuration: one TOML document, strictly validated into
immutable attrs objects.

L{parseConfig} needs no reactor and no sockets.  Endpoint strings are
parsed by Twisted against a L{MemoryReactor}, which at most reads Twisted's
plugin cache (for an unknown endpoint type) or an C{ssl:} endpoint's files.
It reads the pages the config serves (a C{respond}'s C{file},
C{error_pages}), so that a missing one is a config error at load and at
each reload rather than a surprise at request time.
It reports every problem of a document at once in one L{ConfigError}, each as
C{"key.path: problem"}, where the key path is spelled as in the file
(C{sites[2].upstreams[0]}).  Only L{loadConfig} and L{checkConfig} read the
config and certificate files.  L{routeWarnings} finds what is valid but
surely not meant (an unreachable route, a redirect to itself).

The attribute names of the config classes are the TOML keys, so code, error
messages and the file say the same thing.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import attrs
import idna
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.testing import MemoryReactor

from revproxy.formatting import shorten
from revproxy.hostnames import isWildcard
from revproxy.htpasswd import HtpasswdError, parseHtpasswd
from revproxy.placeholders import (
    PLACEHOLDERS,
    Template,
    parseTemplate,
    renderLocation,
)
from revproxy.private.twisted import tcpInterface, tcpPort, unixPath

_T = TypeVar("_T")

_DEFAULT_MAX_BODY_BYTES = 10485760
_DEFAULT_CONNECT_TIMEOUT_SECS = 5.0
_DEFAULT_RESPONSE_TIMEOUT_SECS = 60.0
_DEFAULT_QUEUE_TIMEOUT_SECS = 5.0
_DEFAULT_HEALTH_INTERVAL_SECS = 10.0
_DEFAULT_UPGRADE_PROTOCOLS = ("websocket",)
_DEFAULT_TUNNEL_IDLE_TIMEOUT_SECS = 3600.0
_DEFAULT_MAX_TUNNELS = 10000
_DEFAULT_TUNNEL_DRAIN_SECS = 30.0

_MAX_BODY_BYTES = 2**40
_MAX_TIMEOUT_SECS = 86400
_MAX_SHUTDOWN_TIMEOUT_SECS = 3600
#: The most worker processes C{[server] workers} may ask for (and the cap
#: of C{"auto"}).
MAX_WORKERS = 256
_MAX_REQUESTS_PER_SECOND = 1e6
_MAX_BURST = 10**7
_MAX_TUNNEL_IDLE_TIMEOUT_SECS = 7 * 86400
_MAX_TUNNELS = 10**7
_MAX_TUNNEL_DRAIN_SECS = 3600

_TLS_MODES = ("acme", "files", "none")
_CHALLENGES = ("http-01", "tls-alpn-01")
_KEY_TYPES = ("ec-p256", "rsa2048")
_LOG_FORMATS = ("json", "combined")
_TLS_VERSIONS = ("1.2", "1.3")
_MAX_HSTS_SECS = 2**31 - 1
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# The answers revproxy makes itself, which error_pages may replace.
_ERROR_PAGE_STATUSES = (401, 403, 413, 421, 429, 502, 503, 504)
# The most bytes of a respond file or an error page.
_MAX_PAGE_BYTES = 1048576
# Header fields that revproxy manages itself: hop-by-hop or framing fields,
# and Host (upstream_host's job), which no header rule may touch.
_MANAGED_HEADERS = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
)

# The keys of a site or route that say who may send it requests.
_ACCESS_KEYS = ("allow", "deny", "basic_auth", "forward_auth")
_TOP_KEYS = ("server", "acme", "cluster", "logging", "defaults", "sites")
_SERVER_KEYS = (
    "listen_http",
    "listen_https",
    "admin_socket_path",
    "ops_listen",
    "state_dir",
    "shutdown_timeout_secs",
    "workers",
    "trusted_proxies",
    "tls_min_version",
    "http2",
    "max_request_line_bytes",
    "max_header_bytes",
    "max_headers_total_bytes",
    "max_header_fields",
    "header_timeout_secs",
    "body_timeout_secs",
    "min_body_rate_bytes_per_sec",
    "keepalive_timeout_secs",
    "send_timeout_secs",
    "max_requests_per_connection",
    "handshake_timeout_secs",
    "lingering_close_secs",
    "max_tracked_clients",
    "rate_limit_ipv6_prefix",
    "max_connections",
    "upstream_max_connections",
    "upstream_max_queue",
)
_ACME_KEYS = (
    "email",
    "directory_url",
    "ca_file",
    "challenge",
    "renew_before_days",
    "key_type",
)
_CLUSTER_KEYS = (
    "redis_url",
    "redis_password_file",
    "redis_ca_file",
    "key_prefix",
    "node_name",
    "secret_file",
    "reload_channel",
)
_LOGGING_KEYS = ("access_log", "access_log_format")
_DEFAULTS_KEYS = (
    "max_body_bytes",
    "rate_limit",
    "connect_timeout_secs",
    "response_timeout_secs",
    "queue_timeout_secs",
    "upgrade_protocols",
    "tunnel_idle_timeout_secs",
    "max_tunnels",
    "tunnel_drain_secs",
    "error_pages",
)
_SITE_KEYS = (
    "name",
    "hosts",
    "upstreams",
    "tls",
    "cert_file",
    "key_file",
    "redirect_http",
    "hsts_max_age_secs",
    "strict_sni_host",
    "upstream_ca_file",
    "upstream_tls_verify",
    "health_check",
    "default",
    "routes",
    "redirect",
    "respond",
    "request_headers",
    "response_headers",
    "upstream_host",
    *_ACCESS_KEYS,
    *_DEFAULTS_KEYS,
)
_ROUTE_KEYS = (
    "path",
    "path_prefix",
    "methods",
    "upstreams",
    "strip_prefix",
    "upstream_host",
    "rewrite_redirects",
    "redirect",
    "respond",
    "request_headers",
    "response_headers",
    "max_body_bytes",
    "rate_limit",
    "connect_timeout_secs",
    "response_timeout_secs",
    *_ACCESS_KEYS,
)
_REDIRECT_KEYS = ("to", "status")
_RESPOND_KEYS = ("status", "body", "file", "content_type")
_HEADER_RULES_KEYS = ("set", "add", "remove")
_RATE_LIMIT_KEYS = ("requests_per_second", "burst", "dry_run")
_HEALTH_CHECK_KEYS = ("path", "interval_secs", "timeout_secs", "fails", "passes")
_BASIC_AUTH_KEYS = ("realm", "users_file", "pass_authorization", "user_header")
_FORWARD_AUTH_KEYS = ("url", "copy_headers", "timeout_secs")
# The most bytes of an htpasswd file.
_MAX_USERS_FILE_BYTES = 16 * 1048576
_MAX_FORWARD_AUTH_TIMEOUT_SECS = 300

# Where each key lives, to tell an operator who put a key under the wrong
# header (a common TOML slip: keys written below [[sites]] belong to the site).
_HOMES = (
    ("[server]", _SERVER_KEYS),
    ("[acme]", _ACME_KEYS),
    ("[cluster]", _CLUSTER_KEYS),
    ("[logging]", _LOGGING_KEYS),
    ("[defaults]", _DEFAULTS_KEYS),
    ("[[sites]]", _SITE_KEYS),
    ("[[sites.routes]]", _ROUTE_KEYS),
)

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SITE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A respond body may have lines.
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SYNTAX = re.compile(r"(?s)(.*) \((at line (\d+), column (\d+)|at end of document)\)")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# A basic_auth realm, sent in a quoted-string.
_REALM = re.compile(r"[ !#-\[\]-~]+")
# A cluster key_prefix: printable ASCII without spaces.
_KEY_PREFIX = re.compile(r"[!-~]{1,64}")
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_REDIS_SCHEMES = ("redis", "rediss")
_DEFAULT_REDIS_PORT = 6379
_MAX_REDIS_DB = 15
#: The fewest bytes of C{[cluster] secret_file}.
MIN_CLUSTER_SECRET_BYTES = 32
_MAX_CLUSTER_SECRET_BYTES = 65536
_MAX_REDIS_PASSWORD_BYTES = 4096
_MAKE_SECRET = (
    "make one with: head -c 32 /dev/urandom > /etc/revproxy/cluster.key; "
    "chmod 600 /etc/revproxy/cluster.key"
)
# An RFC 9110 token (section 5.6.2): what an Upgrade protocol name is.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ConfigError(Exception):
    """
    All problems found in one config document.

    @ivar errors: One C{"key.path: problem"} string per problem, in document
        order.
    """

    def __init__(self, errors: Sequence[str] | str) -> None:
        if isinstance(errors, str):
            errors = (errors,)
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


class ConfigFileError(ConfigError):
    """
    The config file could not be read at all (missing, unreadable, not
    UTF-8): one problem, about the file rather than a key.
    """


@attrs.frozen
class Upstream:
    """
    One upstream server of a site.

    @ivar url: The normalized URL, always with its port:
        C{"http://10.0.0.1:8000"}, C{"https://[::1]:443"}.
    @ivar scheme: C{"http"} or C{"https"}.
    @ivar host: Lowercase hostname (IDN as punycode) or IP address; an IPv6
        address has no brackets.
    @ivar port: The port, 80 or 443 by scheme when the URL names none.
    """

    url: str
    scheme: str
    host: str
    port: int


@attrs.frozen
class RateLimit:
    """
    A token bucket per site and client IP; C{RateLimit(0, 0)} means off.
    """

    requests_per_second: float
    burst: int
    #: Log would-be refusals instead of answering 429.
    dry_run: bool = False

    @property
    def enabled(self) -> bool:
        """
        Whether requests are limited at all.
        """
        return self.requests_per_second > 0 and self.burst > 0


_NO_RATE_LIMIT = RateLimit(0.0, 0)


@attrs.frozen
class HealthCheck:
    """
    An active health check: C{GET path} on every upstream each
    C{interval_secs}.
    """

    path: str
    interval_secs: float = _DEFAULT_HEALTH_INTERVAL_SECS
    #: How long one check may take before it counts as failed.
    timeout_secs: float = 2.0
    #: Consecutive failed checks that make a healthy upstream unhealthy.
    fails: int = 3
    #: Consecutive passed checks that make an unhealthy upstream healthy.
    passes: int = 2


@attrs.frozen
class HeaderRules:
    """
    What a site or route changes in the request it forwards
    (C{request_headers}) or the response it sends (C{response_headers}).

    @ivar set: Fields that replace any of the same name: each name as
        written (an RFC 9110 token) and its value template.
    @ivar add: Fields added beside any of the same name.
    @ivar remove: Lowercased names of the fields removed.

    No name appears twice, and none is one of L{_MANAGED_HEADERS}.
    """

    set: tuple[tuple[str, Template], ...] = ()
    add: tuple[tuple[str, Template], ...] = ()
    remove: tuple[str, ...] = ()


_NO_HEADER_RULES = HeaderRules()


@attrs.frozen
class Redirect:
    """
    A redirect: C{redirect = { to = "https://example.com{uri}", status = 301 }}.

    @ivar to: The C{Location}: an absolute http(s) URL or a path starting
        with C{/}, with placeholders.
    @ivar status: 301, 302, 303, 307 or 308.
    """

    to: Template
    status: int = 308


@attrs.frozen
class Respond:
    """
    A fixed answer: C{respond = { status = 503, body = "..." }} or
    C{respond = { status = 503, file = "/path" }}.

    @ivar status: 200 to 599; never a body with 204 or 304.
    @ivar body: The body template, or L{None} (a file's content, or an
        empty body).
    @ivar file: The file's path as resolved (relative to the config file),
        for messages; C{""} without one.
    @ivar content: The file's bytes, read at load and at each reload (at
        most 1 MiB).
    @ivar content_type: The C{Content-Type}; by default C{text/html;
        charset=utf-8} for a C{.html} or C{.htm} file, else C{text/plain;
        charset=utf-8}.
    """

    status: int
    body: Template | None = None
    file: str = ""
    content: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


@attrs.frozen
class BasicAuth:
    """
    C{basic_auth = { realm = "admin", users_file = "/etc/revproxy/htpasswd" }}:
    HTTP Basic authentication against an htpasswd file.

    @ivar realm: The C{realm} of the C{WWW-Authenticate} challenge:
        printable ASCII without C{"} or C{\\}.
    @ivar users_file: The htpasswd file's path as resolved (relative to the
        config file).
    @ivar users: Each C{(user, hash)} of that file, read at load and at
        each reload by L{parseConfig} (bcrypt or argon2 hashes only, see
        L{revproxy.htpasswd}); a changed file makes a changed site.
    @ivar pass_authorization: Whether the client's C{Authorization} is
        forwarded upstream (by default it is removed).
    @ivar user_header: The request field that carries the user name
        upstream, the client's own copies removed first; C{""}: none.
    """

    realm: str = "restricted"
    users_file: str = ""
    # Kept out of repr(): no hash in a log line or a traceback.
    users: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    pass_authorization: bool = False
    user_header: str = "X-Remote-User"


@attrs.frozen
class ForwardAuth:
    """
    C{forward_auth = { url = "http://127.0.0.1:9091/api/verify" }}: each
    request is first asked about to an auth service (Authelia, Authentik,
    oauth2-proxy), which lets it through with a 2xx.

    @ivar url: The URL as written.
    @ivar upstream: Where the auth service is: its scheme, host and port,
        as an upstream.
    @ivar path: The path and query of C{url}, which the C{GET} asks for:
        C{"/api/verify"}, C{"/"} when the URL has none.
    @ivar copy_headers: The fields of a 2xx answer copied into the
        request forwarded upstream (names as written, no two alike in any
        case); the client's own fields of those names are removed first.
    @ivar timeout_secs: How long the auth service may take to answer.
    """

    url: str
    upstream: Upstream
    path: str = "/"
    copy_headers: tuple[str, ...] = ()
    timeout_secs: float = 5.0


@attrs.frozen
class AccessRules:
    """
    Who may send requests to a site or route: C{allow} and C{deny} client
    networks, then C{basic_auth} or C{forward_auth}.

    @ivar allow: Client networks allowed.
    @ivar deny: Client networks denied.
    @ivar allow_first: Whether C{allow} was written before C{deny}: the
        first list that names a client decides (nginx); a client that
        neither names is denied when C{allow} is set, else allowed.
    @ivar basic_auth: Basic authentication, or L{None}.
    @ivar forward_auth: An auth service asked first, or L{None}; never both
        with C{basic_auth}.
    """

    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_first: bool = True
    basic_auth: BasicAuth | None = None
    forward_auth: ForwardAuth | None = None

    @property
    def enabled(self) -> bool:
        """
        Whether these rules may refuse a request at all.
        """
        return bool(self.allow or self.deny or self.basic_auth or self.forward_auth)


_NO_ACCESS = AccessRules()


@attrs.frozen
class RouteConfig:
    """
    One C{[[sites.routes]]} entry: one matcher (C{path} or C{path_prefix},
    maybe C{methods}), one action (C{upstreams}, C{redirect} or C{respond})
    and its modifiers.

    @ivar index: Its position in the site's routes, for messages.
    @ivar path: The exact path it matches, or L{None}.
    @ivar path_prefix: The path prefix it matches, or L{None}.
    @ivar methods: Uppercased method names it matches; C{()} matches any.
    @ivar strip_prefix: Whether C{path_prefix} is taken off the path sent
        upstream.
    @ivar upstream_host: The C{Host} (hostname, maybe C{:port}) sent
        upstream and the TLS server name of an https upstream; C{""}: as
        the client sent it.
    @ivar rewrite_redirects: Whether the upstream's redirects and cookie
        paths are put back under the stripped prefix.
    @ivar request_headers: Added to the site's rules.
    @ivar response_headers: Added to the site's rules.
    @ivar access: Who may send requests to this route: its own rules when
        it sets any of C{allow}, C{deny}, C{basic_auth} or C{forward_auth}
        (they replace the site's whole), else the site's.

    The limits, L{None} where the site's apply, are those of
    L{SiteConfig}.
    """

    index: int
    path: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    strip_prefix: bool = False
    upstream_host: str = ""
    rewrite_redirects: bool = False
    redirect: Redirect | None = None
    respond: Respond | None = None
    request_headers: HeaderRules = _NO_HEADER_RULES
    response_headers: HeaderRules = _NO_HEADER_RULES
    max_body_bytes: int | None = None
    rate_limit: RateLimit | None = None
    connect_timeout_secs: float | None = None
    response_timeout_secs: float | None = None
    access: AccessRules = _NO_ACCESS


@attrs.frozen
class ServerConfig:
    """
    The C{[server]} table: listeners and process settings (static: a change
    needs a restart).
    """

    listen_http: tuple[str, ...] = ("tcp:80",)
    listen_https: tuple[str, ...] = ("tcp:443",)
    admin_socket_path: str = "/run/revproxy/admin.sock"
    ops_listen: str = "tcp:9901:interface=127.0.0.1"
    state_dir: str = "/var/lib/revproxy"
    shutdown_timeout_secs: float = 30.0
    #: How many worker processes run the request path: the count, with
    #: C{"auto"} already resolved to the usable cores (L{usableCores}).
    workers: int = 1
    #: Whether C{workers} was written as C{"auto"}, for messages only
    #: (reloads compare the resolved count).
    workers_auto: bool = False
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls_min_version: str = "1.2"
    http2: bool = True
    #: 414 beyond this request line (method, target, version).
    max_request_line_bytes: int = 8192
    #: 431 beyond this one header field (name, colon, value).
    max_header_bytes: int = 8192
    #: 431 beyond this for all header fields together.
    max_headers_total_bytes: int = 32768
    #: 431 beyond this many header fields.
    max_header_fields: int = 100
    #: 408 when a request head is not complete this long after the
    #: connection opened or the previous response ended.
    header_timeout_secs: float = 10.0
    #: 408 when no byte of a request body arrives for this long.
    body_timeout_secs: float = 60.0
    #: 408 when a body arrives slower than this on average, once
    #: body_timeout_secs have passed since it began (0: no minimum).
    min_body_rate_bytes_per_sec: int = 500
    #: An idle keep-alive connection is closed after this long.
    keepalive_timeout_secs: float = 60.0
    #: A client that takes no byte of a response for this long is cut
    #: (nginx's send_timeout), so a slow reader cannot hold an upstream.
    send_timeout_secs: float = 60.0
    #: A connection is closed after this many requests (0: no cap).
    max_requests_per_connection: int = 1000
    #: A TLS handshake not finished this long after the accept is dropped.
    handshake_timeout_secs: float = 10.0
    #: After an early refusal, how long what the client still sends is
    #: read and dropped, so that it reads the answer instead of a reset.
    lingering_close_secs: float = 5.0
    #: At most this many rate-limit buckets are kept (least recently used
    #: evicted beyond).
    max_tracked_clients: int = 100000
    #: IPv6 clients share a rate-limit bucket per prefix of this length.
    rate_limit_ipv6_prefix: int = 64
    #: At this many open client connections the listeners stop accepting
    #: until one closes; L{None}: 80 % of the descriptor limit at start.
    max_connections: int | None = None
    #: The most connections open to one upstream (busy, idle or opening).
    upstream_max_connections: int = 512
    #: The most requests waiting in line for a connection to one upstream
    #: when it has upstream_max_connections; beyond, 503 at once.
    upstream_max_queue: int = 1024


@attrs.frozen
class AcmeConfig:
    """
    The C{[acme]} table (static).
    """

    email: str = ""
    directory_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    ca_file: str = ""
    challenge: str = "http-01"
    renew_before_days: float | None = None
    key_type: str = "ec-p256"


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """
    The C{[cluster]} table (static): the Redis server that a fleet of
    revproxy nodes shares (issue #19).  Nothing acts on it yet.

    @ivar redis_url: The URL as written; C{redis_host}, C{redis_port},
        C{redis_db} and C{redis_tls} are its parts (the host without
        brackets, C{redis_tls} for C{rediss://}).
    @ivar redis_password: The content of C{redis_password_file} without its
        trailing newline, C{""} when there is none; never in a repr.
    @ivar secret: The bytes of C{secret_file} (at least
        L{MIN_CLUSTER_SECRET_BYTES}); never in a repr.
    @ivar secret_file_mode: The permission bits of C{secret_file} when it
        was read, for the warning when group or others may read it; not
        compared by reloads.
    """

    # Keyword-only, in the order of the keys: a reload lists the changed
    # ones in this order.
    redis_url: str
    redis_host: str
    redis_port: int = _DEFAULT_REDIS_PORT
    redis_db: int = 0
    redis_tls: bool = False
    redis_password_file: str = ""
    redis_password: str = attrs.field(default="", repr=False)
    redis_ca_file: str = ""
    key_prefix: str = "revproxy:"
    node_name: str = attrs.field(factory=socket.gethostname)
    secret_file: str
    secret: bytes = attrs.field(repr=False)
    secret_file_mode: int = attrs.field(default=0o600, eq=False, repr=False)
    #: The permission bits of C{redis_password_file} when it was read (for
    #: the warning when group or others may read it).
    redis_password_file_mode: int = attrs.field(default=0o600, eq=False, repr=False)
    reload_channel: bool = False


@attrs.frozen
class LoggingConfig:
    """
    The C{[logging]} table (dynamic).

    @ivar access_log: A file path, C{"-"} for standard output, or C{""} for
        no access log.
    """

    access_log: str = "/var/log/revproxy/access.log"
    access_log_format: str = "json"


@attrs.frozen
class Defaults:
    """
    The C{[defaults]} table (dynamic): limits every site inherits unless it
    sets its own.

    @ivar upgrade_protocols: The C{Upgrade} protocol names (RFC 9110 tokens,
        lowercased, without a version) that a site tunnels to its upstream,
        WebSocket and others; C{()} tunnels none.  Never C{"h2c"}.
    @ivar tunnel_idle_timeout_secs: A tunnel that carries no byte either way
        for this long is closed.
    @ivar max_tunnels: The most tunnels open at once per site; an upgrade
        beyond is answered 503 (0: every upgrade is).
    @ivar tunnel_drain_secs: How long a tunnel whose site or upstream a
        reload removed may go on before it is closed.
    @ivar error_pages: The pages of the answers revproxy makes itself
        (401, 403, 413, 421, 429, 502, 503, 504), each status with its file's bytes,
        read at load and at each reload; sorted by status.
    @ivar error_page_files: The same statuses with their files' paths.
    """

    max_body_bytes: int = _DEFAULT_MAX_BODY_BYTES
    rate_limit: RateLimit = _NO_RATE_LIMIT
    connect_timeout_secs: float = _DEFAULT_CONNECT_TIMEOUT_SECS
    response_timeout_secs: float = _DEFAULT_RESPONSE_TIMEOUT_SECS
    queue_timeout_secs: float = _DEFAULT_QUEUE_TIMEOUT_SECS
    upgrade_protocols: tuple[str, ...] = _DEFAULT_UPGRADE_PROTOCOLS
    tunnel_idle_timeout_secs: float = _DEFAULT_TUNNEL_IDLE_TIMEOUT_SECS
    max_tunnels: int = _DEFAULT_MAX_TUNNELS
    tunnel_drain_secs: float = _DEFAULT_TUNNEL_DRAIN_SECS
    error_pages: tuple[tuple[int, bytes], ...] = ()
    error_page_files: tuple[tuple[int, str], ...] = ()


@attrs.frozen
class SiteConfig:
    """
    One C{[[sites]]} entry (dynamic), with its limits resolved against
    C{[defaults]}.

    @ivar hosts: Normalized names: lowercase, IDN as punycode, no trailing
        dot, IPv6 without brackets; C{"*.example.com"} wildcards kept.
    @ivar default: Whether this site answers requests whose Host matches no
        site.
    @ivar strict_sni_host: Whether an HTTPS request is answered 421 when its
        connection's SNI name belongs to another site (always false without
        TLS).
    @ivar upstreams: May be empty when C{redirect} or C{respond} is set, or
        when a route with C{path_prefix = "/"} and no C{methods} catches
        every request.
    @ivar routes: Matched before the site's own answer: the exact C{path},
        else the longest C{path_prefix}, the first written among equals.
    @ivar redirect: The site's own answer instead of C{upstreams}, or
        L{None}.
    @ivar respond: The site's own answer instead of C{upstreams}, or
        L{None}.
    @ivar request_headers: Applied to every request the site forwards.
    @ivar response_headers: Applied to every response of the site.
    @ivar upstream_host: The C{Host} sent to the site's own upstreams (see
        L{RouteConfig.upstream_host}).
    @ivar access: Who may send requests to the site (a route may have its
        own, see L{RouteConfig.access}).

    The limits, from C{max_body_bytes} on, are those of L{Defaults}.
    """

    name: str
    hosts: tuple[str, ...]
    upstreams: tuple[Upstream, ...]
    tls: str = "none"
    cert_file: str = ""
    key_file: str = ""
    redirect_http: bool = False
    hsts_max_age_secs: int = 0
    # True with TLS, false without, unless given.
    strict_sni_host: bool = attrs.field(
        default=attrs.Factory(lambda self: self.tls != "none", takes_self=True)
    )
    upstream_ca_file: str = ""
    upstream_tls_verify: bool = True
    health_check: HealthCheck | None = None
    default: bool = False
    max_body_bytes: int = _DEFAULT_MAX_BODY_BYTES
    rate_limit: RateLimit = _NO_RATE_LIMIT
    connect_timeout_secs: float = _DEFAULT_CONNECT_TIMEOUT_SECS
    response_timeout_secs: float = _DEFAULT_RESPONSE_TIMEOUT_SECS
    queue_timeout_secs: float = _DEFAULT_QUEUE_TIMEOUT_SECS
    upgrade_protocols: tuple[str, ...] = _DEFAULT_UPGRADE_PROTOCOLS
    tunnel_idle_timeout_secs: float = _DEFAULT_TUNNEL_IDLE_TIMEOUT_SECS
    max_tunnels: int = _DEFAULT_MAX_TUNNELS
    tunnel_drain_secs: float = _DEFAULT_TUNNEL_DRAIN_SECS
    error_pages: tuple[tuple[int, bytes], ...] = ()
    error_page_files: tuple[tuple[int, str], ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    redirect: Redirect | None = None
    respond: Respond | None = None
    request_headers: HeaderRules = _NO_HEADER_RULES
    response_headers: HeaderRules = _NO_HEADER_RULES
    upstream_host: str = ""
    access: AccessRules = _NO_ACCESS


def allUpstreams(site: SiteConfig) -> tuple[Upstream, ...]:
    """
    Every upstream of C{site}: its own, then its routes', each once.
    """
    seen = dict.fromkeys(site.upstreams)
    for route in site.routes:
        seen.update(dict.fromkeys(route.upstreams))
    return tuple(seen)


@attrs.frozen
class Config:
    """
    A whole, valid configuration.

    @ivar path: The file it was loaded from (L{loadConfig}), else C{""}.
    @ivar source_sha256: Hex SHA-256 of that file's bytes, else C{""}.
    @ivar source: That file's bytes, else C{b""} (worker processes are sent
        exactly the bytes the supervisor validated).
    @ivar cluster: The C{[cluster]} table, or L{None} when the file has
        none (one node on its own, as before).
    """

    server: ServerConfig
    acme: AcmeConfig
    logging: LoggingConfig
    defaults: Defaults
    sites: tuple[SiteConfig, ...]
    cluster: ClusterConfig | None = None
    path: str = ""
    source_sha256: str = ""
    source: bytes = attrs.field(default=b"", eq=False, repr=False)


def parseConfig(text: str, *, baseDir: str | None = None) -> Config:
    """
    Parse and validate a TOML config document.

    @param baseDir: The directory that relative C{cert_file}, C{key_file} and
        C{ca_file} paths are relative to; when L{None}, they are kept as
        written.
    @raise ConfigError: listing every problem found.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntaxError(str(e))) from None
    except ValueError as e:
        # tomllib lets int()'s digit limit escape as a plain ValueError.
        raise ConfigError(f"TOML error: {e}") from None
    except RecursionError:
        raise ConfigError("TOML error: the document is nested too deeply") from None
    return _Parser(baseDir).parse(document)


def loadConfig(path: str) -> Config:
    """
    Read, parse and validate the config file at C{path}.

    Relative file paths in it are relative to the file's directory.  The
    result records C{path} and the SHA-256 of the file's bytes.

    @raise ConfigError: when the file cannot be read or is invalid.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise ConfigFileError(
            f"{path}: cannot read the config file: {_reason(e)}"
        ) from None
    return configFromBytes(data, path)


def configFromBytes(data: bytes, path: str) -> Config:
    """
    Parse and validate C{data}, the bytes of the config file at C{path}
    (relative file paths in it are relative to that file's directory).

    @raise ConfigError: when the bytes are not UTF-8 or the config is
        invalid.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(
            f"{path}: the config file is not UTF-8 text (bad byte at offset {e.start})"
        ) from None
    config = parseConfig(
        text.removeprefix("\ufeff"),
        baseDir=os.path.dirname(os.path.abspath(path)),
    )
    return attrs.evolve(
        config,
        path=path,
        source_sha256=hashlib.sha256(data).hexdigest(),
        source=data,
    )


def checkConfig(config: Config) -> list[str]:
    """
    The extra checks of C{--check}, beyond L{parseConfig}: every certificate,
    key and CA file the config names is a readable file.

    @return: One C{"key.path: problem"} per problem; empty when all is well.
    """
    problems: list[str] = []

    def checkReadable(keyPath: str, filename: str) -> None:
        try:
            if not stat.S_ISREG(os.stat(filename).st_mode):
                problems.append(
                    f"{keyPath}: {_quote(filename, None)} is not a regular file"
                )
                return
            with open(filename, "rb") as f:
                f.read(1)
        except (OSError, ValueError) as e:
            problems.append(
                f"{keyPath}: cannot read {_quote(filename, None)}: {_reason(e)}"
            )

    if config.acme.ca_file:
        checkReadable("acme.ca_file", config.acme.ca_file)
    if config.cluster is not None and config.cluster.redis_ca_file:
        checkReadable("cluster.redis_ca_file", config.cluster.redis_ca_file)
    for index, site in enumerate(config.sites):
        if site.cert_file:
            checkReadable(f"sites[{index}].cert_file", site.cert_file)
        if site.key_file:
            checkReadable(f"sites[{index}].key_file", site.key_file)
        if site.upstream_ca_file:
            checkReadable(f"sites[{index}].upstream_ca_file", site.upstream_ca_file)
    return problems


def quickConfig(listen: str, to: str) -> Config:
    """
    The config of C{twistd revproxy --listen ENDPOINT --to URL}: one listener,
    one default site forwarding everything to one upstream, no HTTPS, no
    admin socket, no ops listener, access log on standard output.

    @raise ConfigError: naming C{--listen} or C{--to}.
    """
    errors: list[str] = []
    _checkEndpoint(errors, "--listen", listen)
    upstream: Upstream | None = None
    try:
        upstream = _parseUpstream(to)
    except ValueError as e:
        errors.append(f"--to: {e}")
    if errors or upstream is None:
        raise ConfigError(errors)
    return Config(
        server=ServerConfig(
            listen_http=(listen,),
            listen_https=(),
            admin_socket_path="",
            ops_listen="",
        ),
        acme=AcmeConfig(),
        logging=LoggingConfig(access_log="-"),
        defaults=Defaults(),
        sites=(
            SiteConfig(name="default", hosts=(), upstreams=(upstream,), default=True),
        ),
    )


def usableCores() -> int:
    """
    What C{workers = "auto"} means: the cores this process may run on
    (C{os.sched_getaffinity}, or C{os.cpu_count} where that does not
    exist), at most L{MAX_WORKERS}.
    """
    getAffinity = getattr(os, "sched_getaffinity", None)
    count = len(getAffinity(0)) if getAffinity is not None else os.cpu_count() or 1
    return max(1, min(count, MAX_WORKERS))


def endpointPort(description: str) -> int | None:
    """
    The port of a valid C{tcp:} or C{tcp6:} endpoint description, else
    L{None}.
    """
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception:
        return None
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        port = tcpPort(endpoint)
        return port if isinstance(port, int) else None
    return None


def _syntaxError(message: str) -> str:
    """
    Present a C{tomllib} error, which ends in C{"(at line X, column Y)"}.
    """
    match = _SYNTAX.fullmatch(message)
    if match is None:
        return f"TOML syntax error: {message}"
    if match.group(3) is None:
        return f"TOML syntax error at end of document: {match.group(1)}"
    return (
        f"TOML syntax error at line {match.group(3)}, "
        f"column {match.group(4)}: {match.group(1)}"
    )


def _reason(e: BaseException) -> str:
    """
    The human part of an exception: C{strerror} for an C{OSError}.
    """
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _quote(text: str, limit: int | None = 80) -> str:
    """
    Quote a value for an error message, shortening it beyond C{limit}
    characters.
    """
    return json.dumps(shorten(text, limit), ensure_ascii=False)


def _formatNumber(value: float) -> str:
    """
    Write a number as TOML would: C{1000000} rather than C{1000000.0}, C{inf},
    C{nan}.
    """
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    text = str(value)
    return text if len(text) <= 40 else text[:20] + "..." + text[-5:]


def _describe(value: object) -> str:
    """
    Name a TOML value's type, and show it when short: C{string "x"}.
    """
    if isinstance(value, bool):
        return "boolean " + ("true" if value else "false")
    if isinstance(value, int):
        return "integer " + _formatNumber(value)
    if isinstance(value, float):
        return "float " + _formatNumber(value)
    if isinstance(value, str):
        return "string " + _quote(value)
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime):
        return "datetime " + value.isoformat()
    if isinstance(value, date | time):
        return f"{type(value).__name__} {value.isoformat()}"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    """
    The key path of C{key} inside C{path}, quoting a key that is not bare.
    """
    if not _BARE_KEY.fullmatch(key):
        key = json.dumps(key)
    return f"{path}.{key}" if path else key


def _unknownKey(key: str, known: Sequence[str]) -> str:
    """
    The problem of an unknown key, with the closest known key when there is
    one, or the table where the key belongs.
    """
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    homes = [name for name, keys in _HOMES if key in keys and keys is not known]
    if homes:
        return f"unknown key (it belongs in {' or '.join(homes)})"
    return "unknown key"


def _rangeProblem(
    value: float,
    low: float,
    high: float,
    *,
    lowOpen: bool = False,
    highOpen: bool = False,
) -> str | None:
    """
    Say what is wrong when C{value} is out of its range, else L{None}.
    """
    aboveLow = value > low if lowOpen else value >= low
    belowHigh = value < high if highOpen else value <= high
    if aboveLow and belowHigh:
        return None
    lowText = ("greater than " if lowOpen else "at least ") + _formatNumber(low)
    highText = ("less than " if highOpen else "at most ") + _formatNumber(high)
    if not lowOpen and not highOpen:
        rule = f"between {_formatNumber(low)} and {_formatNumber(high)}"
    else:
        rule = f"{lowText} and {highText}"
    return f"must be {rule}, got {_formatNumber(value)}"


def _asString(errors: list[str], path: str, value: object) -> str | None:
    """
    Check that C{value} is a string without control characters.
    """
    if not isinstance(value, str):
        errors.append(f"{path}: expected a string, got {_describe(value)}")
        return None
    if _CONTROL.search(value):
        errors.append(f"{path}: {_quote(value)} contains a control character")
        return None
    return value


def _asBoolean(errors: list[str], path: str, value: object) -> bool | None:
    """
    Check that C{value} is C{true} or C{false}.
    """
    if not isinstance(value, bool):
        errors.append(f"{path}: expected true or false, got {_describe(value)}")
        return None
    return value


def _asNumber(
    errors: list[str],
    path: str,
    value: object,
    low: float,
    high: float,
    *,
    lowOpen: bool = False,
    highOpen: bool = False,
) -> float | None:
    """
    Check that C{value} is a finite integer or float inside its range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(f"{path}: expected a number, got {_describe(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{path}: expected a finite number, got {_describe(value)}")
        return None
    # Compare before float(): a huge TOML integer would overflow it.
    problem = _rangeProblem(value, low, high, lowOpen=lowOpen, highOpen=highOpen)
    if problem is not None:
        errors.append(f"{path}: {problem}")
        return None
    return float(value)


def _asInteger(
    errors: list[str], path: str, value: object, low: int, high: int
) -> int | None:
    """
    Check that C{value} is an integer (not a float) inside its range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{path}: expected an integer, got {_describe(value)}")
        return None
    problem = _rangeProblem(value, low, high)
    if problem is not None:
        errors.append(f"{path}: {problem}")
        return None
    return value


def _asChoice(
    errors: list[str], path: str, value: object, choices: Sequence[str]
) -> str | None:
    """
    Check that C{value} is one of C{choices}.
    """
    text = _asString(errors, path, value)
    if text is None:
        return None
    if text not in choices:
        allowed = ", ".join(f'"{choice}"' for choice in choices)
        errors.append(f"{path}: {_quote(text)} is not one of {allowed}")
        return None
    return text


def _asList(errors: list[str], path: str, value: object) -> list[object] | None:
    """
    Check that C{value} is an array.
    """
    if not isinstance(value, list):
        errors.append(f"{path}: expected an array, got {_describe(value)}")
        return None
    return value


def _asStringList(
    errors: list[str], path: str, value: object
) -> list[str | None] | None:
    """
    Check that C{value} is an array of strings.

    @return: L{None} if it is not an array, else its items, each L{None} where
        it is not a string, so that the others can still be checked.
    """
    items = _asList(errors, path, value)
    if items is None:
        return None
    return [_asString(errors, f"{path}[{i}]", item) for i, item in enumerate(items)]


class _Table:
    """
    One TOML table being read: reports its unknown keys at once, then hands
    out checked values, recording a problem for each bad one.

    Each getter returns the table's value, C{default} when the key is absent,
    or L{None} when the value is wrong (and the problem is recorded).
    """

    def __init__(
        self,
        errors: list[str],
        path: str,
        value: Mapping[str, object],
        known: Sequence[str],
    ) -> None:
        self.errors = errors
        self.path = path
        self._value = value
        for key in value:
            if key not in known:
                errors.append(f"{_join(path, key)}: {_unknownKey(key, known)}")

    def keyPath(self, key: str) -> str:
        """
        The key path of C{key} in this table.
        """
        return _join(self.path, key)

    def error(self, key: str, problem: str) -> None:
        """
        Record a problem with C{key}.
        """
        self.errors.append(f"{self.keyPath(key)}: {problem}")

    def has(self, key: str) -> bool:
        """
        Whether C{key} is set in this table.
        """
        return key in self._value

    def get(self, key: str) -> object:
        """
        The raw value of a key that L{has}.
        """
        return self._value[key]

    def keys(self) -> list[str]:
        """
        The keys of this table, in the order they are written.
        """
        return list(self._value)

    def string(self, key: str, default: _T) -> str | _T | None:
        """
        A string.
        """
        if key not in self._value:
            return default
        return _asString(self.errors, self.keyPath(key), self._value[key])

    def boolean(self, key: str, default: _T) -> bool | _T | None:
        """
        A boolean.
        """
        if key not in self._value:
            return default
        return _asBoolean(self.errors, self.keyPath(key), self._value[key])

    def choice(self, key: str, default: _T, choices: Sequence[str]) -> str | _T | None:
        """
        One of C{choices}.
        """
        if key not in self._value:
            return default
        return _asChoice(self.errors, self.keyPath(key), self._value[key], choices)

    def number(
        self,
        key: str,
        default: _T,
        low: float,
        high: float,
        *,
        lowOpen: bool = False,
        highOpen: bool = False,
    ) -> float | _T | None:
        """
        A finite number in a range.
        """
        if key not in self._value:
            return default
        return _asNumber(
            self.errors,
            self.keyPath(key),
            self._value[key],
            low,
            high,
            lowOpen=lowOpen,
            highOpen=highOpen,
        )

    def integer(self, key: str, default: _T, low: int, high: int) -> int | _T | None:
        """
        An integer in a range.
        """
        if key not in self._value:
            return default
        return _asInteger(self.errors, self.keyPath(key), self._value[key], low, high)

    def table(self, key: str, known: Sequence[str]) -> _Table | None:
        """
        A sub-table (C{[server]}, or an inline C{{ ... }}); L{None} when it is
        absent or not a table.
        """
        if key not in self._value:
            return None
        value = self._value[key]
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_describe(value)}")
            return None
        return _Table(self.errors, self.keyPath(key), value, known)


def _or(value: _T | None, fallback: _T) -> _T:
    """
    C{value}, or C{fallback} where it was invalid: only used to finish
    building objects that are thrown away because errors were recorded.
    """
    return fallback if value is None else value


def _endpointKey(endpoint: object) -> tuple[object, ...] | None:
    """
    What two endpoints that cannot both listen share: port and interface, or
    a UNIX socket path; L{None} for an ephemeral port or another kind.
    """
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        port = tcpPort(endpoint)
        interface = tcpInterface(endpoint)
        if not interface:
            interface = "::" if isinstance(endpoint, TCP6ServerEndpoint) else "0.0.0.0"
        try:
            interface = str(ipaddress.ip_address(interface))
        except ValueError:
            pass
        if port == 0:
            return None
        return ("tcp", port, interface)
    if isinstance(endpoint, UNIXServerEndpoint):
        return ("unix", unixPath(endpoint))
    return None


def _checkEndpoint(
    errors: list[str], path: str, description: str, *, plainTCP: bool = False
) -> tuple[object, ...] | None:
    """
    Check a Twisted server endpoint string by parsing it.

    @param plainTCP: Whether only C{tcp:} and C{tcp6:} are allowed, for
        listeners that revproxy wraps in TLS itself.
    @return: The endpoint's L{_endpointKey}, or L{None}.
    """
    if plainTCP and description.split(":", 1)[0] not in ("tcp", "tcp6"):
        errors.append(
            f"{path}: {_quote(description)} must be a plain tcp: or tcp6: endpoint "
            "(revproxy adds TLS itself)"
        )
        return None
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception as e:
        errors.append(f"{path}: invalid endpoint {_quote(description)}: {_reason(e)}")
        return None
    port = tcpPort(endpoint, 0)
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint) and not (
        isinstance(port, int) and 0 <= port <= 65535
    ):
        errors.append(
            f"{path}: invalid endpoint {_quote(description)}: "
            "the port must be between 0 and 65535"
        )
        return None
    return _endpointKey(endpoint)


def _normalizeHost(name: str, *, allowWildcard: bool) -> str:
    """
    Normalize a hostname or IP address as revproxy matches it.

    @return: The lowercase A-label form without a trailing dot (C{*.} kept in
        front of a wildcard), or the IP address without brackets.
    @raise ValueError: saying why C{name} is not a valid host.
    """
    if name.startswith("[") and name.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(name[1:-1]))
        except ValueError:
            raise ValueError(f"{_quote(name)} is not a valid IPv6 address") from None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if "://" in name or "/" in name:
        raise ValueError(f"{_quote(name)} is not a hostname (give a name, not a URL)")
    if ":" in name:
        raise ValueError(
            f"{_quote(name)} is not a valid hostname (hosts are matched without a port)"
        )
    if name == "*":
        raise ValueError(
            '"*" is not a valid host; to catch every other host, set default = true'
        )
    wildcard = isWildcard(name)
    rest = name[2:] if wildcard else name
    if wildcard and not allowWildcard:
        raise ValueError(f"{_quote(name)}: a wildcard is not allowed here")
    if "*" in rest:
        raise ValueError(
            f"{_quote(name)} is not a valid hostname: a wildcard is only allowed "
            'as the whole first label, as in "*.example.com"'
        )
    if rest.endswith("."):
        rest = rest[:-1]
    if not rest:
        raise ValueError(f"{_quote(name)} is not a valid hostname: it is empty")
    try:
        encoded = idna.encode(rest, uts46=True).decode("ascii")
    except (UnicodeError, ValueError) as e:
        raise ValueError(f"{_quote(name)} is not a valid hostname: {e}") from None
    labels = encoded.split(".")
    if len(encoded) > 253:
        raise ValueError(
            f"{_quote(name)} is not a valid hostname: longer than 253 characters"
        )
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{_quote(name)} is not a valid hostname: each label must be 1-63 "
                "letters, digits or hyphens, not starting or ending with a hyphen"
            )
    if labels[-1].isdigit():
        raise ValueError(
            f"{_quote(name)} is neither a valid IP address nor a hostname "
            "(its last label is all digits)"
        )
    return ("*." if wildcard else "") + encoded


def _parseUpstream(url: str) -> Upstream:
    """
    Parse an upstream URL: C{http://} or C{https://}, a host, maybe a port,
    and nothing else.

    @raise ValueError: saying what is wrong.
    """
    quoted = _quote(url)
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        raise ValueError(f"{quoted} is not an http(s) URL: it contains whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{quoted} is not an http(s) URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not url.lower().startswith(scheme + "://"):
        raise ValueError(f"{quoted} is not an http(s) URL")
    if "@" in parts.netloc:
        raise ValueError(f"{quoted}: an upstream URL must not contain user info")
    if not parts.hostname:
        raise ValueError(f"{quoted}: the URL has no host")
    if parts.path not in ("", "/"):
        raise ValueError(
            f"{quoted}: an upstream URL must not have a path "
            f"(got {_quote(parts.path)}); the request path is forwarded as it is"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{quoted}: an upstream URL must not have a query or fragment")
    if port is None:
        port = 443 if scheme == "https" else 80
    elif not 1 <= port <= 65535:
        raise ValueError(f"{quoted}: the port must be between 1 and 65535")
    host = _normalizeHost(parts.hostname, allowWildcard=False)
    netloc = f"[{host}]" if ":" in host else host
    return Upstream(
        url=f"{scheme}://{netloc}:{port}", scheme=scheme, host=host, port=port
    )


def _parseServiceURL(url: str) -> tuple[Upstream, str]:
    """
    Parse the URL of an auth service: an upstream URL (L{_parseUpstream})
    that may have a path and a query.

    @return: The upstream, and the path and query (C{"/"} when there is no
        path).
    @raise ValueError: saying what is wrong.
    """
    quoted = _quote(url)
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        raise ValueError(f"{quoted} is not an http(s) URL: it contains whitespace")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"{quoted} is not an http(s) URL: {e}") from None
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{quoted}: the URL must not have a fragment")
    upstream = _parseUpstream(f"{parts.scheme}://{parts.netloc}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return upstream, path


def _directoryProblem(url: str) -> str | None:
    """
    Say what is wrong with an ACME directory URL, else L{None}.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        host = None
    else:
        if parts.scheme == "https" and host:
            return None
        if parts.scheme == "http" and host in _LOOPBACK_NAMES:
            return None
    return (
        f"{_quote(url)} must be an https:// URL "
        "(http:// only for 127.0.0.1 or localhost)"
    )


def _parseRedisURL(url: str) -> tuple[str, int, int, bool]:
    """
    Parse a Redis URL: C{redis://host:port/db} or C{rediss://} (TLS), the
    port and the database optional, no user or password, no query.

    @return: The host (without brackets), port, database and whether it is
        TLS.
    @raise ValueError: saying what is wrong.
    """
    # Checked first, and the URL not repeated: the error must not show the
    # password to whoever reads the log.
    authority = url.partition("://")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    if "@" in authority:
        raise ValueError(
            "the URL must not hold a user or password; put the password in a "
            "file named by redis_password_file instead, so that it is not in "
            "the config file, which is often world-readable"
        )
    quoted = _quote(url)
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        raise ValueError(f"{quoted} is not a Redis URL: it contains whitespace")
    kind = "is not a redis:// or rediss:// URL"
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"{quoted} {kind}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _REDIS_SCHEMES or not url.lower().startswith(scheme + "://"):
        raise ValueError(f"{quoted} {kind}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{quoted}: the URL must not have a query or fragment")
    if parts.netloc.count(":") > 1 and not parts.netloc.startswith("["):
        raise ValueError(f"{quoted}: an IPv6 address must be in brackets")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f"{quoted}: the port must be a number between 1 and 65535"
        ) from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise ValueError(f"{quoted}: the port is empty")
        port = _DEFAULT_REDIS_PORT
    elif not 1 <= port <= 65535:
        raise ValueError(f"{quoted}: the port must be between 1 and 65535")
    if not parts.hostname:
        raise ValueError(f"{quoted}: the URL has no host")
    hostname = parts.hostname
    if parts.netloc.startswith("["):
        hostname = f"[{hostname}]"
    try:
        host = _normalizeHost(hostname, allowWildcard=False)
    except ValueError as e:
        raise ValueError(f"{quoted}: {e}") from None
    db = 0
    if parts.path not in ("", "/"):
        number = parts.path[1:]
        if not (number.isascii() and number.isdigit()) or not (
            0 <= int(number) <= _MAX_REDIS_DB
        ):
            raise ValueError(
                f"{quoted}: the path must be a database number between 0 and "
                f"{_MAX_REDIS_DB} (got {_quote(parts.path)})"
            )
        db = int(number)
    return host, port, db, scheme == "rediss"


@attrs.frozen
class _ParsedSite:
    """
    A site as read, with what the checks across sites need.
    """

    config: SiteConfig
    name: str | None
    hosts: tuple[tuple[int, str], ...]
    default: bool
    usesAcme: bool


class _Parser:
    """
    Turn a decoded TOML document into a L{Config}, collecting every problem.
    """

    def __init__(self, baseDir: str | None) -> None:
        self._baseDir = baseDir
        self._errors: list[str] = []

    def parse(self, document: Mapping[str, object]) -> Config:
        """
        Validate the whole document.

        @raise ConfigError: when anything is wrong.
        """
        top = _Table(self._errors, "", document, _TOP_KEYS)
        server, httpsListeners = self._server(top.table("server", _SERVER_KEYS))
        acme, emailMissing = self._acme(top.table("acme", _ACME_KEYS))
        cluster = self._cluster(top.table("cluster", _CLUSTER_KEYS))
        logging = self._logging(top.table("logging", _LOGGING_KEYS))
        defaults = self._defaults(top.table("defaults", _DEFAULTS_KEYS))
        sites = self._sites(top, server, httpsListeners, defaults)

        if any(site.usesAcme for site in sites):
            if emailMissing:
                self._errors.append(
                    'acme.email: required when a site uses tls = "acme"'
                )
            if acme.challenge == "http-01" and not server.listen_http:
                self._errors.append(
                    'acme.challenge: "http-01" needs server.listen_http, which is '
                    'empty (or use "tls-alpn-01")'
                )

        if self._errors:
            raise ConfigError(self._errors)
        return Config(
            server=server,
            acme=acme,
            logging=logging,
            defaults=defaults,
            sites=tuple(site.config for site in sites),
            cluster=cluster,
        )

    def _path(self, filename: str) -> str:
        """
        Resolve a relative file path against the config file's directory.
        """
        if filename and self._baseDir is not None and not os.path.isabs(filename):
            return os.path.normpath(os.path.join(self._baseDir, filename))
        return filename

    def _server(self, table: _Table | None) -> tuple[ServerConfig, bool]:
        """
        Read C{[server]}.

        @return: The server config, and whether C{listen_https} is valid and
            not empty (a valid but empty one is reported by the sites).
        """
        base = ServerConfig()
        if table is None:
            return base, True
        listenHTTP, listenHTTPS, opsListen = self._listeners(table, base)
        adminSocketPath = table.string("admin_socket_path", base.admin_socket_path)
        stateDir = table.string("state_dir", base.state_dir)
        if stateDir == "":
            table.error("state_dir", "must not be empty")
        shutdownTimeout = table.number(
            "shutdown_timeout_secs",
            base.shutdown_timeout_secs,
            0,
            _MAX_SHUTDOWN_TIMEOUT_SECS,
        )
        workers, workersAuto = self._workers(table, base)
        trusted = self._trustedProxies(table)
        tlsMinVersion = table.choice(
            "tls_min_version", base.tls_min_version, _TLS_VERSIONS
        )
        http2 = table.boolean("http2", base.http2)
        limits, maxConnections = self._serverLimits(table, base)
        server = ServerConfig(
            listen_http=_or(listenHTTP, base.listen_http),
            listen_https=_or(listenHTTPS, base.listen_https),
            admin_socket_path=_or(adminSocketPath, base.admin_socket_path),
            ops_listen=_or(opsListen, base.ops_listen),
            state_dir=_or(stateDir, base.state_dir),
            shutdown_timeout_secs=_or(shutdownTimeout, base.shutdown_timeout_secs),
            workers=_or(workers, base.workers),
            workers_auto=workersAuto,
            trusted_proxies=trusted,
            tls_min_version=_or(tlsMinVersion, base.tls_min_version),
            http2=_or(http2, base.http2),
            max_connections=maxConnections,
            **{key: _or(value, getattr(base, key)) for key, value in limits.items()},
        )
        return server, listenHTTPS is None or listenHTTPS != ()

    def _listeners(
        self, table: _Table, base: ServerConfig
    ) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, str | None]:
        """
        Read C{listen_http}, C{listen_https} and C{ops_listen}: valid
        endpoint descriptions, no two on the same address.

        @return: each, or L{None} where it is invalid.
        """
        errors = self._errors
        seen: dict[tuple[object, ...], str] = {}

        def endpoints(
            key: str, default: tuple[str, ...], plainTCP: bool
        ) -> tuple[str, ...] | None:
            if not table.has(key):
                values: list[str | None] | None = list(default)
            else:
                values = _asStringList(errors, table.keyPath(key), table.get(key))
            if values is None:
                return None
            valid: list[str] = []
            for index, description in enumerate(values):
                path = f"{table.keyPath(key)}[{index}]"
                if description is not None and endpoint(path, description, plainTCP):
                    valid.append(description)
            return tuple(valid) if len(valid) == len(values) else None

        def endpoint(path: str, description: str, plainTCP: bool) -> bool:
            before = len(errors)
            key = _checkEndpoint(errors, path, description, plainTCP=plainTCP)
            if key is not None:
                if key in seen:
                    errors.append(
                        f"{path}: {_quote(description)} listens on the same "
                        f"address as {seen[key]}"
                    )
                else:
                    seen[key] = path
            return len(errors) == before

        listenHTTP = endpoints("listen_http", base.listen_http, False)
        listenHTTPS = endpoints("listen_https", base.listen_https, True)
        opsListen = table.string("ops_listen", base.ops_listen)
        if opsListen and not endpoint(table.keyPath("ops_listen"), opsListen, False):
            opsListen = None
        if listenHTTP == () and listenHTTPS == ():
            table.error(
                "listen_http",
                "listen_http and listen_https are both empty, so revproxy "
                "would not listen anywhere",
            )
        return listenHTTP, listenHTTPS, opsListen

    def _workers(self, table: _Table, base: ServerConfig) -> tuple[int | None, bool]:
        """
        Read C{workers}: an integer from 1 to L{MAX_WORKERS}, or C{"auto"},
        resolved here to L{usableCores}.

        @return: the count (L{None} where invalid), and whether it was
            C{"auto"}.
        """
        if not table.has("workers"):
            return base.workers, False
        value = table.get("workers")
        if value == "auto":
            return usableCores(), True
        if isinstance(value, bool) or not isinstance(value, int):
            table.error(
                "workers", f'expected an integer or "auto", got {_describe(value)}'
            )
            return None, False
        if _rangeProblem(value, 1, MAX_WORKERS) is not None:
            table.error(
                "workers",
                f'must be between 1 and {MAX_WORKERS} or "auto", '
                f"got {_formatNumber(value)}",
            )
            return None, False
        return value, False

    def _trustedProxies(
        self, table: _Table
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """
        Read C{trusted_proxies}: addresses or networks (CIDR).
        """
        trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        if table.has("trusted_proxies"):
            path = table.keyPath("trusted_proxies")
            items = _asStringList(self._errors, path, table.get("trusted_proxies"))
            for index, item in enumerate(items or ()):
                if item is None:
                    continue
                try:
                    trusted.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    self._errors.append(
                        f"{path}[{index}]: {_quote(item)} is not an IP address or "
                        "network (CIDR)"
                    )
        return tuple(trusted)

    def _serverLimits(
        self, table: _Table, base: ServerConfig
    ) -> tuple[dict[str, float | None], int | None]:
        """
        Read the numeric limits and timeouts of C{[server]}.

        @return: each limit by key (L{None} where invalid), and
            C{max_connections}.
        """
        limits: dict[str, float | None] = {
            key: table.integer(key, getattr(base, key), low, high)
            for key, low, high in (
                ("max_request_line_bytes", 256, 1048576),
                ("max_header_bytes", 256, 1048576),
                ("max_headers_total_bytes", 1024, 16777216),
                ("max_header_fields", 8, 10000),
                ("min_body_rate_bytes_per_sec", 0, 10**9),
                ("max_requests_per_connection", 0, 10**9),
                ("max_tracked_clients", 1, 10**8),
                ("rate_limit_ipv6_prefix", 1, 128),
                ("upstream_max_connections", 1, 10**6),
                ("upstream_max_queue", 0, 10**7),
            )
        }
        maxConnections = table.integer("max_connections", None, 1, 10**8)
        limits.update(
            (
                key,
                table.number(
                    key, getattr(base, key), 0, _MAX_TIMEOUT_SECS, lowOpen=True
                ),
            )
            for key in (
                "header_timeout_secs",
                "body_timeout_secs",
                "keepalive_timeout_secs",
                "send_timeout_secs",
                "handshake_timeout_secs",
            )
        )
        limits["lingering_close_secs"] = table.number(
            "lingering_close_secs", base.lingering_close_secs, 0, 300
        )
        if (
            limits["max_header_bytes"] is not None
            and limits["max_headers_total_bytes"] is not None
            and limits["max_header_bytes"] > limits["max_headers_total_bytes"]
        ):
            table.error(
                "max_header_bytes",
                "must not be larger than max_headers_total_bytes "
                f"({limits['max_headers_total_bytes']})",
            )
        return limits, maxConnections

    def _acme(self, table: _Table | None) -> tuple[AcmeConfig, bool]:
        """
        Read C{[acme]}.

        @return: The ACME config, and whether C{email} is absent or empty.
        """
        base = AcmeConfig()
        if table is None:
            return base, True
        email = table.string("email", base.email)
        if email and not _EMAIL.fullmatch(email):
            table.error("email", f"{_quote(email)} does not look like an email address")
        directoryURL = table.string("directory_url", base.directory_url)
        if directoryURL is not None:
            problem = _directoryProblem(directoryURL)
            if problem is not None:
                table.error("directory_url", problem)
        caFile = table.string("ca_file", base.ca_file)
        challenge = table.choice("challenge", base.challenge, _CHALLENGES)
        renewBefore = table.number(
            "renew_before_days", None, 0, 365, lowOpen=True, highOpen=True
        )
        keyType = table.choice("key_type", base.key_type, _KEY_TYPES)
        config = AcmeConfig(
            email=_or(email, base.email),
            directory_url=_or(directoryURL, base.directory_url),
            ca_file=self._path(_or(caFile, base.ca_file)),
            challenge=_or(challenge, base.challenge),
            renew_before_days=renewBefore,
            key_type=_or(keyType, base.key_type),
        )
        return config, email == ""

    def _cluster(self, table: _Table | None) -> ClusterConfig | None:
        """
        Read C{[cluster]}: L{None} when it is absent.  Reads the password
        and secret files it names.
        """
        if table is None:
            return None
        redisURL = table.string("redis_url", None)
        host, port, db, tls = "", _DEFAULT_REDIS_PORT, 0, False
        if redisURL is None:
            if not table.has("redis_url"):
                table.error(
                    "redis_url",
                    'required in [cluster] (such as "redis://127.0.0.1:6379/0")',
                )
        else:
            try:
                host, port, db, tls = _parseRedisURL(redisURL)
            except ValueError as e:
                table.error("redis_url", str(e))
                redisURL = None
        passwordFile = self._path(_or(table.string("redis_password_file", ""), ""))
        password = ""
        passwordMode = 0o600
        if passwordFile:
            password = _or(self._redisPassword(table, passwordFile), "")
            if password:
                passwordMode = stat.S_IMODE(os.stat(passwordFile).st_mode)
        caFile = self._path(_or(table.string("redis_ca_file", ""), ""))
        if caFile and redisURL is not None and not tls:
            table.error(
                "redis_ca_file",
                "only used with a rediss:// redis_url (Redis over TLS)",
            )
        keyPrefix = table.string("key_prefix", "revproxy:")
        if keyPrefix is not None and not _KEY_PREFIX.fullmatch(keyPrefix):
            table.error(
                "key_prefix",
                f"{_quote(keyPrefix)} must be 1 to 64 printable ASCII characters "
                "without spaces",
            )
            keyPrefix = None
        nodeName = table.string("node_name", None)
        if nodeName is None and not table.has("node_name"):
            hostName = socket.gethostname()
            if not _NODE_NAME.fullmatch(hostName):
                table.error(
                    "node_name",
                    f"the host name {_quote(hostName)} is not a valid node name "
                    "(1 to 64 letters, digits, dots, hyphens or underscores); "
                    "set node_name",
                )
            nodeName = hostName
        elif nodeName is not None and not _NODE_NAME.fullmatch(nodeName):
            table.error(
                "node_name",
                f"{_quote(nodeName)} must be 1 to 64 letters, digits, dots, "
                "hyphens or underscores",
            )
            nodeName = None
        rawSecretFile = table.string("secret_file", None)
        secretFile = self._path(_or(rawSecretFile, ""))
        secret, mode = b"", 0o600
        if not table.has("secret_file"):
            table.error(
                "secret_file",
                "required in [cluster]: a file of at least "
                f"{MIN_CLUSTER_SECRET_BYTES} random bytes ({_MAKE_SECRET})",
            )
        elif rawSecretFile == "":
            table.error("secret_file", f"must not be empty ({_MAKE_SECRET})")
        elif secretFile:
            secret, mode = _or(self._clusterSecret(table, secretFile), (b"", 0o600))
        reloadChannel = table.boolean("reload_channel", False)
        return ClusterConfig(
            redis_url=_or(redisURL, ""),
            redis_host=host,
            redis_port=port,
            redis_db=db,
            redis_tls=tls,
            redis_password_file=passwordFile,
            redis_password=password,
            redis_ca_file=caFile,
            key_prefix=_or(keyPrefix, "revproxy:"),
            node_name=_or(nodeName, ""),
            secret_file=secretFile,
            secret=secret,
            secret_file_mode=mode,
            redis_password_file_mode=passwordMode,
            reload_channel=_or(reloadChannel, False),
        )

    def _redisPassword(self, table: _Table, filename: str) -> str | None:
        """
        The password in C{filename} (C{redis_password_file}), without its
        trailing newline.
        """
        path = table.keyPath("redis_password_file")
        data = self._readFile(
            path,
            filename,
            _MAX_REDIS_PASSWORD_BYTES,
            f"{_MAX_REDIS_PASSWORD_BYTES} bytes",
        )
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._errors.append(f"{path}: {_quote(filename, None)} is not UTF-8 text")
            return None
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            self._errors.append(
                f"{path}: {_quote(filename, None)} is empty (it holds the Redis "
                "password, on one line)"
            )
            return None
        return text

    def _clusterSecret(self, table: _Table, filename: str) -> tuple[bytes, int] | None:
        """
        The bytes of C{filename} (C{secret_file}) and its permission bits.
        """
        path = table.keyPath("secret_file")
        data = self._readFile(
            path,
            filename,
            _MAX_CLUSTER_SECRET_BYTES,
            f"{_MAX_CLUSTER_SECRET_BYTES // 1024} KiB",
        )
        if data is None:
            return None
        if len(data) < MIN_CLUSTER_SECRET_BYTES:
            self._errors.append(
                f"{path}: {_quote(filename, None)} holds {len(data)} byte(s); "
                f"at least {MIN_CLUSTER_SECRET_BYTES} are needed ({_MAKE_SECRET})"
            )
            return None
        try:
            mode = stat.S_IMODE(os.stat(filename).st_mode)
        except OSError as e:
            self._errors.append(
                f"{path}: cannot read {_quote(filename, None)}: {_reason(e)}"
            )
            return None
        return data, mode

    def _logging(self, table: _Table | None) -> LoggingConfig:
        """
        Read C{[logging]}.
        """
        base = LoggingConfig()
        if table is None:
            return base
        accessLog = table.string("access_log", base.access_log)
        accessLogFormat = table.choice(
            "access_log_format", base.access_log_format, _LOG_FORMATS
        )
        return LoggingConfig(
            access_log=_or(accessLog, base.access_log),
            access_log_format=_or(accessLogFormat, base.access_log_format),
        )

    def _limits(self, table: _Table, base: Defaults) -> Defaults:
        """
        Read the limits that C{[defaults]} sets and each site may override.
        """
        maxBody = table.integer(
            "max_body_bytes", base.max_body_bytes, 1, _MAX_BODY_BYTES
        )
        rateLimit = self._rateLimit(table.table("rate_limit", _RATE_LIMIT_KEYS))
        connectTimeout = table.number(
            "connect_timeout_secs",
            base.connect_timeout_secs,
            0,
            _MAX_TIMEOUT_SECS,
            lowOpen=True,
        )
        responseTimeout = table.number(
            "response_timeout_secs",
            base.response_timeout_secs,
            0,
            _MAX_TIMEOUT_SECS,
            lowOpen=True,
        )
        queueTimeout = table.number(
            "queue_timeout_secs",
            base.queue_timeout_secs,
            0,
            _MAX_TIMEOUT_SECS,
            lowOpen=True,
        )
        errorPages, errorPageFiles = self._errorPages(table, base)
        return Defaults(
            error_pages=errorPages,
            error_page_files=errorPageFiles,
            max_body_bytes=_or(maxBody, base.max_body_bytes),
            rate_limit=base.rate_limit if rateLimit is None else rateLimit,
            connect_timeout_secs=_or(connectTimeout, base.connect_timeout_secs),
            response_timeout_secs=_or(responseTimeout, base.response_timeout_secs),
            queue_timeout_secs=_or(queueTimeout, base.queue_timeout_secs),
            upgrade_protocols=_or(
                self._upgradeProtocols(table), base.upgrade_protocols
            ),
            tunnel_idle_timeout_secs=_or(
                table.number(
                    "tunnel_idle_timeout_secs",
                    base.tunnel_idle_timeout_secs,
                    0,
                    _MAX_TUNNEL_IDLE_TIMEOUT_SECS,
                    lowOpen=True,
                ),
                base.tunnel_idle_timeout_secs,
            ),
            max_tunnels=_or(
                table.integer("max_tunnels", base.max_tunnels, 0, _MAX_TUNNELS),
                base.max_tunnels,
            ),
            tunnel_drain_secs=_or(
                table.number(
                    "tunnel_drain_secs",
                    base.tunnel_drain_secs,
                    0,
                    _MAX_TUNNEL_DRAIN_SECS,
                ),
                base.tunnel_drain_secs,
            ),
        )

    def _upgradeProtocols(self, table: _Table) -> tuple[str, ...] | None:
        """
        Read C{upgrade_protocols}: RFC 9110 tokens without a version,
        lowercased, no duplicates, never C{"h2c"}.

        @return: the protocols, or L{None} when the key is absent or wrong.
        """
        if not table.has("upgrade_protocols"):
            return None
        path = table.keyPath("upgrade_protocols")
        items = _asStringList(self._errors, path, table.get("upgrade_protocols"))
        if items is None:
            return None
        protocols: list[tuple[int, str]] = []
        valid = True
        for index, item in enumerate(items):
            itemPath = f"{path}[{index}]"
            if item is None:
                valid = False
            elif "/" in item:
                name = item.split("/", 1)[0]
                self._errors.append(
                    f"{itemPath}: {_quote(item)} has a version; give the "
                    f"protocol name only (such as {_quote(name or 'websocket')})"
                )
                valid = False
            elif not _TOKEN.fullmatch(item):
                self._errors.append(
                    f"{itemPath}: {_quote(item)} is not a protocol name (an "
                    "RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"
                )
                valid = False
            elif item.lower() == "h2c":
                self._errors.append(
                    f"{itemPath}: {_quote(item)} is refused: an h2c upgrade is a "
                    "known way past a proxy's checks (request smuggling: the "
                    "tunnel carries HTTP/2 requests that revproxy never reads); "
                    "revproxy serves HTTP/2 itself (server.http2)"
                )
                valid = False
            else:
                protocol = item.lower()
                for otherIndex, other in protocols:
                    if other == protocol:
                        self._errors.append(
                            f"{itemPath}: duplicate protocol {_quote(protocol)} "
                            f"(also upgrade_protocols[{otherIndex}])"
                        )
                        valid = False
                        break
                else:
                    protocols.append((index, protocol))
        if not valid:
            return None
        return tuple(protocol for _, protocol in protocols)

    def _defaults(self, table: _Table | None) -> Defaults:
        """
        Read C{[defaults]}.
        """
        if table is None:
            return Defaults()
        return self._limits(table, Defaults())

    def _rateLimit(self, table: _Table | None) -> RateLimit | None:
        """
        Read a C{rate_limit = { requests_per_second = R, burst = B }}.
        """
        if table is None:
            return None
        for key in ("requests_per_second", "burst"):
            if not table.has(key):
                table.error(key, "required (set both to 0 to turn rate limiting off)")
        rate = table.number("requests_per_second", None, 0, _MAX_REQUESTS_PER_SECOND)
        burst = table.integer("burst", None, 0, _MAX_BURST)
        dryRun = table.boolean("dry_run", False)
        if rate is None or burst is None or dryRun is None:
            return None
        if rate > 0 and burst == 0:
            table.error("burst", "burst must be >= 1 when requests_per_second > 0")
            return None
        if rate == 0 and burst > 0:
            table.error(
                "requests_per_second",
                "must be > 0 when burst > 0 (set both to 0 to turn rate limiting off)",
            )
            return None
        return RateLimit(requests_per_second=rate, burst=burst, dry_run=dryRun)

    def _healthCheck(self, table: _Table | None) -> HealthCheck | None:
        """
        Read a C{health_check = { path = "/healthz", interval_secs = 10 }}.
        """
        if table is None:
            return None
        if not table.has("path"):
            table.error("path", 'required (the path to GET, such as "/healthz")')
        path = table.string("path", None)
        if path is not None:
            if not path.startswith("/"):
                table.error("path", f'{_quote(path)} must start with "/"')
            elif any(c.isspace() for c in path):
                table.error("path", f"{_quote(path)} must not contain whitespace")
        interval = table.number(
            "interval_secs", _DEFAULT_HEALTH_INTERVAL_SECS, 1, _MAX_TIMEOUT_SECS
        )
        timeout = table.number("timeout_secs", 2.0, 0, 300, lowOpen=True)
        fails = table.integer("fails", 3, 1, 1000)
        passes = table.integer("passes", 2, 1, 1000)
        if (
            timeout is not None
            and interval is not None
            and timeout > interval
            and table.has("timeout_secs")
        ):
            table.error(
                "timeout_secs",
                f"must not be longer than interval_secs ({_formatNumber(interval)})",
            )
            timeout = None
        if (
            path is None
            or interval is None
            or timeout is None
            or fails is None
            or passes is None
        ):
            return None
        return HealthCheck(
            path=path,
            interval_secs=interval,
            timeout_secs=min(timeout, interval),
            fails=fails,
            passes=passes,
        )

    def _sites(
        self,
        top: _Table,
        server: ServerConfig,
        httpsListeners: bool,
        defaults: Defaults,
    ) -> list[_ParsedSite]:
        """
        Read every C{[[sites]]} entry, then check them against each other.
        """
        if not top.has("sites"):
            top.error("sites", "at least one [[sites]] table is required")
            return []
        value = top.get("sites")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            top.error(
                "sites",
                f"expected an array of tables ([[sites]]), got {_describe(value)}",
            )
            return []
        if not value:
            top.error("sites", "at least one [[sites]] table is required")
            return []
        sites = [
            self._site(
                _Table(self._errors, f"sites[{index}]", item, _SITE_KEYS),
                httpsListeners,
                defaults,
            )
            for index, item in enumerate(value)
        ]

        names: dict[str, int] = {}
        hosts: dict[str, int] = {}
        defaultSite: int | None = None
        for index, site in enumerate(sites):
            if site.name is not None:
                if site.name in names:
                    self._errors.append(
                        f"sites[{index}].name: duplicate site name "
                        f"{_quote(site.name)} (also sites[{names[site.name]}])"
                    )
                else:
                    names[site.name] = index
            for hostIndex, host in site.hosts:
                if host in hosts:
                    other = hosts[host]
                    self._errors.append(
                        f"sites[{index}].hosts[{hostIndex}]: host {_quote(host)} is "
                        f"already claimed by sites[{other}] "
                        f"({_quote(sites[other].config.name)})"
                    )
                else:
                    hosts[host] = index
            if site.default:
                if defaultSite is not None:
                    self._errors.append(
                        f"sites[{index}].default: only one site may have "
                        f"default = true (also sites[{defaultSite}])"
                    )
                else:
                    defaultSite = index
        return sites

    def _site(
        self, table: _Table, httpsListeners: bool, defaults: Defaults
    ) -> _ParsedSite:
        """
        Read one C{[[sites]]} entry, checking what concerns it alone.
        """
        name = self._siteName(table)
        isDefault = table.boolean("default", False)
        hosts, noHosts = self._siteHosts(table, isDefault)
        upstreams = self._upstreamList(table)
        access = _or(self._access(table), _NO_ACCESS)
        answers = self._siteAnswers(table, access)
        tls, certFile, keyFile = self._siteTLS(table, hosts, noHosts, httpsListeners)
        redirect = table.boolean("redirect_http", False)
        if redirect and tls == "none":
            table.error("redirect_http", 'needs tls = "acme" or "files"')
        hsts = table.integer("hsts_max_age_secs", 0, 0, _MAX_HSTS_SECS)
        if hsts and tls == "none":
            table.error(
                "hsts_max_age_secs",
                'needs tls = "acme" or "files" (HSTS is only sent over HTTPS)',
            )
        strictSNI = table.boolean("strict_sni_host", True)
        if tls == "none" and table.has("strict_sni_host"):
            # Either value: a site without TLS is never served over HTTPS,
            # so the key could not take effect.
            table.error(
                "strict_sni_host",
                'only used with tls = "acme" or "files" (this site has tls = "none")',
            )
        allUpstreams = upstreams + [
            u for route in answers.routes for u in route.upstreams
        ]
        upstreamCA, verify = self._siteUpstreamTLS(table, allUpstreams)

        healthCheck = self._healthCheck(table.table("health_check", _HEALTH_CHECK_KEYS))
        if healthCheck is not None and not allUpstreams:
            table.error("health_check", "only used with upstreams (this site has none)")
        limits = self._limits(table, defaults)
        config = SiteConfig(
            name=_or(name, ""),
            hosts=tuple(host for _, host in hosts),
            upstreams=tuple(upstreams),
            tls=_or(tls, "none"),
            cert_file=self._path(_or(certFile, "")),
            key_file=self._path(_or(keyFile, "")),
            redirect_http=_or(redirect, False),
            hsts_max_age_secs=_or(hsts, 0),
            strict_sni_host=_or(strictSNI, True) and tls in ("acme", "files"),
            upstream_ca_file=self._path(_or(upstreamCA, "")),
            upstream_tls_verify=_or(verify, True),
            health_check=healthCheck,
            default=_or(isDefault, False),
            max_body_bytes=limits.max_body_bytes,
            rate_limit=limits.rate_limit,
            connect_timeout_secs=limits.connect_timeout_secs,
            response_timeout_secs=limits.response_timeout_secs,
            queue_timeout_secs=limits.queue_timeout_secs,
            upgrade_protocols=limits.upgrade_protocols,
            tunnel_idle_timeout_secs=limits.tunnel_idle_timeout_secs,
            max_tunnels=limits.max_tunnels,
            tunnel_drain_secs=limits.tunnel_drain_secs,
            error_pages=limits.error_pages,
            error_page_files=limits.error_page_files,
            routes=answers.routes,
            redirect=answers.redirect,
            respond=answers.respond,
            request_headers=answers.request_headers,
            response_headers=answers.response_headers,
            upstream_host=answers.upstream_host,
            access=access,
        )
        return _ParsedSite(
            config=config,
            name=name,
            hosts=tuple(hosts),
            default=isDefault is True,
            usesAcme=tls == "acme",
        )

    def _siteName(self, table: _Table) -> str | None:
        """
        Read a site's C{name}: required, a safe directory name.
        """
        name = table.string("name", None)
        if not table.has("name"):
            table.error("name", "required")
        elif name is not None and not _SITE_NAME.fullmatch(name):
            table.error(
                "name",
                f"{_quote(name)} must be 1-64 letters, digits, '_', '.' or '-'",
            )
            name = None
        elif name is not None and name.startswith("."):
            # The name is a directory under state_dir (ACME certificates).
            table.error("name", f"{_quote(name)} must not start with '.'")
            name = None
        return name

    def _siteHosts(
        self, table: _Table, isDefault: bool | None
    ) -> tuple[list[tuple[int, str]], bool]:
        """
        Read a site's C{hosts}: normalized names, no duplicates, required
        unless it is the default site.

        @return: each valid host with its index, and whether the site has
            no hosts.
        """
        hosts: list[tuple[int, str]] = []
        noHosts = not table.has("hosts")
        if table.has("hosts"):
            path = table.keyPath("hosts")
            items = _asStringList(self._errors, path, table.get("hosts"))
            for index, item in enumerate(items or ()):
                if item is None:
                    continue
                try:
                    host = _normalizeHost(item, allowWildcard=True)
                except ValueError as e:
                    self._errors.append(f"{path}[{index}]: {e}")
                    continue
                for otherIndex, other in hosts:
                    if other == host:
                        self._errors.append(
                            f"{path}[{index}]: duplicate host {_quote(host)} "
                            f"(also hosts[{otherIndex}])"
                        )
                        break
                else:
                    hosts.append((index, host))
            noHosts = items == []
            if noHosts and isDefault is False:
                table.error("hosts", "must not be empty unless default = true")
        elif isDefault is False:
            table.error("hosts", "required (a list of hostnames) unless default = true")
        return hosts, noHosts

    def _upstreamList(self, table: _Table, *, required: bool = False) -> list[Upstream]:
        """
        Read the C{upstreams} of a site or route: URLs, no duplicates.

        @param required: Whether an absent or empty list is an error (a
            site checks that itself, in L{_siteAnswers}).
        """
        upstreams: list[Upstream] = []
        if table.has("upstreams"):
            path = table.keyPath("upstreams")
            items = _asStringList(self._errors, path, table.get("upstreams"))
            if items == [] and required:
                table.error("upstreams", "must not be empty")
            seen: dict[str, int] = {}
            for index, item in enumerate(items or ()):
                if item is None:
                    continue
                try:
                    upstream = _parseUpstream(item)
                except ValueError as e:
                    self._errors.append(f"{path}[{index}]: {e}")
                    continue
                if upstream.url in seen:
                    self._errors.append(
                        f"{path}[{index}]: duplicate upstream {_quote(upstream.url)} "
                        f"(also upstreams[{seen[upstream.url]}])"
                    )
                else:
                    seen[upstream.url] = index
                    upstreams.append(upstream)
        return upstreams

    def _siteTLS(
        self,
        table: _Table,
        hosts: list[tuple[int, str]],
        noHosts: bool,
        httpsListeners: bool,
    ) -> tuple[str | None, str | None, str | None]:
        """
        Read a site's C{tls}, C{cert_file} and C{key_file}.
        """
        tls = table.choice("tls", "none", _TLS_MODES)
        certFile = table.string("cert_file", "")
        keyFile = table.string("key_file", "")
        if tls == "files":
            for key, value in (("cert_file", certFile), ("key_file", keyFile)):
                if value == "":
                    table.error(key, 'required when tls = "files"')
        elif tls is not None:
            for key, value in (("cert_file", certFile), ("key_file", keyFile)):
                if value:
                    table.error(
                        key,
                        f'only used with tls = "files" (this site has tls = "{tls}")',
                    )
        if tls == "acme":
            for index, host in hosts:
                if isWildcard(host):
                    self._errors.append(
                        f"{table.keyPath('hosts')}[{index}]: wildcard hosts need "
                        'DNS-01, which revproxy does not do; use tls = "files"'
                    )
            if noHosts:
                table.error(
                    "tls",
                    'tls = "acme" needs at least one host to get a certificate for',
                )
        if tls in ("acme", "files") and not httpsListeners:
            table.error(
                "tls",
                f'tls = "{tls}" needs server.listen_https, which is empty',
            )
        return tls, certFile, keyFile

    def _siteUpstreamTLS(
        self, table: _Table, upstreams: list[Upstream]
    ) -> tuple[str | None, bool | None]:
        """
        Read how a site verifies its https:// upstreams:
        C{upstream_ca_file} and C{upstream_tls_verify}.
        """
        upstreamCA = table.string("upstream_ca_file", "")
        verify = table.boolean("upstream_tls_verify", True)
        anyHTTPS = any(u.scheme == "https" for u in upstreams)
        if upstreams and not anyHTTPS:
            for key, used in (
                ("upstream_ca_file", bool(upstreamCA)),
                ("upstream_tls_verify", table.has("upstream_tls_verify")),
            ):
                if used:
                    table.error(key, "only used with https:// upstreams")
        elif upstreamCA and verify is False:
            table.error(
                "upstream_ca_file",
                "has no effect with upstream_tls_verify = false; remove one of them",
            )
        return upstreamCA, verify

    def _siteAnswers(self, table: _Table, access: AccessRules) -> _SiteAnswers:
        """
        Read what a site answers besides its own C{upstreams} (its routes,
        a site-level C{redirect} or C{respond}, its header rules and
        C{upstream_host}), and check that every request has one answer.

        @param access: The site's access rules, which its routes inherit.
        """
        routes = self._routes(table, access)
        redirect = self._redirect(table.table("redirect", _REDIRECT_KEYS))
        respond = self._respond(table.table("respond", _RESPOND_KEYS))
        given = table.has("upstreams") and table.get("upstreams") != []
        answers = [key for key in ("redirect", "respond") if table.has(key)]
        if len(answers) == 2:
            table.error(
                "respond", "a site has one answer of its own; it also has redirect"
            )
        if given and answers:
            table.error(
                answers[0],
                f"a site with upstreams cannot also have {answers[0]}: which "
                f"would answer? Remove upstreams, or put the {answers[0]} in a "
                "[[sites.routes]] entry",
            )
        catchAll = any(r.path_prefix == "/" and not r.methods for r in routes)
        if not given and not answers and not catchAll:
            alternatives = (
                "unless the site answers every request without them: a "
                'site-level redirect or respond, or a route with path_prefix = "/"'
            )
            if table.has("upstreams"):
                table.error("upstreams", f"must not be empty, {alternatives}")
            else:
                table.error(
                    "upstreams",
                    'required (a list of URLs like "http://10.0.0.1:8000"), '
                    + alternatives,
                )
        upstreamHost = self._upstreamHost(table)
        if upstreamHost and not given:
            table.error(
                "upstream_host",
                "only used with the site's own upstreams (a route with "
                "upstreams sets its own)",
            )
        return _SiteAnswers(
            routes=tuple(routes),
            redirect=redirect,
            respond=respond,
            request_headers=self._headerRules(table, "request_headers"),
            response_headers=self._headerRules(table, "response_headers"),
            upstream_host=_or(upstreamHost, ""),
        )

    def _routes(self, table: _Table, access: AccessRules) -> list[RouteConfig]:
        """
        Read a site's C{[[sites.routes]]}.

        @param access: The site's access rules, for the routes that set
            none of their own.
        """
        if not table.has("routes"):
            return []
        value = table.get("routes")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            table.error(
                "routes",
                "expected an array of tables ([[sites.routes]]), got "
                + _describe(value),
            )
            return []
        path = table.keyPath("routes")
        return [
            self._route(
                _Table(self._errors, f"{path}[{index}]", item, _ROUTE_KEYS),
                index,
                access,
            )
            for index, item in enumerate(value)
        ]

    def _route(self, table: _Table, index: int, siteAccess: AccessRules) -> RouteConfig:
        """
        Read one route: one matcher, one action, and modifiers that fit
        them, and its access rules (else C{siteAccess}).
        """
        path, prefix = self._routeMatcher(table)
        methods = self._methods(table)
        actions = [k for k in ("upstreams", "redirect", "respond") if table.has(k)]
        if not actions:
            self._errors.append(
                f"{table.path}: needs an action: upstreams, redirect or respond"
            )
        elif len(actions) > 1:
            table.error(actions[1], f"a route has one action; it also has {actions[0]}")
        upstreams = self._upstreamList(table, required=True)
        redirect = self._redirect(table.table("redirect", _REDIRECT_KEYS))
        respond = self._respond(table.table("respond", _RESPOND_KEYS))
        hasUpstreams = table.has("upstreams")
        strip = table.boolean("strip_prefix", False)
        if strip and not table.has("path_prefix"):
            table.error("strip_prefix", "only used with path_prefix")
        elif strip and not hasUpstreams:
            table.error(
                "strip_prefix",
                "only used with upstreams (it changes what is forwarded)",
            )
        rewrite = table.boolean("rewrite_redirects", False)
        if rewrite and not strip:
            table.error("rewrite_redirects", "needs strip_prefix = true")
        upstreamHost = self._upstreamHost(table)
        rateLimit = self._rateLimit(table.table("rate_limit", _RATE_LIMIT_KEYS))
        maxBody = table.integer("max_body_bytes", None, 1, _MAX_BODY_BYTES)
        noTimeout: float | None = None
        connect = table.number(
            "connect_timeout_secs", noTimeout, 0, _MAX_TIMEOUT_SECS, lowOpen=True
        )
        response = table.number(
            "response_timeout_secs", noTimeout, 0, _MAX_TIMEOUT_SECS, lowOpen=True
        )
        for key in (
            "upstream_host",
            "request_headers",
            "max_body_bytes",
            "connect_timeout_secs",
            "response_timeout_secs",
        ):
            if table.has(key) and not hasUpstreams:
                table.error(
                    key,
                    "only used with upstreams (a redirect or respond forwards nothing)",
                )
        return RouteConfig(
            index=index,
            path=path,
            path_prefix=prefix,
            methods=_or(methods, ()),
            upstreams=tuple(upstreams),
            strip_prefix=_or(strip, False),
            upstream_host=_or(upstreamHost, ""),
            rewrite_redirects=_or(rewrite, False),
            redirect=redirect,
            respond=respond,
            request_headers=self._headerRules(table, "request_headers"),
            response_headers=self._headerRules(table, "response_headers"),
            max_body_bytes=maxBody,
            rate_limit=rateLimit,
            connect_timeout_secs=connect,
            response_timeout_secs=response,
            access=_or(self._access(table), siteAccess),
        )

    def _routeMatcher(self, table: _Table) -> tuple[str | None, str | None]:
        """
        Read a route's C{path} or C{path_prefix}: one of them, starting with
        C{/}.
        """
        found: dict[str, str | None] = {}
        for key in ("path", "path_prefix"):
            value = table.string(key, None)
            if value is None:
                found[key] = None
            elif not value.startswith("/"):
                table.error(key, f'{_quote(value)} must start with "/"')
                found[key] = None
            elif any(c.isspace() for c in value):
                table.error(key, f"{_quote(value)} must not contain whitespace")
                found[key] = None
            elif "?" in value or "#" in value:
                table.error(
                    key,
                    f"{_quote(value)} must not have a query or fragment "
                    "(routes match the path alone)",
                )
                found[key] = None
            else:
                found[key] = value
        if not table.has("path") and not table.has("path_prefix"):
            self._errors.append(
                f"{table.path}: needs a matcher: path (exact) or path_prefix"
            )
        elif table.has("path") and table.has("path_prefix"):
            table.error("path_prefix", "a route has one matcher; it also has path")
        return found["path"], found["path_prefix"]

    def _methods(self, table: _Table) -> tuple[str, ...] | None:
        """
        Read a route's C{methods}: tokens, uppercased, no duplicates.
        """
        if not table.has("methods"):
            return ()
        path = table.keyPath("methods")
        items = _asStringList(self._errors, path, table.get("methods"))
        if items is None:
            return None
        if not items:
            table.error(
                "methods", "must not be empty (leave it out to match every method)"
            )
            return None
        methods: list[str] = []
        for index, item in enumerate(items):
            if item is None:
                return None
            if not _TOKEN.fullmatch(item):
                self._errors.append(
                    f"{path}[{index}]: {_quote(item)} is not a method name (an "
                    "RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"
                )
                return None
            method = item.upper()
            if method in methods:
                self._errors.append(
                    f"{path}[{index}]: duplicate method {_quote(method)} "
                    f"(also methods[{methods.index(method)}])"
                )
                return None
            methods.append(method)
        return tuple(methods)

    def _upstreamHost(self, table: _Table) -> str | None:
        """
        Read an C{upstream_host}: a hostname or IP address, maybe with a
        port, normalized (C{"app.internal"}, C{"[::1]:8443"}).
        """
        value = table.string("upstream_host", "")
        if not value:
            return value
        problem = f"{_quote(value)} is not a hostname[:port]"
        try:
            parts = urlsplit("//" + value)
            port = parts.port
            if not parts.hostname or parts.path or parts.query or "@" in value:
                raise ValueError(problem)
            host = _normalizeHost(parts.hostname, allowWildcard=False)
        except ValueError as e:
            detail = str(e)
            table.error(
                "upstream_host", detail if detail.startswith(problem) else problem
            )
            return None
        if port is not None and not 1 <= port <= 65535:
            table.error("upstream_host", f"{problem}: the port must be 1-65535")
            return None
        netloc = f"[{host}]" if ":" in host else host
        return netloc if port is None else f"{netloc}:{port}"

    def _access(self, table: _Table) -> AccessRules | None:
        """
        Read the access keys of a site or route: C{allow}, C{deny},
        C{basic_auth}, C{forward_auth}.

        @return: The rules, or L{None} when the table sets none of the keys
            (a route then has its site's).
        """
        if not any(table.has(key) for key in _ACCESS_KEYS):
            return None
        allow = self._networks(table, "allow")
        deny = self._networks(table, "deny")
        lists = [key for key in table.keys() if key in ("allow", "deny")]
        basic = self._basicAuth(table.table("basic_auth", _BASIC_AUTH_KEYS))
        forward = self._forwardAuth(table.table("forward_auth", _FORWARD_AUTH_KEYS))
        if table.has("basic_auth") and table.has("forward_auth"):
            table.error(
                "forward_auth",
                "a site or route has basic_auth or forward_auth, not both",
            )
        return AccessRules(
            allow=allow,
            deny=deny,
            allow_first=lists[:1] != ["deny"],
            basic_auth=basic,
            forward_auth=forward,
        )

    def _networks(
        self, table: _Table, key: str
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """
        Read C{allow} or C{deny}: addresses or networks (CIDR), at least
        one, no duplicates.
        """
        if not table.has(key):
            return ()
        path = table.keyPath(key)
        items = _asStringList(self._errors, path, table.get(key))
        if items == []:
            table.error(key, f"must not be empty (leave {key} out instead)")
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for index, item in enumerate(items or ()):
            if item is None:
                continue
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                self._errors.append(
                    f"{path}[{index}]: {_quote(item)} is not an IP address or "
                    'network (CIDR, such as "10.0.0.0/8" or "2001:db8::/32")'
                )
                continue
            if network in networks:
                self._errors.append(
                    f"{path}[{index}]: duplicate network {_quote(str(network))} "
                    f"(also {key}[{networks.index(network)}])"
                )
                continue
            networks.append(network)
        return tuple(networks)

    def _basicAuth(self, table: _Table | None) -> BasicAuth | None:
        """
        Read a C{basic_auth = { realm = "...", users_file = "..." }}, and
        the users of its file.
        """
        if table is None:
            return None
        base = BasicAuth()
        realm = table.string("realm", base.realm)
        if realm == "":
            table.error("realm", "must not be empty")
            realm = None
        elif realm is not None and not _REALM.fullmatch(realm):
            table.error(
                "realm",
                f'{_quote(realm)} must be printable ASCII without " or \\',
            )
            realm = None
        if not table.has("users_file"):
            table.error(
                "users_file",
                "required (an htpasswd file of bcrypt or argon2 hashes; "
                "make one with `revproxy hash-password`)",
            )
        usersFile = table.string("users_file", "")
        users: tuple[tuple[str, str], ...] | None = ()
        if usersFile == "" and table.has("users_file"):
            table.error("users_file", "must not be empty")
        elif usersFile:
            usersFile = self._path(usersFile)
            users = self._readUsers(table.keyPath("users_file"), usersFile)
        passAuthorization = table.boolean("pass_authorization", base.pass_authorization)
        userHeader = table.string("user_header", base.user_header)
        if userHeader and not self._headerName(
            table.keyPath("user_header"), userHeader, True, {}, "user_header"
        ):
            userHeader = None
        if None in (realm, usersFile, users, passAuthorization, userHeader):
            return None
        return BasicAuth(
            realm=_or(realm, base.realm),
            users_file=_or(usersFile, ""),
            users=_or(users, ()),
            pass_authorization=_or(passAuthorization, False),
            user_header=_or(userHeader, ""),
        )

    def _readUsers(
        self, path: str, filename: str
    ) -> tuple[tuple[str, str], ...] | None:
        """
        Read the htpasswd file of a C{basic_auth}: a regular UTF-8 file of at
        most 16 MiB, with at least one user.
        """
        data = self._readFile(path, filename, _MAX_USERS_FILE_BYTES, "16 MiB")
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            self._errors.append(
                f"{path}: {_quote(filename, None)} is not UTF-8 text (bad byte "
                f"at offset {e.start})"
            )
            return None
        try:
            users = parseHtpasswd(text.removeprefix("\ufeff"), filename)
        except HtpasswdError as e:
            self._errors.extend(f"{path}: {problem}" for problem in e.problems)
            return None
        if not users:
            self._errors.append(
                f"{path}: {_quote(filename, None)} has no users (add one: "
                "NAME:HASH, the hash from `revproxy hash-password`)"
            )
            return None
        return tuple(users)

    def _forwardAuth(self, table: _Table | None) -> ForwardAuth | None:
        """
        Read a C{forward_auth = { url = "...", copy_headers = [...] }}.
        """
        if table is None:
            return None
        if not table.has("url"):
            table.error(
                "url",
                "required (the auth service's URL, such as "
                '"http://127.0.0.1:9091/api/verify")',
            )
        url = table.string("url", None)
        parsed: tuple[Upstream, str] | None = None
        if url is not None:
            try:
                parsed = _parseServiceURL(url)
            except ValueError as e:
                table.error("url", str(e))
        copyHeaders: list[str] = []
        if table.has("copy_headers"):
            path = table.keyPath("copy_headers")
            items = _asStringList(self._errors, path, table.get("copy_headers"))
            seen: dict[str, str] = {}
            for index, name in enumerate(items or ()):
                itemPath = f"{path}[{index}]"
                if name is not None and self._headerName(
                    itemPath, name, True, seen, f"copy_headers[{index}]"
                ):
                    copyHeaders.append(name)
        timeout = table.number(
            "timeout_secs",
            5.0,
            0,
            _MAX_FORWARD_AUTH_TIMEOUT_SECS,
            lowOpen=True,
        )
        if url is None or parsed is None or timeout is None:
            return None
        return ForwardAuth(
            url=url,
            upstream=parsed[0],
            path=parsed[1],
            copy_headers=tuple(copyHeaders),
            timeout_secs=timeout,
        )

    def _template(self, table: _Table, key: str) -> Template | None:
        """
        Read a string with placeholders.
        """
        text = table.string(key, None)
        if text is None:
            return None
        return self._parseTemplate(table.keyPath(key), text)

    def _parseTemplate(self, path: str, text: str) -> Template | None:
        """
        Parse C{text}, recording a problem at C{path} if it is wrong.
        """
        try:
            return parseTemplate(text)
        except ValueError as e:
            self._errors.append(f"{path}: {_quote(text)}: {e}")
            return None

    def _redirect(self, table: _Table | None) -> Redirect | None:
        """
        Read a C{redirect = { to = "...", status = 308 }}.
        """
        if table is None:
            return None
        if not table.has("to"):
            table.error(
                "to",
                'required (where to send, such as "https://example.com{uri}")',
            )
        to = self._template(table, "to")
        if to is not None and to.parts and isinstance(to.parts[0], str):
            start = to.parts[0]
            if not (start.startswith("/") or re.match(r"(?i)https?://", start)):
                table.error(
                    "to",
                    f"{_quote(to.source)} must be an absolute http(s) URL or a "
                    'path starting with "/"',
                )
                to = None
        elif to is not None and not to.parts:
            table.error("to", "must not be empty")
            to = None
        if to is not None and any(
            isinstance(part, str) and any(c.isspace() for c in part)
            for part in to.parts
        ):
            table.error(
                "to",
                f"{_quote(to.source)} must not contain whitespace (write %20)",
            )
            to = None
        status = table.integer("status", 308, 100, 999)
        if status is not None and status not in _REDIRECT_STATUSES:
            table.error("status", f"must be 301, 302, 303, 307 or 308, got {status}")
            status = None
        if to is None or status is None:
            return None
        return Redirect(to=to, status=status)

    def _respond(self, table: _Table | None) -> Respond | None:
        """
        Read a C{respond = { status = N, body = "..." }} or
        C{respond = { status = N, file = "/path" }}.
        """
        if table is None:
            return None
        if not table.has("status"):
            table.error("status", "required (the status to answer, such as 200)")
        status = table.integer("status", None, 200, 599)
        body = None
        if table.has("body"):
            text = table.get("body")
            path = table.keyPath("body")
            if not isinstance(text, str):
                table.error("body", f"expected a string, got {_describe(text)}")
            elif _BODY_CONTROL.search(text):
                table.error(
                    "body",
                    f"{_quote(text)} contains a control character other than "
                    "tab, CR and LF",
                )
            else:
                body = self._parseTemplate(path, text)
        filename = table.string("file", "")
        if table.has("body") and table.has("file"):
            table.error("file", "a respond has body or file, not both")
        elif status in (204, 304) and (table.has("body") or table.has("file")):
            key = "body" if table.has("body") else "file"
            table.error(key, f"a {status} answer has no body")
        content: bytes | None = b""
        if filename == "" and table.has("file"):
            table.error("file", "must not be empty")
        elif filename:
            filename = self._path(filename)
            content = self._readPage(table.keyPath("file"), filename)
        html = filename is not None and filename.lower().endswith((".html", ".htm"))
        contentType = table.string(
            "content_type",
            "text/html; charset=utf-8" if html else "text/plain; charset=utf-8",
        )
        if contentType == "":
            table.error("content_type", "must not be empty")
        if status is None or content is None or not contentType:
            return None
        return Respond(
            status=status,
            body=body,
            file=_or(filename, ""),
            content=content,
            content_type=contentType,
        )

    def _readFile(
        self, path: str, filename: str, limit: int, size: str
    ) -> bytes | None:
        """
        The bytes of C{filename}, a regular file of at most C{limit} bytes
        (C{size} says it for the message); L{None}, with an error naming
        C{path}, when it cannot be read or is too large.
        """
        try:
            if not stat.S_ISREG(os.stat(filename).st_mode):
                self._errors.append(
                    f"{path}: {_quote(filename, None)} is not a regular file"
                )
                return None
            with open(filename, "rb") as f:
                data = f.read(limit + 1)
        except (OSError, ValueError) as e:
            self._errors.append(
                f"{path}: cannot read {_quote(filename, None)}: {_reason(e)}"
            )
            return None
        if len(data) > limit:
            self._errors.append(
                f"{path}: {_quote(filename, None)} is larger than {size}"
            )
            return None
        return data

    def _readPage(self, path: str, filename: str) -> bytes | None:
        """
        Read a page the config serves (a C{respond} file, an error page):
        a regular file of at most 1 MiB.
        """
        return self._readFile(
            path, filename, _MAX_PAGE_BYTES, f"1 MiB ({_MAX_PAGE_BYTES} bytes)"
        )

    def _errorPages(
        self, table: _Table, base: Defaults
    ) -> tuple[tuple[tuple[int, bytes], ...], tuple[tuple[int, str], ...]]:
        """
        Read C{error_pages = { 502 = "/path", ... }}, or inherit C{base}'s
        (a site's table replaces the defaults' whole).
        """
        if not table.has("error_pages"):
            return base.error_pages, base.error_page_files
        value = table.get("error_pages")
        if not isinstance(value, dict):
            table.error("error_pages", f"expected a table, got {_describe(value)}")
            return base.error_pages, base.error_page_files
        pages: list[tuple[int, bytes]] = []
        files: list[tuple[int, str]] = []
        allowed = ", ".join(str(s) for s in _ERROR_PAGE_STATUSES)
        for key, item in value.items():
            path = _join(table.keyPath("error_pages"), key)
            if key not in (str(status) for status in _ERROR_PAGE_STATUSES):
                self._errors.append(
                    f"{path}: not an answer revproxy makes itself; error_pages "
                    f"takes {allowed}"
                )
                continue
            filename = _asString(self._errors, path, item)
            if filename == "":
                self._errors.append(f"{path}: must not be empty")
            if not filename:
                continue
            filename = self._path(filename)
            content = self._readPage(path, filename)
            if content is not None:
                pages.append((int(key), content))
                files.append((int(key), filename))
        return tuple(sorted(pages)), tuple(sorted(files))

    def _headerRules(self, parent: _Table, key: str) -> HeaderRules:
        """
        Read C{request_headers} or C{response_headers}:
        C{{ set = {...}, add = {...}, remove = [...] }}.
        """
        table = parent.table(key, _HEADER_RULES_KEYS)
        if table is None:
            return _NO_HEADER_RULES
        request = key == "request_headers"
        seen: dict[str, str] = {}
        rules: dict[str, list[tuple[str, Template]]] = {"set": [], "add": []}
        for kind in ("set", "add"):
            if not table.has(kind):
                continue
            value = table.get(kind)
            if not isinstance(value, dict):
                table.error(kind, f"expected a table, got {_describe(value)}")
                continue
            for name, text in value.items():
                path = _join(table.keyPath(kind), name)
                if not self._headerName(path, name, request, seen, kind):
                    continue
                checked = _asString(self._errors, path, text)
                template = None
                if checked is not None:
                    template = self._parseTemplate(path, checked)
                if template is not None:
                    rules[kind].append((name, template))
        remove: list[str] = []
        if table.has("remove"):
            path = table.keyPath("remove")
            items = _asStringList(self._errors, path, table.get("remove"))
            for index, name in enumerate(items or ()):
                itemPath = f"{path}[{index}]"
                if name is not None and self._headerName(
                    itemPath, name, request, seen, "remove"
                ):
                    remove.append(name.lower())
        return HeaderRules(
            set=tuple(rules["set"]), add=tuple(rules["add"]), remove=tuple(remove)
        )

    def _headerName(
        self, path: str, name: str, request: bool, seen: dict[str, str], kind: str
    ) -> bool:
        """
        Check a header rule's field name: a token, not managed by revproxy,
        in one rule only.
        """
        lower = name.lower()
        if not _TOKEN.fullmatch(name):
            self._errors.append(
                f"{path}: {_quote(name)} is not a header field name (an RFC 9110 "
                "token: letters, digits and !#$%&'*+-.^_`|~)"
            )
        elif lower == "host" and request:
            self._errors.append(
                f"{path}: {_quote(name)}: the Host sent upstream is set by "
                "upstream_host"
            )
        elif lower in _MANAGED_HEADERS:
            self._errors.append(
                f"{path}: {_quote(name)} is a hop-by-hop or framing field, which "
                "revproxy manages itself"
            )
        elif lower in seen:
            self._errors.append(
                f"{path}: {_quote(name)} already has a rule (in {seen[lower]}); "
                "give each field one rule"
            )
        else:
            seen[lower] = kind
            return True
        return False


@attrs.frozen
class _SiteAnswers:
    """
    What a site answers besides its own upstreams, as L{_Parser._siteAnswers}
    read it.
    """

    routes: tuple[RouteConfig, ...]
    redirect: Redirect | None
    respond: Respond | None
    request_headers: HeaderRules
    response_headers: HeaderRules
    upstream_host: str


def routeWarnings(config: Config) -> list[str]:
    """
    What is valid in the routes of C{config} but surely not meant: a route
    that no request can reach, because an earlier route of its site has the
    same matcher and takes all its methods (or a route with
    C{path_prefix = "/"} and no C{methods} leaves the site's own upstreams
    unused); and a redirect that sends a request it answers back to the
    same URL, a loop.

    @return: One C{"key.path: problem"} per warning.
    """
    warnings: list[str] = []
    for siteIndex, site in enumerate(config.sites):
        sitePath = f"sites[{siteIndex}]"
        warnings.extend(_shadowedRoutes(sitePath, site))
        if site.redirect is not None:
            warnings.extend(
                _redirectLoops(f"{sitePath}.redirect.to", config, site, None)
            )
        for route in site.routes:
            if route.redirect is not None:
                warnings.extend(
                    _redirectLoops(
                        f"{sitePath}.routes[{route.index}].redirect.to",
                        config,
                        site,
                        route,
                    )
                )
    return warnings


def _shadowedRoutes(sitePath: str, site: SiteConfig) -> list[str]:
    """
    The warnings of the routes of C{site} that no request reaches.
    """
    warnings: list[str] = []
    for route in site.routes:
        for earlier in site.routes[: route.index]:
            if (earlier.path, earlier.path_prefix) != (
                route.path,
                route.path_prefix,
            ):
                continue
            if earlier.methods and not (
                route.methods and set(route.methods) <= set(earlier.methods)
            ):
                continue
            key = "path" if route.path is not None else "path_prefix"
            value = route.path if route.path is not None else route.path_prefix
            taken = "every method" if not earlier.methods else "all its methods"
            warnings.append(
                f"{sitePath}.routes[{route.index}]: no request reaches this "
                f"route: routes[{earlier.index}] has the same {key} "
                f"{_quote(value or '')} and takes {taken}"
            )
            break
    catchAll = [r for r in site.routes if r.path_prefix == "/" and not r.methods]
    if site.upstreams and catchAll:
        warnings.append(
            f"{sitePath}.upstreams: no request reaches them: "
            f'routes[{catchAll[0].index}] has path_prefix = "/" and takes every '
            "method"
        )
    return warnings


def _redirectLoops(
    keyPath: str, config: Config, site: SiteConfig, route: RouteConfig | None
) -> list[str]:
    """
    A warning when the redirect at C{keyPath} sends a request it answers
    back to the same URL, for one of the site's hosts and the schemes it is
    served over.  The request tried has the path of the route (its exact
    path, or its prefix itself), or C{/} for the site's own redirect.
    """
    redirect = route.redirect if route is not None else site.redirect
    assert redirect is not None
    schemes = []
    if config.server.listen_http and not site.redirect_http:
        schemes.append("http")
    if site.tls != "none" and config.server.listen_https:
        schemes.append("https")
    hosts = [h.replace("*", "x", 1) for h in site.hosts] or ["default.invalid"]
    if route is None:
        path, suffix = "/", ""
    elif route.path is not None:
        path, suffix = route.path, ""
    else:
        path, suffix = route.path_prefix or "/", ""
    for scheme in schemes:
        for host in hosts:
            netloc = f"[{host}]" if ":" in host else host
            request = f"{scheme}://{netloc}{path}"
            values = dict.fromkeys(PLACEHOLDERS, "")
            values.update(
                host=netloc,
                uri=path,
                path=path,
                scheme=scheme,
                client_ip="192.0.2.1",
                request_id="0",
                path_suffix=suffix,
            )
            target = renderLocation(redirect.to, values).decode("utf-8", "replace")
            if _sameURL(urljoin(request, target), request):
                return [
                    f"{keyPath}: {_quote(redirect.to.source)} sends {request} "
                    "back to itself: a redirect loop"
                ]
    return []


def _sameURL(a: str, b: str) -> bool:
    """
    Whether two absolute URLs name the same resource: same scheme, host
    (any case), port (the default one or none) and path and query.
    """

    def key(url: str) -> tuple[object, ...] | None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if port is None:
            port = {"http": 80, "https": 443}.get(scheme)
        return (scheme, parts.hostname, port, parts.path or "/", parts.query)

    return key(a) is not None and key(a) == key(b)
