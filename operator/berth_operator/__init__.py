"""Berth's Kubernetes operator: Registry and GarbageCollection custom resources (kopf)."""

GROUP = "berth.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "VERSION"]
