"""The AWS JSON protocol layer against a real `openpcs serve`: what boto3 cannot send, sent raw.

Requests are signed with botocore's own SigV4 signer so that they pass authentication and reach the
protocol layer; the transport cases (oversized, stalled and cut bodies, garbage) use raw sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import SUBNET, OpenPcs, unique

from openpcs.api.http import HEADER_TIMEOUT, MAX_HEADER_BYTES
from openpcs.api.server import BODY_CHUNK_TIMEOUT, MAX_BODY_BYTES

PREFIX = "AWSParallelComputingService"
JSON_10 = "application/x-amz-json-1.0"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@pytest.fixture(scope="module")
def pcs(server: OpenPcs):
    return server.client()


@pytest.fixture(scope="module")
def lax_pcs(server: OpenPcs):
    """boto3 with its client-side validation off, so that the server's validation is what answers."""
    return server.client(parameter_validation=False)


def signed_headers(server: OpenPcs, body: bytes, target: str | None = f"{PREFIX}.ListClusters",
                   content_type: str | None = JSON_10, method: str = "POST") -> dict[str, str]:
    creds = server.credentials()
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if target is not None:
        headers["X-Amz-Target"] = target
    request = AWSRequest(method=method, url=server.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"]), "pcs",
              creds["region"]).add_auth(request)
    return dict(request.headers)


def send(server: OpenPcs, body: bytes, target: str | None = f"{PREFIX}.ListClusters",
         content_type: str | None = JSON_10, method: str = "POST", sign: bool = True) -> Reply:
    """One request over http.client, signed by botocore's SigV4 signer unless `sign` is false."""
    headers = signed_headers(server, body, target, content_type, method) if sign else {
        k: v for k, v in (("Content-Type", content_type), ("X-Amz-Target", target)) if v is not None}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, "/", body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def raw_head(server: OpenPcs, content_length: int, target: str = f"{PREFIX}.ListClusters",
             headers: dict[str, str] | None = None) -> bytes:
    lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Type: {JSON_10}",
             f"X-Amz-Target: {target}", f"Content-Length: {content_length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_reply(sock: socket.socket) -> Reply:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def closed_by_server(sock: socket.socket, within: float = 3.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_validation(reply: Reply, reason: str | None = None, status: int = 400) -> dict[str, Any]:
    assert reply.status == status, reply
    assert reply.headers.get("x-amzn-requestid"), reply.headers
    body = reply.json()
    assert body["__type"] == "ValidationException", body
    assert body["message"]
    if reason:
        assert body.get("reason") == reason, body
    return body


def cluster_names(pcs) -> set[str]:
    return {c["name"] for page in pcs.get_paginator("list_clusters").paginate() for c in page["clusters"]}


def cluster_body(name: str) -> bytes:
    return json.dumps({"clusterName": name, "scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
                       "networking": {"subnetIds": [SUBNET]}}).encode()


# --- The body: JSON object or nothing ------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"{bad", b'{"maxResults": 5', b"\xff\xfe{}", b"[]", b'"clusters"', b"42",
                                  b"null", b"[{}]"])
def test_a_body_that_is_not_a_json_object_is_a_validation_error(server, body):
    assert_validation(send(server, body), reason="cannotParse")


def test_an_empty_body_means_no_parameters(server):
    reply = send(server, b"")
    assert reply.status == 200, reply
    assert "clusters" in reply.json()


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_a_body_that_is_not_aws_json_is_refused(server, content_type):
    reply = send(server, b"{}", content_type=content_type)
    assert 400 <= reply.status < 500, reply
    assert reply.headers.get("x-amzn-requestid")
    assert reply.json()["__type"] == "ValidationException"


@pytest.mark.parametrize("content_type", [JSON_10, "application/x-amz-json-1.0; charset=utf-8",
                                          "application/json"])
def test_aws_json_content_types_are_accepted(server, content_type):
    assert send(server, b"{}", content_type=content_type).status == 200


# --- The operation: X-Amz-Target -----------------------------------------------------------------------

@pytest.mark.parametrize("target", [f"{PREFIX}.NoSuchOperation", f"{PREFIX}.", "Other.ListClusters",
                                    "ListClusters", f"{PREFIX}.listclusters"])
def test_an_unknown_operation_is_a_validation_error(server, target):
    body = assert_validation(send(server, b"{}", target=target), reason="unknownOperation")
    assert "operation" in body["message"].lower()


def test_a_sagemaker_operation_openpcs_does_not_serve_is_an_unknown_operation_not_a_500(server):
    """The SageMaker front door: botocore's sagemaker model, AWS JSON 1.1, SigV4 with signing name sagemaker."""
    sagemaker = server.client("sagemaker")
    with pytest.raises(ClientError) as refused:
        sagemaker.list_models()
    assert refused.value.response["Error"]["Code"] == "UnknownOperationException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "ListModels" in refused.value.response["Error"]["Message"]
    cli = subprocess.run(["aws", "sagemaker", "list-models"], env=server.cli_env(), capture_output=True,
                         text=True, timeout=60)  # the AWS CLI finds the endpoint through `openpcs env`
    assert cli.returncode != 0 and "UnknownOperationException" in cli.stderr and "Traceback" not in cli.stderr


def test_a_missing_target_is_a_validation_error(server):
    body = assert_validation(send(server, b"{}", target=None), reason="unknownOperation")
    assert "X-Amz-Target" in body["message"]


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/favicon.ico"), ("POST", "/clusters"),
                                          ("PUT", "/")])
def test_anything_but_post_to_root_is_not_found(server, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 404
    assert response.getheader("x-amzn-RequestId")
    assert "__type" in json.loads(body)


# --- The members: types and the model's constraints -----------------------------------------------------

@pytest.mark.parametrize("target, params, member", [
    ("ListClusters", {"maxResults": "ten"}, "maxResults"),
    ("ListClusters", {"maxResults": True}, "maxResults"),
    ("ListClusters", {"maxResults": 2.5}, "maxResults"),
    ("ListClusters", {"nextToken": 7}, "nextToken"),
    ("GetCluster", {"clusterIdentifier": ["pcs_0123456789"]}, "clusterIdentifier"),
    ("CreateCluster", {"clusterName": "abc", "scheduler": [], "size": "SMALL", "networking": {}}, "scheduler"),
    ("CreateCluster", {"clusterName": "abc", "scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
                       "networking": {"subnetIds": "subnet-0123456789abcdef0"}}, "networking.subnetIds"),
    ("TagResource", {"resourceArn": "arn:aws:pcs:us-east-1:123456789012:cluster/pcs_0123456789",
                     "tags": {"k": 1}}, "tags"),
])
def test_a_member_of_the_wrong_type_is_a_validation_error(server, target, params, member):
    body = assert_validation(send(server, json.dumps(params).encode(), target=f"{PREFIX}.{target}"))
    assert any(field["name"].startswith(member) for field in body["fieldList"]), body


def base_cluster(**changes: Any) -> dict[str, Any]:
    return {"clusterName": unique(), "scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
            "networking": {"subnetIds": [SUBNET]}, **changes}


@pytest.mark.parametrize("operation, params, member", [
    ("create_cluster", base_cluster(clusterName="ab"), "clusterName"),
    ("create_cluster", base_cluster(clusterName="c" * 41), "clusterName"),
    ("create_cluster", base_cluster(clusterName="9lives"), "clusterName"),
    ("create_cluster", base_cluster(clusterName="has_underscore"), "clusterName"),
    ("create_cluster", base_cluster(size="HUGE"), "size"),
    ("create_cluster", base_cluster(scheduler={"type": "PBS", "version": "24.11"}), "scheduler.type"),
    ("create_cluster", base_cluster(clientToken="short"), "clientToken"),
    ("create_cluster", {"clusterName": unique(), "size": "SMALL", "networking": {}}, "scheduler"),
    ("list_clusters", {"maxResults": 0}, "maxResults"),
    ("list_clusters", {"maxResults": 101}, "maxResults"),
    ("list_clusters", {"maxResults": -1}, "maxResults"),
    ("get_cluster", {}, "clusterIdentifier"),
    ("get_cluster", {"clusterIdentifier": "x"}, "clusterIdentifier"),
])
def test_boto3_raises_validation_exception_naming_the_member(lax_pcs, operation, params, member):
    with pytest.raises(lax_pcs.exceptions.ValidationException) as excinfo:
        getattr(lax_pcs, operation)(**params)
    response = excinfo.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["RequestId"]
    assert response["Error"]["Message"]
    assert member in [field["name"] for field in response["fieldList"]], response
    assert all(field["message"] for field in response["fieldList"])


def test_every_broken_constraint_is_reported_at_once(lax_pcs):
    with pytest.raises(lax_pcs.exceptions.ValidationException) as excinfo:
        lax_pcs.create_cluster(**base_cluster(clusterName="ab", size="HUGE"))
    assert {"clusterName", "size"} <= {field["name"] for field in excinfo.value.response["fieldList"]}


def test_a_refused_create_creates_nothing(pcs, lax_pcs):
    before = cluster_names(pcs)
    with pytest.raises(lax_pcs.exceptions.ValidationException):
        lax_pcs.create_cluster(**base_cluster(size="HUGE"))
    assert cluster_names(pcs) == before


# --- The transport: size, time, disconnects, garbage ----------------------------------------------------

def test_an_oversized_body_is_refused_before_it_is_read(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw_head(server, MAX_BODY_BYTES + 1) + b"{" + b" " * 1000)
        reply = read_reply(sock)
        assert reply.status == 413
        assert reply.headers.get("x-amzn-requestid")
        assert "__type" in reply.json()
        assert closed_by_server(sock), "the connection still holds the unread body; the server must close it"


def test_an_oversized_chunked_body_is_refused(server):
    head = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {JSON_10}\r\n"
            f"X-Amz-Target: {PREFIX}.ListClusters\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(MAX_BODY_BYTES // (64 * 1024) + 2):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The server may answer and close while we are still sending.
        reply = read_reply(sock)
    assert reply.status == 413
    assert reply.headers.get("x-amzn-requestid")


def test_a_body_at_the_limit_is_read(server):
    body = b"{" + b" " * (MAX_BODY_BYTES - 2) + b"}"
    assert send(server, body).status == 200


def test_a_stalled_body_times_out(server, pcs):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=BODY_CHUNK_TIMEOUT + 10) as sock:
        sock.sendall(raw_head(server, 100) + b'{"maxRe')
        try:
            reply: Reply | None = read_reply(sock)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            reply = None  # Closing without an answer is an acceptable way to give up on the client.
        elapsed = time.monotonic() - started
        if reply is not None:
            assert reply.status == 408, reply
            assert reply.headers.get("x-amzn-requestid")
            assert closed_by_server(sock)
    assert elapsed < BODY_CHUNK_TIMEOUT + 5
    assert pcs.list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_stalled_headers_time_out(server, pcs):
    """A client that starts a request and never finishes its headers (slowloris) is answered and dropped."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEADER_TIMEOUT + 10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        reply = read_reply(sock)
        assert reply.status == 408, reply
        assert closed_by_server(sock)
    assert time.monotonic() - started < HEADER_TIMEOUT + 5
    assert pcs.list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_oversized_headers_are_refused(server, pcs):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n")
        reply = read_reply(sock)
        assert reply.status == 431, reply
        assert closed_by_server(sock)
    assert pcs.list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    first, second = b'{"maxResults": 1}', b'{"maxResults": 2}'
    requests = b""
    for body in (first, second):
        head = signed_headers(server, body)
        lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *(f"{k}: {v}" for k, v in head.items())]
        requests += "".join(line + "\r\n" for line in lines).encode()
        requests += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(requests)
        stream = sock.makefile("rb")  # one buffered reader for both: the second reply may arrive with the first
        replies = [_read_framed(stream), _read_framed(stream)]
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].headers["x-amzn-requestid"] != replies[1].headers["x-amzn-requestid"]


def test_more_pipelined_requests_than_are_read_ahead_are_all_answered_in_order(server):
    """A connection parses only a few requests ahead of its answers, in slices that may end inside a body: the
    rest waits unread until the answers catch up, and nothing is lost or reordered on the way."""
    rng = random.Random(5)
    requests, expected = b"", []
    for _ in range(100):
        valid = rng.random() < 0.5
        body = b'{"maxResults": %d%s}' % (5 if valid else 0, b" " * rng.choice([0, 100, 5000, 20000]))
        head = signed_headers(server, body)
        lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *(f"{k}: {v}" for k, v in head.items())]
        requests += "".join(line + "\r\n" for line in lines).encode()
        requests += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        expected.append(200 if valid else 400)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(requests,))
        sender.start()
        stream = sock.makefile("rb")
        statuses = [_read_framed(stream).status for _ in expected]
        sender.join()
    assert statuses == expected


def _read_framed(stream) -> Reply:
    """One response read off a shared buffered stream (http.client would close the stream after it)."""
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline().strip()):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return Reply(status, headers, stream.read(int(headers["content-length"])))


def test_a_connection_cut_mid_body_applies_nothing(server, pcs):
    before = cluster_names(pcs)
    names = [unique("cut") for _ in range(5)]
    for name in names:
        body = cluster_body(name)
        headers = signed_headers(server, body, target=f"{PREFIX}.CreateCluster")
        head = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        head.append(f"Content-Length: {len(body)}")
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[: len(body) // 2])
        time.sleep(0.05)
        # An abortive close (RST), as when a client process dies.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # Healthy: the next whole request succeeds, and none of the cut ones was applied.
    time.sleep(0.2)
    assert send(server, b"{}").status == 200
    after = cluster_names(pcs)
    assert after == before
    assert not after & set(names)


def _garbage(server: OpenPcs, index: int) -> int | None:
    """One hostile request; returns the HTTP status when there was one."""
    rng = random.Random(index)
    kind = index % 6
    if kind == 0:  # Not HTTP at all.
        payload = os.urandom(rng.randrange(1, 2048))
    elif kind == 1:  # A broken request line.
        payload = b"POST\x00/ HTTP/9.9\r\n\r\n"
    elif kind == 2:  # Headers that never end.
        payload = b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: " + b"A" * rng.randrange(10, 5000)
    elif kind == 3:  # Unsigned, random body.
        payload = raw_head(server, 64) + os.urandom(64)
    elif kind == 4:  # A lying Content-Length.
        payload = raw_head(server, 10) + b"{}" * 50
    else:  # Signed, garbage JSON.
        body = b'{"maxResults": ' + os.urandom(8).hex().encode()
        try:
            return send(server, body).status
        except (OSError, http.client.HTTPException):
            return None
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(payload)
            if kind == 2:
                return None  # Hang up with the headers unfinished.
            sock.shutdown(socket.SHUT_WR)
            status_line = sock.makefile("rb").readline()
    except OSError:
        return None
    parts = status_line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def test_concurrent_garbage_does_not_hurt_the_server(server, pcs):
    before = cluster_names(pcs)
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(lambda i: _garbage(server, i), range(200)))
    assert server.process is not None and server.process.poll() is None
    assert not [s for s in statuses if s is not None and s >= 500], statuses
    assert any(s is not None and 400 <= s < 500 for s in statuses)
    response = pcs.list_clusters()
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert cluster_names(pcs) == before


# --- Request ids and the request log ---------------------------------------------------------------------

def request_log(server: OpenPcs) -> dict[str, list[dict[str, Any]]]:
    entries: dict[str, list[dict[str, Any]]] = {}
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("message") == "request":
            entries.setdefault(entry.get("requestId"), []).append(entry)
    return entries


def test_every_response_has_a_request_id_and_one_log_line(server, pcs):
    expected: dict[str, tuple[str, int]] = {}
    success = pcs.list_clusters()["ResponseMetadata"]
    expected[success["RequestId"]] = ("ListClusters", 200)
    for reply, operation in [
        (send(server, b"{bad"), "ListClusters"),
        (send(server, b'{"maxResults": 0}'), "ListClusters"),
        (send(server, b"{}", target=f"{PREFIX}.GetCluster"), "GetCluster"),
        (send(server, b'{"clusterIdentifier": "pcs_zzzzzzzzzz"}', target=f"{PREFIX}.GetCluster"), "GetCluster"),
        (send(server, b"{}", content_type="text/plain"), "ListClusters"),
        (send(server, b"{}", target=f"{PREFIX}.Nope"), "Nope"),
        (send(server, b"{}", sign=False), "ListClusters"),
        (send(server, b"", method="GET"), None),
    ]:
        request_id = reply.headers.get("x-amzn-requestid")
        assert request_id, reply
        assert request_id not in expected
        expected[request_id] = (operation, reply.status)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw_head(server, MAX_BODY_BYTES * 2))
        reply = read_reply(sock)
        expected[reply.headers["x-amzn-requestid"]] = (None, 413)
    assert {status for _, status in expected.values()} >= {200, 400, 403, 404, 413}

    deadline = time.monotonic() + 5
    while not set(expected) <= set(entries := request_log(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for request_id, (operation, status) in expected.items():
        assert len(entries.get(request_id, [])) == 1, (request_id, entries.get(request_id))
        entry = entries[request_id][0]
        assert entry["status"] == status
        assert isinstance(entry["latencyMs"], int | float) and entry["latencyMs"] >= 0
        assert entry["operation"]
        if operation:
            assert entry["operation"] == operation
        if status >= 400:
            assert entry["error"]


def test_the_log_never_holds_a_secret(server, pcs):
    creds = server.credentials()
    pcs.list_clusters()
    send(server, b"{bad")
    wrong = server.client(secret_key="wrong" + creds["aws_secret_access_key"][5:])
    with pytest.raises(wrong.exceptions.ClientError):
        wrong.list_clusters()
    time.sleep(0.2)
    log = server.log()
    assert log
    assert creds["aws_secret_access_key"] not in log
    assert "Signature=" not in log


def test_no_response_carries_a_stack_trace(server, lax_pcs):
    """Hostile but well-formed inputs: whatever the answer, never a 5xx nor a trace of the code."""
    replies = [send(server, body, target=f"{PREFIX}.{target}") for target, body in [
        ("ListClusters", b'{"maxResults": 1e400}'),
        ("ListClusters", b'{"maxResults": 100000000000000000000000000}'),
        ("ListClusters", b'{"nextToken": "' + b"A" * 50000 + b'"}'),
        ("ListClusters", b'{"nextToken": "\\ud800"}'),
        ("ListClusters", b"[" * 100000 + b"]" * 100000),
        ("ListClusters", b'{"maxResults": 5, "maxResults": 6}'),
        ("GetCluster", b'{"clusterIdentifier": "pcs_\\u0000abcdefghi"}'),
        ("CreateCluster", cluster_body("abc\u0000def")),
        ("CreateCluster", cluster_body("x" * 100000)),
        ("TagResource", b'{"resourceArn": "arn:aws:pcs:us-east-1:1:cluster/../../etc", "tags": {"a": "b"}}'),
    ]]
    for reply in replies:
        assert reply.headers.get("x-amzn-requestid")
        assert reply.status < 500, reply
        text = reply.body.decode(errors="replace")
        assert "Traceback" not in text and 'File "' not in text, text


def test_a_write_waiting_for_the_store_does_not_stall_reads(server, pcs):
    """Another process (or the reconciler) holds the store's write lock: writes wait, reads go on."""
    store = sqlite3.connect(server.data_dir / "openpcs.db", isolation_level=None, timeout=10)
    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            pcs.delete_cluster(clusterIdentifier="pcs_nosuchclus")
        except pcs.exceptions.ResourceNotFoundException:
            outcome["refused"] = time.monotonic()

    try:
        store.execute("BEGIN IMMEDIATE")
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.3)  # The write is now waiting for the lock.
        started = time.monotonic()
        assert pcs.list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert send(server, b"{bad").status == 400
        assert time.monotonic() - started < 1.0, "reads waited for a write stuck on the store's lock"
        assert "refused" not in outcome
    finally:
        released = time.monotonic()
        store.execute("ROLLBACK")
        store.close()
    writer.join(timeout=15)
    assert outcome["refused"] >= released  # The write went through once the lock was free.
