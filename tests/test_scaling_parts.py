"""The parts of elastic node groups that need no Slurm: bounded provider calls, the power hook's requests,
event retention, and the events command's options."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import threading
import time

import pytest

from openpcs.cli_nodes import _since
from openpcs.providers.base import Bounded, LaunchRequest, ProviderError
from openpcs.slurm import power_hook
from openpcs.store import events
from openpcs.store.db import Store, sqlite_url


class HangingProvider:
    """A provider whose calls never return (a cloud API that stopped answering): no real one can be made to."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def launch(self, requests):  # noqa: ANN001, ANN201
        self.release.wait()
        return {}

    def describe(self, instance_ids):  # noqa: ANN001, ANN201
        raise RuntimeError("the service answered 500")

    def stop(self, instance_ids):  # noqa: ANN001, ANN201
        return None

    def terminate(self, instance_ids):  # noqa: ANN001, ANN201
        return None


def test_a_provider_call_that_hangs_or_fails_becomes_a_provider_error_in_bounded_time():
    provider = HangingProvider()
    bounded = Bounded(provider, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as hung:
        bounded.launch([LaunchRequest("i-1", "pcs_a", "pcs_g", "g-1", "c6i.large", {})])
    assert hung.value.code == "ProviderTimeout" and time.monotonic() - started < 2
    with pytest.raises(ProviderError) as failed:
        bounded.describe(["i-1"])
    assert failed.value.code == "ProviderError" and "500" in failed.value.message
    provider.release.set()


def test_power_requests_survive_until_taken_and_nudge_a_listener(tmp_path):
    address = f"\0openpcs-test-{time.time_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(5)
        done = subprocess.run([sys.executable, "-m", "openpcs.slurm.power_hook", str(tmp_path / "power"),
                               address.replace("\0", "@"), "resume", "g-[1-3]"], capture_output=True)
        assert done.returncode == 0, done.stderr
        assert listener.recv(16) == b"w"
    power_hook.request(tmp_path / "power", address, "suspend", "g-2")  # nobody listens now: still recorded
    taken = power_hook.take(tmp_path / "power")
    assert [(action, hostlist) for _, action, hostlist in taken] == [("resume", "g-[1-3]"), ("suspend", "g-2")]
    assert not list((tmp_path / "power").glob(".*"))  # no partial file is left
    bad = subprocess.run([sys.executable, "-m", "openpcs.slurm.power_hook", str(tmp_path), "@x", "reboot", "g-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_events_are_kept_in_order_filtered_and_purged_by_age_and_count(tmp_path):
    store = Store(sqlite_url(str(tmp_path / "db.sqlite")))
    now = time.time()
    with store.write() as conn:
        events.record(conn, "pcs_a", events.LAUNCHED, "old", node="g-1", at=now - 100)
        for n in range(5):
            events.record(conn, "pcs_a", events.REGISTERED, f"new {n}", node_group_id="pcs_g", node=f"g-{n}", at=now)
        events.record(conn, "pcs_b", events.LAUNCHED, "other cluster", node="h-1", at=now)
    with store.read() as conn:
        assert [e.reason for e in events.query(conn, "pcs_a")][:2] == ["old", "new 0"]
        assert len(events.query(conn, "pcs_a", node_group_id="pcs_g")) == 5
        assert [e.reason for e in events.query(conn, "pcs_a", since=now - 10)][0] == "new 0"
    with store.write() as conn:
        assert events.purge(conn, older_than=now - 50, keep_per_cluster=3) == 3
    with store.read() as conn:
        assert [e.reason for e in events.query(conn, "pcs_a")] == ["new 2", "new 3", "new 4"]
        assert [e.reason for e in events.query(conn, "pcs_b")] == ["other cluster"]
    store.close()


def test_since_takes_a_time_or_an_age():
    assert abs(_since("10m") - (time.time() - 600)) < 2
    noon = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC).timestamp()
    assert _since("2026-12-02T12:00:00Z") == _since("2026-12-02T13:00:00+01:00") == _since("2026-12-02T12:00") == noon
    assert _since(None) is None
    with pytest.raises(Exception, match="an age such as"):
        _since("yesterday")

