"""Request bodies: Distribution's envelope, or one CloudEvents 1.0 event (structured JSON)."""

from __future__ import annotations

import json
from typing import Any

from .model import DISTRIBUTION_MEDIA_TYPE, VERBS, Event

CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"


def distribution(event: Event) -> tuple[bytes, str]:
    """Distribution's envelope, so existing receivers work unchanged."""
    return json.dumps({"events": [event.distribution()]}).encode(), DISTRIBUTION_MEDIA_TYPE


def cloudevent(event: Event) -> dict[str, Any]:
    t = event.target
    if t.tag:
        subject = f"{t.repository}:{t.tag}"
    elif t.digest:
        subject = f"{t.repository}@{t.digest}"
    else:
        subject = t.repository
    base = event.origin.base_url
    return {
        "specversion": "1.0",
        "id": event.id,
        "type": f"dev.berth.{event.kind}.{VERBS[event.action]}",
        # A URI reference naming the registry: where it was reached, else the instance.
        "source": base or f"urn:berth:{event.instance_id}",
        "subject": subject,
        "time": event.timestamp,
        "datacontenttype": "application/json",
        "data": event.distribution(),
    }


def cloudevents(event: Event) -> tuple[bytes, str]:
    return json.dumps(cloudevent(event)).encode(), CLOUDEVENTS_MEDIA_TYPE


FORMATS = {"distribution": distribution, "cloudevents": cloudevents}

__all__ = ["CLOUDEVENTS_MEDIA_TYPE", "FORMATS", "cloudevent"]
