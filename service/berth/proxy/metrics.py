"""Pull-through cache metrics, labelled by upstream (summed over workers, as counters are)."""

from __future__ import annotations

from prometheus_client import Counter

HITS = Counter(
    "berth_proxy_hits",
    "Proxied requests answered from storage without fetching content upstream.",
    ["upstream", "kind"],
)
MISSES = Counter(
    "berth_proxy_misses",
    "Proxied requests that fetched content (a manifest or blob body) from the upstream.",
    ["upstream", "kind"],
)
UPSTREAM_BYTES = Counter(
    "berth_proxy_upstream_bytes", "Bytes of blobs received from the upstream.", ["upstream"]
)
UPSTREAM_ERRORS = Counter(
    "berth_proxy_upstream_errors",
    "Failed upstream exchanges: unavailable, timeout, throttled, refused, invalid.",
    ["upstream", "reason"],
)
STALE = Counter(
    "berth_proxy_stale_served",
    "Cached tags (and lists) served past their TTL because the upstream failed.",
    ["upstream", "kind"],
)

__all__ = ["HITS", "MISSES", "STALE", "UPSTREAM_BYTES", "UPSTREAM_ERRORS"]
