"""Real HTTP for tests: keel's background server helper under the name tests use."""

from keel.gateway.background import serving as serve_app

__all__ = ["serve_app"]
