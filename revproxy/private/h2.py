# -*- test-case-name: tests.test_private_names,tests.test_http2 -*-
"""
C{h2}'s private names: a stream's C{_expected_content_length}.
"""

from __future__ import annotations

from h2.connection import H2Connection


def forgetContentLength(conn: H2Connection, streamID: int) -> None:
    """
    Make C{h2} stop checking the body of C{streamID} against its
    content-length: the stream was answered in full before its body came
    (413, an early response), and a client that reads the answer stops
    sending and ends the stream short, which C{h2} would take as a
    connection error (C{InvalidBodyLengthError}), failing the connection's
    other streams.

    C{h2} has no public way to do this: its stream's private
    C{_expected_content_length} is set to L{None} here, the one place
    revproxy touches it.
    """
    stream = conn.streams.get(streamID)
    if stream is not None and hasattr(stream, "_expected_content_length"):
        stream._expected_content_length = None
