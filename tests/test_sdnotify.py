"""
Tests for L{revproxy.sdnotify}'s pure part: reading C{$NOTIFY_SOCKET} and
keeping a status on one line.  The notifier, sending to a real C{AF_UNIX}
datagram socket, is tested in L{tests.integration.test_sdnotify}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from revproxy.sdnotify import oneLine, socketAddress


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
