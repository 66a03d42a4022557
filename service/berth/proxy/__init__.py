"""The pull-through cache (docs/proxy.md): upstream registries mirrored into this storage."""
