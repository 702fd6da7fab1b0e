# -*- test-case-name: tests.integration.test_h2conformance -*-
"""
Integration test: the HTTP/2 conformance cases of L{tests.h2conformance}
(h2spec's, RFC 9113 and RFC 7541) against a real C{twistd revproxy} over
TLS, each case on a connection of its own (issue #13).
"""

from __future__ import annotations

import re
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.integration.support import getReactor, runCommand

#: h2spec's cases for a server: every one must pass.
CASES = 146


class ConformanceTests(TestCase):
    """
    C{python -m tests.h2conformance --spawn}: every case passes.
    """

    timeout = 300

    def test_everyCase(self) -> Deferred[None]:
        """
        Every case passes, and there are at least as many as h2spec has.
        """

        async def check() -> None:
            result = await runCommand(
                getReactor(),
                [sys.executable, "-m", "tests.h2conformance", "--spawn"],
                seconds=240,
            )
            out = result.out.decode("utf-8", "replace")
            failures = [line for line in out.splitlines() if line.startswith("FAIL")]
            self.assertEqual(failures, [], out + result.err.decode("utf-8", "replace"))
            self.assertEqual(result.code, 0, out)
            summary = re.search(r"^(\d+) passed, 0 failed$", out, re.MULTILINE)
            assert summary is not None, out
            self.assertGreaterEqual(int(summary.group(1)), CASES, out)

        return Deferred.fromCoroutine(check())
