"""Bearer-token authentication: every endpoint except ``/health/*`` requires ``Authorization: Bearer <token>``.

* no ``Authorization`` header, or not the ``Bearer`` scheme: 401 with ``WWW-Authenticate: Bearer``;
* a token that is not configured: 403.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest` against every configured digest
(the time does not depend on which one matched). The token never appears in logs; requests are logged
with a short, non-reversible ``client`` tag (the first 8 hex digits of the digest).
"""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.errors import ApiError
from serving.api.settings import token_digest

__all__ = ["bearer_scheme", "require_token"]

#: documents the scheme in OpenAPI ("Authorize" button at /docs); errors are raised by require_token
bearer_scheme = HTTPBearer(auto_error=False, description="API token (configured with MRI_API_TOKENS)")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mri-api"'}


def check_token(digests: frozenset[str], header: str | None) -> str:
    """The digest of the valid token in an ``Authorization`` header value; ApiError 401/403 otherwise."""
    if not header:
        raise ApiError(401, "missing bearer token", field="Authorization", expected="Authorization: Bearer <token>",
                       headers=_CHALLENGE, code="unauthorized")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "the Authorization header must use the Bearer scheme", field="Authorization",
                       expected="Authorization: Bearer <token>", headers=_CHALLENGE, code="unauthorized")
    digest = token_digest(token)
    ok = False
    for known in digests:
        ok |= hmac.compare_digest(known, digest)
    if not ok:
        raise ApiError(403, "the bearer token is not valid for this service", field="Authorization",
                       expected="a token configured on the server", code="forbidden")
    return digest


async def require_token(request: Request,
                        _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> str:
    """FastAPI dependency: the caller's token digest (stored on ``request.state.client``)."""
    settings = request.app.state.settings
    if not settings.auth.enabled:
        request.state.client = "anonymous"
        return "anonymous"
    digest = check_token(request.app.state.token_digests, request.headers.get("authorization"))
    request.state.client = digest[7:15]
    return digest
