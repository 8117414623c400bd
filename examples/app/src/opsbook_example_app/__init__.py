"""opsbook's example app: any WSGI app deploys the same way."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opsbook-example-app")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
