"""
The Debian package's man pages through C{groff}, in a child process (the
checks on the files' text are in L{tests.test_packaging}).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.test_packaging import _DEBIAN, _read


class GroffTests(SynchronousTestCase):
    """
    What C{groff} complains about in both man pages.
    """

    pages = ("revproxy.8", "revproxy-admin.8")

    def test_groffWarnings(self) -> None:
        """
        C{groff -man -ww -z} has nothing to say about either page.
        """
        groff = shutil.which("groff")
        # groff-base (Priority: important; man-db needs it) is on every
        # Debian system.
        self.assertIsNotNone(
            groff, "groff is not installed (apt-get install groff-base)"
        )
        assert groff is not None
        for page in self.pages:
            _read(page)
            result = subprocess.run(
                [groff, "-man", "-ww", "-z", os.path.join(_DEBIAN, page)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            self.assertEqual((result.returncode, result.stderr), (0, ""), page)
