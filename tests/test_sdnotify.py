"""
Tests for L{revproxy.sdnotify}'s pure part: reading C{$NOTIFY_SOCKET} and
keeping a status on one line.  The notifier, sending to a real C{AF_UNIX}
datagram socket, is tested in L{tests.integration.test_sdnotify}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from revproxy.reload import Applied, Refused, SiteChanges
from revproxy.sdnotify import oneLine, servingStatus, socketAddress


class SocketAddressTests(SynchronousTestCase):
    """
    L{socketAddress} reads C{$NOTIFY_SOCKET} as systemd writes it.
    """

    def test_path(self) -> None:
        """
        An absolute path is a filesystem socket.
        """
        self.assertEqual(socketAddress("/run/systemd/notify"), b"/run/systemd/notify")

    def test_abstract(self) -> None:
        """
        C{@name} is the abstract socket C{\\0name}.
        """
        self.assertEqual(socketAddress("@sd-notify/1"), b"\0sd-notify/1")

    def test_unsupported(self) -> None:
        """
        Empty, relative, bare C{@} and C{vsock:} values name no address.
        """
        for value in ("", "run/notify", "@", "vsock:2:1234"):
            self.assertIsNone(socketAddress(value), value)


class OneLineTests(SynchronousTestCase):
    """
    L{oneLine} keeps a status on one line.
    """

    def test_lineBreaks(self) -> None:
        """
        Line breaks become spaces, so a message cannot add an assignment.
        """
        self.assertEqual(
            oneLine("bad config:\nREADY=1\r\nmore\0"), "bad config: READY=1 more"
        )


class ServingStatusTests(SynchronousTestCase):
    """
    L{servingStatus}: the one line systemd shows.
    """

    def applied(self, failed: tuple[str, ...] = ()) -> Applied:
        return Applied(3, "sha", SiteChanges((), (), (), 2), (), (), failed=failed)

    def test_serving(self) -> None:
        """
        Without a reload, it says what is served.
        """
        self.assertEqual(servingStatus(2, 1), "Serving 2 site(s), config generation 1")

    def test_reloaded(self) -> None:
        """
        After a reload that applied, it says so.
        """
        self.assertEqual(
            servingStatus(2, 3, self.applied()),
            "Reloaded: serving 2 site(s), config generation 3",
        )

    def test_refused(self) -> None:
        """
        After a refused reload, it gives the reason, cut at 300 characters.
        """
        self.assertEqual(
            servingStatus(2, 1, Refused("config_invalid", "bad")),
            "Reload failed, serving 2 site(s), config generation 1: bad",
        )
        long = servingStatus(2, 1, Refused("config_invalid", "x" * 400))
        self.assertTrue(long.endswith(": " + "x" * 297 + "..."), long)

    def test_partiallyApplied(self) -> None:
        """
        After a reload some followers of which failed, it names them.
        """
        self.assertEqual(
            servingStatus(2, 3, self.applied(("tls",))),
            "Reload failed, serving 2 site(s), config generation 3: "
            "partially applied, failed: tls",
        )
