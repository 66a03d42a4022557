"""Which endpoint wants which event: actions, repository globs, media types."""

from __future__ import annotations

from ..config import NotificationEndpointSettings
from ..globs import glob_to_regex
from .model import Event


class EndpointFilter:
    def __init__(self, settings: NotificationEndpointSettings) -> None:
        self.name = settings.name
        self.actions = frozenset(settings.actions)
        self._repositories = [glob_to_regex(g) for g in settings.repositories]
        self._media_types = frozenset(settings.media_types)

    def matches(self, event: Event) -> bool:
        if event.only:  # replayed for some endpoints: theirs, whatever the filters say now
            return self.name in event.only
        if event.action not in self.actions:
            return False
        repository = event.target.repository
        if self._repositories and not any(p.fullmatch(repository) for p in self._repositories):
            return False
        return not self._media_types or event.target.media_type in self._media_types


__all__ = ["EndpointFilter"]
