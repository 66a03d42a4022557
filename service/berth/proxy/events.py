"""How a pull-through fill appears in registry events (action ``fill``, docs/events.md)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config import UpstreamSettings
from ..events.model import Origin


def fill_origin(upstream: UpstreamSettings) -> Origin:
    """A fill is the cache's own fetch, shared by every request waiting on it: no user or
    client request is its cause, so the event names the cache (actor ``proxy``) and the
    upstream it fetched from (request host and method)."""
    return Origin(actor="proxy", host=urlsplit(upstream.url).netloc, method="GET")


__all__ = ["fill_origin"]
