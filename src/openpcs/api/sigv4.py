"""Server-side verification of AWS Signature Version 4 (header-signed requests only).

The canonical forms follow botocore's signer (``botocore.auth.SigV4Auth``), which is what every AWS SDK
and the CLI send us, and the error codes and messages follow what AWS JSON services return.

Caller contract (see ``SigV4Verifier.verify``):

* ``path`` is the request path *as sent on the wire*, still percent-encoded and without the query (ASGI:
  ``scope["raw_path"].decode("latin-1")``, not the decoded ``scope["path"]``): for non-S3 services the
  canonical URI is the wire path URI-encoded once more, so the decoded path would not verify.
* ``headers`` maps lower-case names to values decoded as latin-1, repeated headers joined with ``","``.

Messages never contain the signature or a secret: the ``Authorization=...`` echo AWS appends to
``IncompleteSignatureException`` is rebuilt here from the parsed, validated parts only.

What must be signed is what AWS requires (IAM user guide, "Create a signed AWS API request"): Host, Content-Type
when it is sent, and every x-amz-* header sent (X-Amz-Date, X-Amz-Target, X-Amz-Security-Token, ...), all of
which botocore signs. Otherwise whoever replays a request could change what it does: X-Amz-Target turns a
GetQueue into a DeleteQueue under the same signature. The request's time comes from X-Amz-Date or, without it,
from a signed Date header, as AWS reads it.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote_plus

from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
_DATE_RE = re.compile(r"\d{8}")
_CREDENTIAL_RE = re.compile(r"([^/\s]+)/(\d{8})/([^/\s]+)/([^/\s]+)/aws4_request")
# Lower-case HTTP token characters (RFC 9110 tchar), ';'-separated.
_SIGNED_HEADERS_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+(?:;[!#$%&'*+.^_`|~0-9a-z-]+)*")
# What may be echoed back: short, printable, no spaces, and no long hex run (which could be a signature).
_ECHO_SAFE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~;/-]{1,256}")
_LONG_HEX_RE = re.compile(r"[0-9a-fA-F]{32}")

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)

# Signing keys change once a day per (secret, region, service); bound the cache so that a flood of
# distinct credential scopes cannot grow it without limit.
_KEY_CACHE_MAX = 1024


class AuthError(Exception):
    """A refused request, shaped as AWS shapes it."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def _fmt_time(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _safe(value: str) -> str:
    """`value` if it may be echoed back to the client, else a placeholder."""
    if _ECHO_SAFE_RE.fullmatch(value) and not _LONG_HEX_RE.search(value):
        return value
    return "<redacted>"


def _echo(algorithm: str, params: Mapping[str, str]) -> str:
    """The ``Authorization=...`` suffix AWS appends, from validated pieces only, signature redacted."""
    parts = [f"{name}={_safe(params[name])}" for name in ("Credential", "SignedHeaders") if name in params]
    if "Signature" in params:
        parts.append("Signature=<redacted>")
    return f" Authorization={_safe(algorithm)} {', '.join(parts)}".rstrip()


def _incomplete(problem: str, algorithm: str, params: Mapping[str, str]) -> AuthError:
    return AuthError("IncompleteSignatureException", problem + _echo(algorithm, params))


def _credential_problem(credential: str) -> str:
    """Why a Credential failed _CREDENTIAL_RE (off the hot path: only for the error message)."""
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts) or any(c.isspace() for c in credential):
        return "Credential must have the form <access key id>/<yyyymmdd>/<region>/<service>/aws4_request."
    if parts[4] != "aws4_request":
        return "Credential should be scoped with a valid terminator: 'aws4_request'."
    return "Credential should be scoped to a date of the form yyyymmdd."


def _parse_amz_date(amz_date: str) -> float | None:
    """Unix time of an X-Amz-Date value (yyyyMMddTHHmmssZ), or None if it is not one."""
    if not _AMZ_DATE_RE.fullmatch(amz_date):
        return None
    try:
        return datetime(
            int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]),
            int(amz_date[9:11]), int(amz_date[11:13]), int(amz_date[13:15]), tzinfo=UTC,
        ).timestamp()
    except ValueError:  # e.g. month 13
        return None


def _parse_http_date(value: str) -> float | None:
    """Unix time of an HTTP date (what botocore writes in a Date header it signs), or None if it is not one."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()  # "-0000" parses without a zone: UTC


def _header_name(name: str) -> str:
    """A lower-case header name as AWS writes it in messages: 'X-Amz-Target'."""
    return "-".join(part.capitalize() for part in name.split("-"))


def _unsigned_header(headers: Mapping[str, str], signed: list[str], date_header: str) -> str | None:
    """The first header that AWS requires to be signed and that is not, or None."""
    if "host" not in signed:
        return "host"
    for name in headers:
        if name not in signed and (name.startswith("x-amz-") or name in ("content-type", date_header)):
            return name
    return None


def _canonical_uri(path: str) -> str:
    if path == "/" or not path:  # The only path an AWS JSON client ever sends.
        return "/"
    # Dot segments and repeated slashes removed, then URI-encoded again (AWS double-encodes for non-S3).
    return quote(normalize_url_path(path), safe="/~")


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        # Decode what the client encoded, then re-encode canonically (RFC 3986: only unreserved kept, space
        # as %20). '+' decodes to a space as in any query string; SDKs send a literal '+' as %2B.
        pairs.append((quote(unquote_plus(name), safe="-_.~"), quote(unquote_plus(value), safe="-_.~")))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


class SigV4Verifier:
    """Verifies header-signed SigV4 requests; ``lookup_secret`` maps an access key id to its secret.

    With ``region``, a credential scoped to any other region is refused, as AWS refuses it.
    """

    def __init__(self, lookup_secret: Callable[[str], str | None], max_skew_seconds: int = 900,
                 region: str | None = None) -> None:
        self._lookup_secret = lookup_secret
        self._region = region
        self._max_skew = max_skew_seconds
        self._skew_text = f"{max_skew_seconds // 60} min." if max_skew_seconds % 60 == 0 else (
            f"{max_skew_seconds} sec."
        )
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        # The last date header seen: (its name, its value, unix time, ISO 8601 basic form).
        self._last_date: tuple[str, str, float, str] = ("", "", 0.0, "")

    def _signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        cache_key = (secret, date, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (date, region, service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _request_time(self, date_header: str, stamp: str) -> tuple[float, str] | None:
        """When the request says it was signed: unix time and the ISO 8601 basic form the string to sign holds."""
        last = self._last_date  # One read: another thread may replace it meanwhile.
        if last[0] == date_header and last[1] == stamp:
            return last[2], last[3]
        when = _parse_amz_date(stamp)
        if when is None and date_header == "date":
            when = _parse_http_date(stamp)
        if when is None:
            return None
        iso = _fmt_time(when)
        # Concurrent requests mostly carry the same second; parsing a date costs as much as the HMAC.
        self._last_date = (date_header, stamp, when, iso)
        return when, iso

    def verify(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
        service: str | None = None,
    ) -> str:
        """Returns the access key id that signed the request, or raises AuthError.

        `headers` has lower-case names (an ASGI server gives them so); `query` is the raw query string
        (no '?'); `path` is the raw, still percent-encoded path; `now` is a unix timestamp (defaults to
        time.time()); `service`, if given, is the signing name the credential must be scoped to.
        """
        authorization = headers.get("authorization", "").strip()
        if not authorization:
            # Also the answer to presigned (query-string) requests, which we do not support.
            raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")

        # --- Parse "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..." -----------------
        algorithm, _, rest = authorization.partition(" ")
        params: dict[str, str] = {}
        if algorithm != ALGORITHM:
            raise _incomplete(
                f"Unsupported Authorization algorithm; only '{ALGORITHM}' is accepted.", algorithm, params
            )
        for item in rest.split(","):
            item = item.strip()
            if not item:
                continue
            name, eq, value = item.partition("=")
            if not eq:
                raise _incomplete(
                    "Invalid key=value pair (missing equal-sign) in Authorization header.", algorithm, params
                )
            name = name.strip()
            if name in params:  # Which one would count? Either choice lets a proxy and us read different ones.
                raise _incomplete(f"Authorization header has more than one '{_safe(name)}' parameter.",
                                  algorithm, params)
            params[name] = value.strip()
        missing = [
            f"Authorization header requires '{name}' parameter."
            for name in ("Credential", "Signature", "SignedHeaders")
            if not params.get(name)
        ]
        if missing:
            raise _incomplete(" ".join(missing), algorithm, params)

        signature = params["Signature"]
        if not _SIGNATURE_RE.fullmatch(signature):
            # Checked before compare_digest, which raises TypeError on non-ASCII str.
            raise _incomplete("Signature must be 64 lower-case hexadecimal characters.", algorithm, params)

        credential = params["Credential"]
        match = _CREDENTIAL_RE.fullmatch(credential)
        if match is None:
            raise _incomplete(_credential_problem(credential), algorithm, params)
        access_key, cred_date, region, service_in_scope = match.groups()

        signed_headers = params["SignedHeaders"]
        if not _SIGNED_HEADERS_RE.fullmatch(signed_headers):
            raise _incomplete(
                "SignedHeaders must be lower-case header names separated by ';'.", algorithm, params
            )
        signed_names = signed_headers.split(";")
        date_header = "x-amz-date" if "x-amz-date" in headers else "date"
        if date_header not in headers:
            raise _incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                              algorithm, params)
        unsigned = _unsigned_header(headers, signed_names, date_header)
        if unsigned is not None:
            # AWS's JSON services (DynamoDB, for one) answer an unsigned Host with this code, not with
            # IncompleteSignature: the Authorization header is well-formed, its signature just covers too little.
            raise AuthError("InvalidSignatureException",
                            f"'{_header_name(unsigned)}' must be a 'SignedHeader' in the AWS Authorization.")
        stamp = headers[date_header].strip()
        request = self._request_time(date_header, stamp)
        if request is None:
            raise _incomplete(
                "X-Amz-Date must be in ISO-8601 basic format (yyyyMMdd'T'HHmmss'Z')." if date_header == "x-amz-date"
                else "Date must be an HTTP date or in ISO-8601 basic format (yyyyMMdd'T'HHmmss'Z').",
                algorithm, params)
        request_time, amz_date = request
        if amz_date[:8] != cred_date:
            raise _incomplete(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{cred_date}' != '{amz_date[:8]}', from '{stamp}'.",
                algorithm,
                params,
            )

        # --- Who signed, and when ----------------------------------------------------------------------
        secret = self._lookup_secret(access_key)
        if secret is None:
            raise AuthError(
                "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        if self._region is not None and region != self._region:
            raise AuthError("InvalidSignatureException",
                            f"Credential should be scoped to a valid region, not '{region}'. ")
        if service is not None and service != service_in_scope:
            raise AuthError("InvalidSignatureException",
                            f"Credential should be scoped to correct service: '{service}'. ")

        if now is None:
            now = time.time()
        if request_time < now - self._max_skew:
            raise AuthError(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than {_fmt_time(now - self._max_skew)} "
                f"({_fmt_time(now)} - {self._skew_text})",
            )
        if request_time > now + self._max_skew:
            raise AuthError(
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than "
                f"{_fmt_time(now + self._max_skew)} ({_fmt_time(now)} + {self._skew_text})",
            )

        # --- Recompute the signature -------------------------------------------------------------------
        # The body is always covered: a declared hash must be the real one, and UNSIGNED-PAYLOAD is not
        # honoured (the canonical request uses the real hash, so such a request fails as a mismatch).
        payload_hash = hashlib.sha256(body).hexdigest()
        declared = headers.get("x-amz-content-sha256")
        if declared is not None and declared != UNSIGNED_PAYLOAD and declared != payload_hash:
            raise AuthError(
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )

        canonical_headers = []
        for name in signed_names:
            value = headers.get(name)
            if value is None:  # Signed but not sent: cannot be what the client signed.
                raise AuthError("InvalidSignatureException", _MISMATCH)
            # Trim and collapse internal whitespace runs, as botocore does.
            canonical_headers.append(f"{name}:{' '.join(value.split())}\n")

        canonical_request = "\n".join((
            method.upper(),
            _canonical_uri(path),
            _canonical_query(query),
            "".join(canonical_headers),
            signed_headers,
            payload_hash,
        ))
        string_to_sign = "\n".join((
            ALGORITHM,
            amz_date,
            credential.partition("/")[2],  # The credential scope: date/region/service/aws4_request.
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        ))
        # hmac.digest is the one-shot C path, faster than building an hmac.HMAC object.
        expected = hmac.digest(
            self._signing_key(secret, cred_date, region, service_in_scope), string_to_sign.encode("utf-8"), "sha256"
        ).hex()
        if not hmac.compare_digest(expected, signature):
            raise AuthError("InvalidSignatureException", _MISMATCH)
        return access_key
