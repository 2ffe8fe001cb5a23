"""Daemons that outlive `openpcs serve`: started in their own session, tracked by PID and start time.

munged, slurmctld and each node's slurmd keep running when the control plane stops or crashes, so a
crash never kills a job. Each is recorded in a small JSON file (its PID and the kernel's start time of
that PID), which a restarted server reads to re-adopt the daemon rather than start a second one; the
start time tells a live daemon from an unrelated process that got the same PID later. Stopping is by
PID (its session's process group), never by name.

A daemon may own its working directory (`owns_workdir`): slurmd's job steps (slurmstepd and the job's
processes) leave its session, as they must to survive a slurmd restart, but they inherit that directory.
Stopping such a daemon also stops every process still working there and their children, as an instance
that is terminated takes its jobs' processes with it.

A session is also the unit the kernel shares CPU time by (autogroup scheduling, sched_autogroup_enabled): every
node's session weighs as much as slurmctld's. What stands for a head node or for the cloud's own machinery rather
than for a node is started with a weight of its own (`autogroup_nice`, counted as `nice` counts).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from .files import write_private

logger = logging.getLogger("openpcs.processes")

# The weight of 87 nodes (autogroup nice -20) for the daemons every node and command depends on (munged, slurmctld,
# slurmdbd, slurmrestd) and for the agent that launches nodes, as if they had machines of their own. With the weight
# of one session among 2,048 nodes' sessions, munged fell 2 s behind a job starting on every node (its steps failed
# "Munge encode failed ... Resource temporarily unavailable") and slurmctld stopped answering at an array's peak.
SERVICE_AUTOGROUP_NICE = -20


@dataclass(frozen=True)
class Daemon:
    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/PID/stat

    def alive(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] != "Z"

    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP): alive, but answering nothing."""
        stat = _stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] == "T"


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, then the parent's PID ...), or None if
    there is no process with this PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, or None if there is none with this PID."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return fields[0], int(fields[19])


# Children this process started: polled so that they are reaped, never left as zombies.
_children: dict[int, subprocess.Popen] = {}


def spawn(argv: Sequence[str], record: Path, log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, owns_workdir: bool = False, autogroup_nice: int | None = None) -> Daemon:
    """Start `argv` in a new session (stdin /dev/null, output appended to `log`, working in `cwd`, its session's
    CPU weight set by `autogroup_nice`) and record it."""
    _reap()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd)
    if autogroup_nice is not None:
        _set_autogroup_nice(process.pid, autogroup_nice)
    stat = _stat(process.pid)
    daemon = Daemon(process.pid, stat[1] if stat else 0)
    _children[process.pid] = process
    data = {"pid": daemon.pid, "startTime": daemon.start_time, "argv": list(argv)}
    if owns_workdir and cwd is not None:
        data["ownedWorkdir"] = str(Path(cwd).resolve())
    write_private(record, orjson.dumps(data))
    return daemon


def _set_autogroup_nice(pid: int, nice: int) -> None:
    """Weigh the session `pid` leads (Popen has returned: the child has called setsid and exec'd). Without autogroup
    scheduling the file is absent, and without CAP_SYS_NICE a negative value is refused: the session keeps an
    ordinary weight and runs as well as it did."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError as exc:
        logger.info("pid %d keeps an ordinary CPU weight: %s", pid, exc)


def adopt(record: Path) -> Daemon | None:
    """The daemon `record` describes if it still runs; None (and the record removed) if it has gone."""
    _reap()
    try:
        data = orjson.loads(record.read_bytes())
    except FileNotFoundError:
        return None
    daemon = Daemon(data["pid"], data["startTime"])
    if daemon.alive():
        return daemon
    record.unlink(missing_ok=True)
    return None


def recorded_argv(record: Path) -> list[str] | None:
    """The command line the recorded daemon was started with; None without a record."""
    try:
        return orjson.loads(record.read_bytes())["argv"]
    except FileNotFoundError:
        return None


def stop(record: Path, timeout: float = 10.0) -> None:
    """Stop the recorded daemon and everything in its session: SIGTERM, then SIGKILL after `timeout`; then
    whatever still works in a directory it owns."""
    stop_all([record], timeout)


def stop_all(records: Sequence[Path], timeout: float = 10.0) -> None:
    """stop() for many daemons at once: each is signalled before any is waited for, and /proc is read once for what
    still works in their directories, so stopping 2,048 nodes takes about as long as stopping one."""
    daemons, workdirs = [], set()
    for record in records:
        try:
            workdir = orjson.loads(record.read_bytes()).get("ownedWorkdir")
        except FileNotFoundError:
            continue
        daemon = adopt(record)
        if daemon is not None:
            daemons.append(daemon)
        if workdir:
            workdirs.add(workdir)
    terminate_all(daemons, timeout)
    if workdirs:
        kill_working_in(workdirs)
    for record in records:
        record.unlink(missing_ok=True)


def kill_working_in(directories: set[str]) -> None:
    """SIGKILL every process whose working directory is one of `directories`, with all its descendants."""
    parents: dict[int, list[int]] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid, fields = int(entry.name), _stat_fields(entry.name)
        if fields is None:
            continue
        try:
            if os.readlink(entry / "cwd") in directories:
                roots.append(pid)
        except OSError:
            pass  # gone, or a zombie: it still counts as a child below
        parents.setdefault(int(fields[1]), []).append(pid)
    doomed, queue = set(), list(roots)
    while queue:
        pid = queue.pop()
        if pid not in doomed and pid != os.getpid():
            doomed.add(pid)
            queue.extend(parents.get(pid, []))
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


# SIGTERM is sent again this often while the daemon lives: Slurm 24.11's daemons re-execute themselves on
# every reconfigure, and a SIGTERM that arrives before the new image handles signals is lost (measured: a
# slurmctld stopped just after a reconfigure logged nothing and ran on until SIGKILL).
TERM_REPEAT_SECONDS = 0.5


def terminate(daemon: Daemon, timeout: float = 10.0) -> None:
    terminate_all([daemon], timeout)


def terminate_all(daemons: Sequence[Daemon], timeout: float = 10.0) -> None:
    """SIGTERM to each daemon's session, repeated until it exits; SIGKILL to those still there after `timeout`. A
    stopped (SIGSTOP) daemon is continued, so that it can act on the SIGTERM."""
    deadline = time.monotonic() + timeout
    living = [d for d in daemons if d.alive()]
    while living and time.monotonic() < deadline:
        living = [d for d in living if signal_session(d, signal.SIGTERM) and signal_session(d, signal.SIGCONT)]
        living = _wait_gone(living, min(deadline, time.monotonic() + TERM_REPEAT_SECONDS))
    killed = [d for d in living if d.alive() and signal_session(d, signal.SIGKILL)]
    _wait_gone(killed, time.monotonic() + 5.0)
    _reap()


def _wait_gone(daemons: list[Daemon], until: float) -> list[Daemon]:
    """Wait until the daemons have exited or `until`; those still alive."""
    while True:
        daemons = [d for d in daemons if d.alive()]
        if not daemons or time.monotonic() >= until:
            return daemons
        _reap()
        time.sleep(0.02)


def signal_session(daemon: Daemon, sig: int) -> bool:
    """Send `sig` to the daemon's session (its process group); False if it has gone."""
    try:
        os.killpg(daemon.pid, sig)  # its session's group: the daemon leads it (start_new_session)
    except ProcessLookupError:
        return False
    return True


def _reap() -> None:
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            del _children[pid]
