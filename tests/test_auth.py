"""Authentication against a real `openpcs serve`: SigV4 as boto3 and the AWS CLI send it, and access keys."""

from __future__ import annotations

import configparser
import datetime as dt
import http.client
import json
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

import boto3
import botocore
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import OpenPcs

FIFTEEN_MINUTES = dt.timedelta(minutes=15)
PREFIX = "AWSParallelComputingService"
JSON_10 = "application/x-amz-json-1.0"


def client(server: OpenPcs, access_key: str, secret_key: str, **config: object):
    return boto3.client("pcs", endpoint_url=server.url, region_name=server.credentials()["region"],
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        config=Config(retries={"max_attempts": 1}, **config))


def refusal(call) -> dict:
    """The error of a call that must be refused as AWS refuses unauthenticated requests."""
    with pytest.raises(ClientError) as excinfo:
        call()
    response = excinfo.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response
    assert response["ResponseMetadata"]["RequestId"]
    return response["Error"]


def openpcs_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "openpcs", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"openpcs {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def signing_clock(offset: dt.timedelta):
    """botocore signs with this time: the caller's clock `offset` away from the server's."""
    return mock.patch.object(botocore.auth, "get_current_datetime",
                             lambda *args, **kwargs: dt.datetime.now(dt.UTC).replace(tzinfo=None) + offset)


# --- Refusals -------------------------------------------------------------------------------------------

def test_an_unsigned_request_is_refused(server):
    unsigned = client(server, "x", "y", signature_version=botocore.UNSIGNED)
    error = refusal(unsigned.list_clusters)
    assert error["Code"] == "MissingAuthenticationTokenException"
    assert error["Message"]


def test_a_wrong_secret_is_refused(server):
    creds = server.credentials()
    wrong = server.client(secret_key=creds["aws_secret_access_key"][::-1])
    error = refusal(wrong.list_clusters)
    assert error["Code"] == "InvalidSignatureException"
    assert "signature" in error["Message"].lower()


def test_an_unknown_access_key_is_refused(server):
    stranger = server.client(access_key="AKOPAAAAAAAAAAAAAAAA")
    error = refusal(stranger.list_clusters)
    assert error["Code"] == "UnrecognizedClientException"
    assert error["Message"]


def test_a_body_changed_after_signing_is_refused(server):
    pcs = server.client()

    def tamper(request, **_):
        request.body = b'{"maxResults": 7}'
        request.headers["Content-Length"] = str(len(request.body))

    pcs.meta.events.register("before-send.pcs.ListClusters", tamper)
    error = refusal(pcs.list_clusters)
    assert error["Code"] == "InvalidSignatureException"


def signed_elsewhere(server: OpenPcs, service: str, region: str) -> tuple[int, str, dict]:
    """ListClusters signed with the right key but a credential scoped to `service` in `region`."""
    creds = server.credentials()
    request = AWSRequest("POST", server.url + "/", data=b"{}", headers={
        "X-Amz-Target": "AWSParallelComputingService.ListClusters", "Content-Type": "application/x-amz-json-1.0"})
    key = Credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"])
    SigV4Auth(key, service, region).add_auth(request)
    try:
        with urllib.request.urlopen(urllib.request.Request(request.url, data=request.body, method="POST",
                                                           headers=dict(request.headers.items())), timeout=30):
            raise AssertionError("accepted")
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers["x-amzn-ErrorType"], json.loads(refused.read())


def test_a_credential_scoped_to_another_region_is_refused(server):
    status, code, body = signed_elsewhere(server, "pcs", "eu-west-3")
    assert (status, code) == (403, "InvalidSignatureException")
    assert body["message"] == "Credential should be scoped to a valid region, not 'eu-west-3'. "


def test_a_credential_scoped_to_another_service_is_refused(server):
    status, code, body = signed_elsewhere(server, "ec2", server.credentials()["region"])
    assert (status, code) == (403, "InvalidSignatureException")
    assert body["message"] == "Credential should be scoped to correct service: 'pcs'. "


@pytest.mark.parametrize("offset, words", [(-(FIFTEEN_MINUTES + dt.timedelta(minutes=1)), "Signature expired"),
                                           (FIFTEEN_MINUTES + dt.timedelta(minutes=1), "Signature not yet current")])
def test_a_skewed_clock_over_15_minutes_is_refused(server, offset, words):
    pcs = server.client()
    with signing_clock(offset):
        error = refusal(pcs.list_clusters)
    assert error["Code"] == "InvalidSignatureException"
    assert words in error["Message"]


@pytest.mark.parametrize("offset", [dt.timedelta(minutes=-14), dt.timedelta(minutes=14)])
def test_a_skewed_clock_within_15_minutes_is_accepted(server, offset):
    pcs = server.client()
    with signing_clock(offset):
        assert pcs.list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


# --- Replays: what the signature must cover ----------------------------------------------------------------

def signed_over(server: OpenPcs, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    """botocore's SigV4 headers for POST / with `headers`: it signs them, Host and X-Amz-Date, and nothing else."""
    creds = server.credentials()
    request = AWSRequest("POST", server.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"]), "pcs",
              creds["region"]).add_auth(request)
    return dict(request.headers.items())


def sent_raw(server: OpenPcs, headers: dict[str, str], body: bytes) -> tuple[int, str, dict]:
    """POST / over a raw socket with exactly `headers` (in order) after Host; the status, error code and body."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("x-amzn-ErrorType"), json.loads(response.read())


def test_a_request_replayed_as_another_operation_is_refused(server):
    # Signed over Host and X-Amz-Date only, then sent with the target of the replayer's choice: DeleteCluster.
    body = b'{"clusterIdentifier": "pcs_0123456789"}'
    headers = signed_over(server, body, {})
    assert "SignedHeaders=host;x-amz-date," in headers["Authorization"]
    headers |= {"X-Amz-Target": f"{PREFIX}.DeleteCluster", "Content-Type": JSON_10}
    status, code, answer = sent_raw(server, headers, body)
    assert (status, code) == (403, "InvalidSignatureException"), answer  # it was a 404: DeleteCluster ran
    assert answer["message"] == "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."


def test_an_unsigned_content_type_is_refused(server):
    headers = signed_over(server, b"{}", {"X-Amz-Target": f"{PREFIX}.ListClusters"})
    headers["Content-Type"] = JSON_10
    status, code, answer = sent_raw(server, headers, b"{}")
    assert (status, code) == (403, "InvalidSignatureException"), answer
    assert answer["message"] == "'Content-Type' must be a 'SignedHeader' in the AWS Authorization."


def test_an_authorization_with_two_signatures_is_refused(server):
    headers = signed_over(server, b"{}", {"X-Amz-Target": f"{PREFIX}.ListClusters", "Content-Type": JSON_10})
    assert sent_raw(server, headers, b"{}")[0] == 200
    # A bogus signature first and the real one last: the last one used to win.
    headers["Authorization"] = headers["Authorization"].replace("Signature=", f"Signature={'0' * 64}, Signature=")
    status, code, answer = sent_raw(server, headers, b"{}")
    assert (status, code) == (403, "IncompleteSignatureException"), answer
    assert "more than one 'Signature' parameter" in answer["message"]


def test_refused_requests_leave_no_secret_in_the_log(server):
    creds = server.credentials()
    refusal(server.client(secret_key=creds["aws_secret_access_key"][::-1]).list_clusters)
    server.client().list_clusters()
    time.sleep(0.2)
    log = server.log()
    assert creds["aws_access_key_id"] in log  # Who called is logged ...
    assert creds["aws_secret_access_key"] not in log  # ... never their secret,
    assert creds["aws_secret_access_key"][::-1] not in log  # not even a wrong one,
    assert "Signature=" not in log  # nor the signature.


# --- The credentials file -------------------------------------------------------------------------------

def test_serve_writes_a_private_credentials_file(server):
    path = server.data_dir / "credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = configparser.ConfigParser()
    config.read(path)
    profile = config["openpcs"]
    assert set(profile) >= {"aws_access_key_id", "aws_secret_access_key", "region"}
    assert profile["aws_access_key_id"] and len(profile["aws_secret_access_key"]) >= 32
    assert profile["region"] == "us-east-1"
    assert server.client().list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


# --- `openpcs credentials` ------------------------------------------------------------------------------

def created_key(server: OpenPcs, description: str) -> tuple[str, str]:
    output = openpcs_cli("credentials", "create", "--data-dir", str(server.data_dir),
                         "--description", description).stdout
    config = configparser.ConfigParser()
    config.read_string(output)
    (section,) = config.sections()
    return config[section]["aws_access_key_id"], config[section]["aws_secret_access_key"]


def test_a_created_key_works_at_once_and_a_revoked_one_stops(server):
    access_key, secret_key = created_key(server, "for a test")
    assert access_key != server.credentials()["aws_access_key_id"]
    pcs = client(server, access_key, secret_key)
    assert pcs.list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200

    revoked = openpcs_cli("credentials", "revoke", "--data-dir", str(server.data_dir), access_key)
    assert access_key in revoked.stdout
    deadline = time.monotonic() + 2.5
    while True:
        try:
            pcs.list_clusters()
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "UnrecognizedClientException"
            break
        assert time.monotonic() < deadline, "a revoked key still works after 2.5 s"
        time.sleep(0.1)
    # The service's own key is untouched.
    assert server.client().list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_credentials_list_shows_keys_but_never_a_secret(server):
    access_key, secret_key = created_key(server, "listed")
    openpcs_cli("credentials", "revoke", "--data-dir", str(server.data_dir), access_key)
    output = openpcs_cli("credentials", "list", "--data-dir", str(server.data_dir)).stdout
    default = server.credentials()
    assert default["aws_access_key_id"] in output
    assert access_key in output
    line = next(line for line in output.splitlines() if access_key in line)
    assert "revoked" in line and "listed" in line
    assert secret_key not in output
    assert default["aws_secret_access_key"] not in output


def test_revoking_an_unknown_key_fails_clearly(server):
    result = openpcs_cli("credentials", "revoke", "--data-dir", str(server.data_dir), "AKOPNOSUCHKEY0000000",
                         check=False)
    assert result.returncode != 0
    assert "AKOPNOSUCHKEY0000000" in result.stderr
    assert "Traceback" not in result.stderr


def test_revoking_a_key_twice_fails_clearly(server):
    access_key, _ = created_key(server, "twice")
    openpcs_cli("credentials", "revoke", "--data-dir", str(server.data_dir), access_key)
    result = openpcs_cli("credentials", "revoke", "--data-dir", str(server.data_dir), access_key, check=False)
    assert result.returncode != 0
    assert access_key in result.stderr


def test_credentials_commands_refuse_a_data_dir_without_openpcs(tmp_path):
    missing = tmp_path / "typo"
    for args in (["create"], ["list"], ["revoke", "AKOPAAAAAAAAAAAAAAAA"]):
        result = openpcs_cli("credentials", *args, "--data-dir", str(missing), check=False)
        assert result.returncode != 0
        assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not missing.exists()  # No new, empty store that no server would read.


# --- The AWS CLI ----------------------------------------------------------------------------------------

def test_the_aws_cli_works_with_openpcs_env(server):
    assert "clusters" in server.aws_json("pcs", "list-clusters")


def test_the_aws_cli_fails_clearly_with_an_altered_secret(server, tmp_path):
    original = server.data_dir / "credentials"
    config = configparser.ConfigParser()
    config.read(original)
    config["openpcs"]["aws_secret_access_key"] = config["openpcs"]["aws_secret_access_key"][::-1]
    altered = tmp_path / "credentials"
    with altered.open("w") as handle:
        config.write(handle)
    env = server.cli_env()
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(altered)
    result = subprocess.run(["aws", "--output", "json", "pcs", "list-clusters"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "InvalidSignatureException" in result.stderr
    assert "signature" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_the_cli_env_points_at_the_service_files(server):
    env = server.cli_env()
    assert Path(env["AWS_SHARED_CREDENTIALS_FILE"]) == (server.data_dir / "credentials").resolve()
    assert env["AWS_PROFILE"] == "openpcs"
    assert env["AWS_ENDPOINT_URL_PCS"] == env["AWS_ENDPOINT_URL_SAGEMAKER"] == server.url
