"""Identity tokens and TURN credentials, sans I/O (time passed in).

A token is a JWT signed with HS256 by the hub's secret: ``sub`` is the client
id it is good for, ``iat`` / ``exp`` its issue and expiry times. ``softphone
token --as ID`` mints one; ``softphone serve --secret S`` checks it on every
WebSocket connection (``/ws?id=ID&token=T``).

TURN credentials follow the TURN REST scheme that coturn's
``use-auth-secret`` / ``static-auth-secret`` checks: username
``"<expiry unix time>:<id>"``, credential ``base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

import jwt

ALGORITHM: Final = "HS256"
#: Default lifetime of a minted token (seconds).
DEFAULT_TOKEN_TTL: Final = 24 * 3600.0
#: Default lifetime of TURN credentials handed out by ``/ice-servers``.
DEFAULT_TURN_TTL: Final = 3600.0
#: Shortest hub secret accepted (bytes): the HS256 key length RFC 7518 asks for.
MIN_SECRET_BYTES: Final = 32
#: Clock skew tolerated when checking ``exp`` (seconds).
LEEWAY: Final = 5.0


class AuthError(ValueError):
    """A token that does not let this connection in; the text says why (no secrets)."""


def check_secret(secret: str) -> str:
    """Return ``secret`` if it is long enough to sign tokens, else raise ValueError."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes long "
                         "(e.g. openssl rand -hex 32)")
    return secret


def mint_token(secret: str, client_id: str, now: float,
               ttl: float = DEFAULT_TOKEN_TTL) -> str:
    """A token for ``client_id`` valid from ``now`` for ``ttl`` seconds."""
    check_secret(secret)
    if ttl <= 0:
        raise ValueError("the token lifetime must be greater than 0")
    claims = {"sub": client_id, "iat": int(now), "exp": int(now + ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str | None, client_id: str, now: float) -> None:
    """Raise :class:`AuthError` unless ``token`` is a valid token for ``client_id`` at ``now``."""
    if not token:
        raise AuthError("missing token: connect with ?token= (softphone token --as ID)")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"], "verify_exp": False, "verify_iat": False,
                     "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise AuthError("token not signed by this hub") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except (jwt.InvalidTokenError, RecursionError):  # (a header nested deep)
        raise AuthError("malformed token") from None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError("malformed token: 'exp' is not a time")
    if now > exp + LEEWAY:
        raise AuthError("token expired")
    if claims.get("sub") != client_id:
        raise AuthError("token is for another id")


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    username: str
    credential: str
    expires: int


def turn_credentials(secret: str, client_id: str, now: float,
                     ttl: float = DEFAULT_TURN_TTL) -> TurnCredentials:
    """TURN REST credentials for ``client_id``, valid until ``now + ttl``."""
    expires = int(now + ttl)
    username = f"{expires}:{client_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username, base64.b64encode(digest).decode("ascii"), expires)
