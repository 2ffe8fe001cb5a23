"""Opaque, tamper-proof List tokens.

A token names the list it belongs to and the last position served (resources are ordered by an
ever-growing sequence number, so a page boundary never shifts when others are created or deleted), and
carries an HMAC so a forged or altered token is refused. Tokens expire after a day, as AWS's do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson

from .errors import ApiError

TOKEN_LIFETIME_SECONDS = 24 * 3600


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def issue(self, scope: str, after: int, now: float | None = None) -> str:
        payload = orjson.dumps({"s": scope, "a": after, "t": int(now or time.time())})
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def position(self, token: str | None, scope: str, now: float | None = None) -> int:
        """The position a token continues from (0 for the first page), or a ValidationException."""
        if token is None:
            return 0
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload, mac = raw[:-16], raw[-16:]
            if not hmac.compare_digest(mac, self._mac(payload)):
                raise ValueError("bad mac")
            data = orjson.loads(payload)
            position, issued, token_scope = int(data["a"]), int(data["t"]), data["s"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _invalid("The nextToken is not valid. Start again without it.") from exc
        if token_scope != scope:
            raise _invalid("The nextToken belongs to a different list. Start again without it.")
        if (now or time.time()) - issued > TOKEN_LIFETIME_SECONDS:
            raise _invalid("The nextToken has expired. Start again without it.")
        return position


def _invalid(message: str) -> ApiError:
    return ApiError("ValidationException", message, reason="fieldValidationFailed",
                    fieldList=[{"name": "nextToken", "message": message}])
