"""
The C{twistd revproxy} subcommand.

twistd imports every IServiceMaker plugin module to list its subcommands, so
this one imports nothing from revproxy until the subcommand is chosen.
"""

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin
from twisted.python.usage import Options
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _RevProxyServiceMaker:
    tapname = "revproxy"
    description = "HTTP reverse proxy: routes by Host to pooled keep-alive upstreams."

    @property
    def options(self) -> type[Options]:
        from revproxy.tap import Options as RevProxyOptions

        return RevProxyOptions

    def makeService(self, options: Options) -> IService:
        from revproxy.tap import makeService

        return makeService(options)


serviceMaker = _RevProxyServiceMaker()
