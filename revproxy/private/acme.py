# -*- test-case-name: tests.test_private_names -*-
"""
C{acme}'s private names: C{ClientV2._post_as_get}, the POST-as-GET of RFC
8555 section 6.3, which the library uses for its own polling but does not
offer.
"""

from __future__ import annotations

import requests
from acme.client import ClientV2


def postAsGet(client: ClientV2, url: str) -> requests.Response:
    """
    A POST-as-GET (RFC 8555 section 6.3) of C{url} through C{client}: a
    signed request with an empty payload, answered as a GET would be.
    """
    response: requests.Response = client._post_as_get(url)
    return response
