"""
An HTTP/2 conformance runner in the manner of h2spec (RFC 9113 / 7540 and
RFC 7541 cases, one function each), on blocking sockets and raw frames,
against a server on loopback.  C{python -m tests.h2conformance --help}.
"""
