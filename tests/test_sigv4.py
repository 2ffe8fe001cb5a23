"""SigV4 verifier tests: requests are signed by botocore's own signer, exactly as the SDKs sign them."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials

from openpcs.api.sigv4 import AuthError, SigV4Verifier

AK = "AKIDEXAMPLEOPENPCS01"
SK = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
T0 = dt.datetime(2024, 1, 1, 0, 0, 0, tzinfo=dt.UTC)
ENDPOINT = "http://127.0.0.1:8080"
BODY = b'{"clusterName": "demo", "scheduler": {"type": "SLURM", "version": "23.11"}, "size": "SMALL"}'
MISMATCH = "InvalidSignatureException"

SignedRequest = tuple[str, str, str, dict[str, str], bytes]


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore takes the signing time from this function.
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: T0.replace(tzinfo=None))


def sign(
    body: bytes = BODY,
    path: str = "/",
    params: dict[str, str] | None = None,
    secret: str = SK,
    extra_headers: dict[str, str] | None = None,
) -> SignedRequest:
    """Sign as an AWS JSON client does; return what the server sees: (method, path, query, headers, body)."""
    headers = {
        "X-Amz-Target": "AWSParallelComputingService.CreateCluster",
        "Content-Type": "application/x-amz-json-1.0",
        **(extra_headers or {}),
    }
    request = AWSRequest(method="POST", url=ENDPOINT + path, data=body, headers=headers, params=params)
    SigV4Auth(Credentials(AK, secret), "pcs", "us-east-1").add_auth(request)
    prepared = request.prepare()
    wire = urlsplit(prepared.url)
    # The HTTP client adds Host; botocore signed it as derived from the URL.
    server_headers = {"host": wire.netloc, **{k.lower(): v for k, v in prepared.headers.items()}}
    return prepared.method, wire.path, wire.query, server_headers, prepared.body or b""


def signature_of(req: SignedRequest) -> str:
    return req[3]["authorization"].rsplit("Signature=", 1)[1]


@pytest.fixture
def verifier() -> SigV4Verifier:
    return SigV4Verifier({AK: SK}.get)


NOW = T0.timestamp()


def refuse(verifier: SigV4Verifier, req: SignedRequest, now: float = NOW) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(*req, now=now)
    err = info.value
    assert err.status == 403
    # Nothing secret, and never the signature, in what goes back to the client.
    assert SK not in err.message and SK not in str(err)
    auth = req[3].get("authorization", "")
    if "Signature=" in auth:
        sig = auth.rsplit("Signature=", 1)[1].split(",")[0].strip()
        if sig:
            assert sig not in err.message
    assert signature_of(sign()) not in err.message
    return err


# --- Accepted -------------------------------------------------------------------------------------------


def test_accepts_botocore_signed_json_post(verifier: SigV4Verifier) -> None:
    assert verifier.verify(*sign(), now=NOW) == AK


def test_accepts_empty_body(verifier: SigV4Verifier) -> None:
    assert verifier.verify(*sign(body=b""), now=NOW) == AK


def test_accepts_query_string(verifier: SigV4Verifier) -> None:
    req = sign(params={"b": "x y/z", "a": "1", "maxResults": "10", "é": "~ok+"})
    assert req[2]  # really sent with a query
    assert verifier.verify(*req, now=NOW) == AK


def test_accepts_query_string_encoded_as_sdks_send_it(verifier: SigV4Verifier) -> None:
    # botocore's endpoint builds the URL itself (%20 for space, %2B for '+') and signs that raw query.
    req = sign(path="/?b=x%20y%2Fz&a=1&c=%2B&d=&e")
    assert req[2] == "b=x%20y%2Fz&a=1&c=%2B&d=&e"
    assert verifier.verify(*req, now=NOW) == AK


def test_accepts_real_pcs_client_request(verifier: SigV4Verifier) -> None:
    """The whole SDK path: the PCS service model, the JSON serializer, the endpoint, the signer."""
    seen: list[SignedRequest] = []

    def capture(request: AWSRequest, **_kwargs: object) -> AWSResponse:
        wire = urlsplit(request.url)
        headers = {"host": wire.netloc, **{k.lower(): v for k, v in request.headers.items()}}
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
        seen.append((request.method, wire.path, wire.query, headers, request.body or b""))
        return AWSResponse(request.url, 200, {}, _Raw(b'{"clusters": []}'))

    session = boto3.session.Session(aws_access_key_id=AK, aws_secret_access_key=SK, region_name="us-east-1")
    client = session.client("pcs", endpoint_url=ENDPOINT)
    client.meta.events.register("before-send", capture)
    client.list_clusters()
    (req,) = seen
    assert req[3]["x-amz-target"] == "AWSParallelComputingService.ListClusters"
    assert verifier.verify(*req, now=NOW) == AK


class _Raw:
    """Just enough of a urllib3 response for botocore to read a body from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, *_args: object, **_kwargs: object) -> Iterator[bytes]:
        yield self._data


def test_accepts_path_with_special_characters(verifier: SigV4Verifier) -> None:
    # Paths arrive percent-encoded, as botocore's serializers build them.
    req = sign(path="/clusters/my%20cluster/a%3Ab~c%2Fd/%C3%A9")
    assert verifier.verify(*req, now=NOW) == AK


def test_accepts_unnormalized_path(verifier: SigV4Verifier) -> None:
    req = sign(path="/a//b/./c/../d")
    assert req[1] == "/a//b/./c/../d"
    assert verifier.verify(*req, now=NOW) == AK


def test_accepts_whitespace_in_header_values(verifier: SigV4Verifier) -> None:
    req = sign(extra_headers={"X-Custom": "  a   b  c "})
    assert verifier.verify(*req, now=NOW) == AK


def test_accepts_correct_content_sha256_header(verifier: SigV4Verifier) -> None:
    req = sign(extra_headers={"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})
    assert verifier.verify(*req, now=NOW) == AK


@pytest.mark.parametrize("offset", [-899, -900, 899, 900])
def test_accepts_skew_up_to_15_minutes(verifier: SigV4Verifier, offset: int) -> None:
    assert verifier.verify(*sign(), now=NOW - offset) == AK


def test_signing_key_cache_is_used(verifier: SigV4Verifier) -> None:
    verifier.verify(*sign(), now=NOW)
    verifier.verify(*sign(body=b"{}"), now=NOW)
    assert len(verifier._keys) == 1


def test_default_now_is_wall_clock(verifier: SigV4Verifier) -> None:
    # Signed at T0 (2024), verified against the real clock: long expired.
    with pytest.raises(AuthError, match="Signature expired"):
        verifier.verify(*sign())


# --- Refused --------------------------------------------------------------------------------------------


def replace_header(req: SignedRequest, name: str, value: str | None) -> SignedRequest:
    method, path, query, headers, body = req
    headers = dict(headers)
    if value is None:
        headers.pop(name, None)
    else:
        headers[name] = value
    return method, path, query, headers, body


def test_missing_authorization(verifier: SigV4Verifier) -> None:
    err = refuse(verifier, replace_header(sign(), "authorization", None))
    assert (err.code, err.message) == ("MissingAuthenticationTokenException", "Missing Authentication Token")


def test_presigned_query_is_missing_authentication(verifier: SigV4Verifier) -> None:
    req = replace_header(sign(), "authorization", None)
    req = (req[0], req[1], "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00", req[3], req[4])
    assert refuse(verifier, req).code == "MissingAuthenticationTokenException"


def test_tampered_body(verifier: SigV4Verifier) -> None:
    req = sign()
    err = refuse(verifier, req[:4] + (BODY.replace(b"demo", b"evil"),))
    assert err.code == MISMATCH
    assert err.message.startswith("The request signature we calculated does not match")


def test_tampered_signed_header(verifier: SigV4Verifier) -> None:
    req = replace_header(sign(), "x-amz-target", "AWSParallelComputingService.DeleteCluster")
    assert refuse(verifier, req).code == MISMATCH


def test_tampered_path_and_query(verifier: SigV4Verifier) -> None:
    req = sign(params={"a": "1"})
    assert refuse(verifier, (req[0], "/other", req[2], req[3], req[4])).code == MISMATCH
    assert refuse(verifier, (req[0], req[1], "a=2", req[3], req[4])).code == MISMATCH


def test_signed_header_not_sent(verifier: SigV4Verifier) -> None:
    assert refuse(verifier, replace_header(sign(), "content-type", None)).code == MISMATCH


def test_wrong_secret(verifier: SigV4Verifier) -> None:
    err = refuse(verifier, sign(secret="not-the-secret-key"))
    assert err.code == MISMATCH
    assert "not-the-secret-key" not in err.message


def test_unknown_access_key() -> None:
    err = refuse(SigV4Verifier(lambda _ak: None), sign())
    assert err.code == "UnrecognizedClientException"
    assert err.message == "The security token included in the request is invalid."


def test_content_sha256_header_mismatch(verifier: SigV4Verifier) -> None:
    req = sign(extra_headers={"X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()})
    err = refuse(verifier, req)
    assert err.code == MISMATCH
    assert "'x-amz-content-sha256'" in err.message


def test_unsigned_payload_is_not_honoured(verifier: SigV4Verifier) -> None:
    req = sign(extra_headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert refuse(verifier, req).code == MISMATCH


def test_expired_just_over_15_minutes(verifier: SigV4Verifier) -> None:
    err = refuse(verifier, sign(), now=NOW + 901)
    assert err.code == MISMATCH
    assert err.message == (
        "Signature expired: 20240101T000000Z is now earlier than 20240101T000001Z "
        "(20240101T001501Z - 15 min.)"
    )


def test_not_yet_current_just_over_15_minutes(verifier: SigV4Verifier) -> None:
    err = refuse(verifier, sign(), now=NOW - 901)
    assert err.code == MISMATCH
    assert err.message == (
        "Signature not yet current: 20240101T000000Z is still later than 20231231T235959Z "
        "(20231231T234459Z + 15 min.)"
    )


def test_expired_message_format_from_brief(verifier: SigV4Verifier) -> None:
    err = refuse(verifier, sign(), now=NOW + 25 * 60)
    assert err.message == (
        "Signature expired: 20240101T000000Z is now earlier than 20240101T001000Z "
        "(20240101T002500Z - 15 min.)"
    )


def _auth_variants() -> Iterator[tuple[str, str, str]]:
    """(id, how to rewrite the good Authorization header, expected message fragment)."""
    yield "wrong-algorithm", "AWS4-HMAC-SHA1 {rest}", "only 'AWS4-HMAC-SHA256'"
    yield "sigv2", "AWS {ak}:c2lnbmF0dXJl", "only 'AWS4-HMAC-SHA256'"
    yield "bearer", "Bearer {sig}", "only 'AWS4-HMAC-SHA256'"
    yield "algorithm-only", "AWS4-HMAC-SHA256", "requires 'Credential' parameter"
    yield "no-signature", "AWS4-HMAC-SHA256 {cred}, {sh}", "requires 'Signature' parameter"
    yield "empty-signature", "AWS4-HMAC-SHA256 {cred}, {sh}, Signature=", "requires 'Signature' parameter"
    yield "no-signed-headers", "AWS4-HMAC-SHA256 {cred}, Signature={sig}", "requires 'SignedHeaders'"
    yield "no-credential", "AWS4-HMAC-SHA256 {sh}, Signature={sig}", "requires 'Credential' parameter"
    yield "missing-equals", "AWS4-HMAC-SHA256 {cred}, {sh}, Signature {sig}", "missing equal-sign"
    yield "missing-comma", "AWS4-HMAC-SHA256 {cred}, {sh} Signature={sig}", "requires 'Signature'"
    yield "short-signature", "AWS4-HMAC-SHA256 {cred}, {sh}, Signature={sig_short}", "64 lower-case hex"
    yield "upper-signature", "AWS4-HMAC-SHA256 {cred}, {sh}, Signature={sig_upper}", "64 lower-case hex"
    yield "non-ascii-signature", "AWS4-HMAC-SHA256 {cred}, {sh}, Signature=é{sig_short}", "64 lower-case hex"
    yield "credential-parts", (
        "AWS4-HMAC-SHA256 Credential={ak}/20240101/us-east-1/pcs, {sh}, Signature={sig}"
    ), "Credential must have the form"
    yield "credential-empty-part", (
        "AWS4-HMAC-SHA256 Credential={ak}//us-east-1/pcs/aws4_request, {sh}, Signature={sig}"
    ), "Credential must have the form"
    yield "credential-terminator", (
        "AWS4-HMAC-SHA256 Credential={ak}/20240101/us-east-1/pcs/aws5_request, {sh}, Signature={sig}"
    ), "valid terminator"
    yield "credential-date-format", (
        "AWS4-HMAC-SHA256 Credential={ak}/2024-1-1/us-east-1/pcs/aws4_request, {sh}, Signature={sig}"
    ), "yyyymmdd"
    yield "credential-date-mismatch", (
        "AWS4-HMAC-SHA256 Credential={ak}/20240102/us-east-1/pcs/aws4_request, {sh}, Signature={sig}"
    ), "'20240102' != '20240101', from '20240101T000000Z'"
    yield "upper-case-signed-headers", (
        "AWS4-HMAC-SHA256 {cred}, SignedHeaders=Host;X-Amz-Date, Signature={sig}"
    ), "SignedHeaders must be"
    yield "empty-signed-header-name", (
        "AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;;x-amz-date, Signature={sig}"
    ), "SignedHeaders must be"
    # A repeated part: which one counts must never be a guess (before, the last one won).
    yield "two-signatures", "AWS4-HMAC-SHA256 {cred}, {sh}, Signature={sig}, Signature={sig}", (
        "more than one 'Signature' parameter"
    )
    yield "two-credentials", "AWS4-HMAC-SHA256 {cred}, {cred}, {sh}, Signature={sig}", (
        "more than one 'Credential' parameter"
    )
    yield "two-signed-headers", "AWS4-HMAC-SHA256 {cred}, {sh}, SignedHeaders=host;x-amz-date, Signature={sig}", (
        "more than one 'SignedHeaders' parameter"
    )


@pytest.mark.parametrize(("template", "fragment"), [v[1:] for v in _auth_variants()],
                         ids=[v[0] for v in _auth_variants()])
def test_malformed_authorization(verifier: SigV4Verifier, template: str, fragment: str) -> None:
    req = sign()
    good = req[3]["authorization"]
    algorithm, rest = good.split(" ", 1)
    cred, sh, sig_part = (p.strip() for p in rest.split(","))
    sig = sig_part.split("=", 1)[1]
    bad = template.format(
        rest=rest, ak=AK, cred=cred, sh=sh, sig=sig, sig_short=sig[:40], sig_upper=sig.upper()
    )
    err = refuse(verifier, replace_header(req, "authorization", bad))
    assert err.code == "IncompleteSignatureException"
    assert fragment in err.message
    assert " Authorization=" in err.message
    assert sig[:32] not in err.message and sig.upper()[:32] not in err.message


def test_incomplete_message_echoes_header_without_signature(verifier: SigV4Verifier) -> None:
    req = sign()
    auth = req[3]["authorization"].replace("/aws4_request,", "/aws5_request,")
    err = refuse(verifier, replace_header(req, "authorization", auth))
    assert err.message == (
        "Credential should be scoped with a valid terminator: 'aws4_request'. Authorization=AWS4-HMAC-SHA256 "
        f"Credential={AK}/20240101/us-east-1/pcs/aws5_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=<redacted>"
    )


# --- What must be signed ----------------------------------------------------------------------------------


def sign_host_and_date_only(add: dict[str, str]) -> SignedRequest:
    """A valid signature over host and x-amz-date only, with `add` (lower-case names) sent unsigned beside it."""
    request = AWSRequest(method="POST", url=ENDPOINT + "/", data=BODY)
    SigV4Auth(Credentials(AK, SK), "pcs", "us-east-1").add_auth(request)
    headers = {"host": "127.0.0.1:8080", **{k.lower(): v for k, v in request.headers.items()}}
    assert "SignedHeaders=host;x-amz-date," in headers["authorization"]
    return "POST", "/", "", {**headers, **add}, BODY


@pytest.mark.parametrize("name, value, named", [
    ("x-amz-target", "AWSParallelComputingService.DeleteCluster", "X-Amz-Target"),
    ("content-type", "application/x-amz-json-1.0", "Content-Type"),
    ("x-amz-security-token", "token", "X-Amz-Security-Token"),
    ("x-amz-anything", "else", "X-Amz-Anything"),
])
def test_a_header_aws_requires_signed_is_refused_unsigned(verifier: SigV4Verifier, name: str, value: str,
                                                          named: str) -> None:
    # The signature itself is valid: without this rule, anyone replaying it could choose the operation.
    assert verifier.verify(*sign_host_and_date_only({}), now=NOW) == AK
    err = refuse(verifier, sign_host_and_date_only({name: value}))
    assert (err.code, err.message) == (MISMATCH, f"'{named}' must be a 'SignedHeader' in the AWS Authorization.")


def test_host_must_be_signed(verifier: SigV4Verifier) -> None:
    req = sign()
    auth = req[3]["authorization"].replace("SignedHeaders=content-type;host;", "SignedHeaders=content-type;")
    err = refuse(verifier, replace_header(req, "authorization", auth))
    assert (err.code, err.message) == (MISMATCH, "'Host' must be a 'SignedHeader' in the AWS Authorization.")


@pytest.mark.parametrize("name", ["user-agent", "x-amzn-trace-id", "date"])
def test_other_headers_may_go_unsigned(verifier: SigV4Verifier, name: str) -> None:
    # botocore leaves User-Agent and X-Amzn-Trace-Id unsigned; a Date beside X-Amz-Date does not date the request.
    assert verifier.verify(*replace_header(sign(), name, "Mon, 01 Jan 2024 00:00:00 GMT"), now=NOW) == AK


def test_accepts_a_request_dated_by_a_signed_date_header(verifier: SigV4Verifier) -> None:
    # AWS reads the time from Date when there is no X-Amz-Date; botocore then signs Date, as an HTTP date.
    req = sign(extra_headers={"Date": "replaced by botocore"})
    assert "x-amz-date" not in req[3] and req[3]["date"] == "Mon, 01 Jan 2024 00:00:00 -0000"
    assert verifier.verify(*req, now=NOW) == AK
    assert refuse(verifier, req, now=NOW + 901).message.startswith("Signature expired: 20240101T000000Z")


def test_a_date_header_that_dates_the_request_must_be_signed(verifier: SigV4Verifier) -> None:
    req = sign(extra_headers={"Date": "replaced by botocore"})
    auth = req[3]["authorization"].replace("SignedHeaders=content-type;date;", "SignedHeaders=content-type;")
    err = refuse(verifier, replace_header(req, "authorization", auth))
    assert (err.code, err.message) == (MISMATCH, "'Date' must be a 'SignedHeader' in the AWS Authorization.")


def test_a_malformed_date_header_is_incomplete(verifier: SigV4Verifier) -> None:
    req = replace_header(sign(extra_headers={"Date": "replaced by botocore"}), "date", "yesterday")
    err = refuse(verifier, req)
    assert err.code == "IncompleteSignatureException"
    assert err.message.startswith("Date must be an HTTP date")


@pytest.mark.parametrize("amz_date", [None, "2024-01-01T00:00:00Z", "20241301T000000Z", "20240101T000000"])
def test_missing_or_malformed_x_amz_date(verifier: SigV4Verifier, amz_date: str | None) -> None:
    err = refuse(verifier, replace_header(sign(), "x-amz-date", amz_date))
    assert err.code == "IncompleteSignatureException"
    assert "X-Amz-Date" in err.message


def test_auth_error_attributes() -> None:
    err = AuthError("SomeException", "some message")
    assert (err.code, err.message, err.status) == ("SomeException", "some message", 403)
    assert AuthError("X", "y", 400).status == 400
