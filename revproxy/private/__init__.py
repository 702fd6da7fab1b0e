"""
Every private name of another library that revproxy uses, one module per
library, so that a newcomer finds them in one place and an upgrade that
removes one fails one test (C{tests.test_private_names}) with one clear
message instead of a request in production.

  - L{revproxy.private.pyopenssl}: pyOpenSSL's OpenSSL binding, for the key
    exchange groups, and the type of C{NO_OVERLAPPING_PROTOCOLS};
  - L{revproxy.private.acme}: C{acme}'s POST-as-GET;
  - L{revproxy.private.twisted}: Twisted's TCP transport buffer, its
    server endpoints' addresses, a spawned process's pipes and
    C{IOpenSSLTrustRoot};
  - L{revproxy.private.h2}: an C{h2} stream's expected content-length;
  - L{revproxy.private.txredisapi}: whether a Redis connection is open.

Nothing outside this package names another library's private names.
"""
