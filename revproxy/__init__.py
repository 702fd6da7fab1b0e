"""
revproxy: an HTTP/HTTPS reverse proxy on Twisted.
"""

__version__ = "0.1.0"
