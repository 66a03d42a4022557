"""Access control: htpasswd (Basic) and bearer-token auth, repository policies, the built-in
token endpoint. ``install`` wires it into the application; with ``auth.mode: none`` it adds
nothing, so the anonymous registry pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..config import Settings
    from .service import AuthService


def install(app: FastAPI, settings: Settings) -> AuthService | None:
    """Add the auth middleware (and the token endpoint when this registry issues tokens).

    Call it before adding the observability middleware, so refused requests are still logged
    and counted.
    """
    if settings.auth.mode == "none":
        return None
    from .middleware import AuthMiddleware
    from .service import AuthService

    service = AuthService(settings)
    app.state.auth = service
    if service.issuer is not None:
        from .endpoint import router

        app.include_router(router)
    app.add_middleware(AuthMiddleware, auth=service)
    return service


__all__ = ["install"]
