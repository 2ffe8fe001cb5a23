#!/usr/bin/env python3
"""Where openpcs spends its CPU on the request path: py-spy samples the server while wrk loads it.

    pip install py-spy
    python bench/profile_openpcs.py [--duration 15] [--rate 100] [--log-level info] [--keep]

Starts `openpcs serve` (fresh temp data dir, 5 clusters), and for GetCluster and then ListClusters runs
wrk with 8 connections while `py-spy record` samples the server (about 40 s in all). Prints, for each
operation, the busy samples by stage of the request path, the store part broken down, and the functions
with the most samples in them (self) and under them (inclusive), all as shares of the server's busy
samples (idle samples, i.e. waiting in the event loop or in an idle worker thread, are not counted).

py-spy runs in its default (blocking) mode at 100 Hz: that costs the server little throughput, and
--nonblocking was found to truncate deep stacks (SQLAlchemy's), which skews the attribution. Raw stacks
(collapsed format, for flamegraph.pl or speedscope) are kept with --keep.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_throughput import Started, ensure_wrk, probe, start_openpcs, write_lua  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


# Leaf frames of threads that are only waiting (py-spy's blocking mode does not always see them as idle).
_WAITING = ("Condition.wait (threading.py", "Event.wait (threading.py", "_worker (concurrent/futures/thread.py",
            "Thread._wait_for_tstate_lock (threading.py")


def parse(raw: Path) -> tuple[list[tuple[list[str], int]], int]:
    stacks, total = [], 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(_WAITING):
            continue
        stacks.append((frames, int(count)))
        total += int(count)
    return stacks, total


def _described(frame: str, with_line: bool) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    where = f"{file}:{match.group('line')}" if with_line else file
    return f"{match.group('func')} ({where})"


def function_of(frame: str) -> str:
    return _described(frame, with_line=False)


def line_of(frame: str) -> str:
    return _described(frame, with_line=True)


# Frames every sample of the server's main thread has in common (process start-up, click, the loop's run).
_ROOTS = ("(<frozen runpy>)", "(click/", "Server.run (openpcs/api/http.py)", "(openpcs/__main__.py)",
          "(openpcs/cli.py)", "Runner.run (asyncio/runners.py)")

# Request-path stages, by the function a sample is (deepest first) inside.
_STAGES = (
    ("ApiApp._log", "request log line (orjson + one write to stderr)"),
    ("_Connection._respond", "response write (one transport.write)"),
    ("shape_output", "output shaping (model walk, timestamps)"),
    ("Dispatcher.call", "handler + store (prepared reads on SQLite)"),
    ("validate (openpcs/api/validate.py)", "input validation"),
    ("ApiApp._parse", "JSON parse"),
    ("ApiApp._authenticate", "SigV4 verification"),
    ("ApiApp._read_body", "body read (receive under one asyncio.timeout)"),
    ("ApiApp.__call__", "ApiApp.__call__ itself (headers dict, request id, orjson.dumps, ...)"),
    ("_Connection._run", "HTTP server's ASGI glue (a task per request)"),
    ("_Connection.", "HTTP parser callbacks (httptools)"),
    ("Thread._bootstrap", "other threads (reconciler)"),
)


# Inside the handler's store transaction, by the function a sample is (deepest first) inside.
_STORE_PARTS = (
    ("Resource.from_row", "row -> Resource (three JSON loads per row)"),
    ("Result.", "fetching rows (Result/Row)"),
    ("CursorResult.", "fetching rows (Result/Row)"),
    ("Connection.execute", "statement execution (SQLAlchemy execute path + sqlite3)"),
    ("ColumnOperators.", "building the SELECT (select(), .where(), column == value)"),
    ("select (sqlalchemy", "building the SELECT (select(), .where(), column == value)"),
    ("Select.", "building the SELECT (select(), .where(), column == value)"),
    ("GenerativeSelect.", "building the SELECT (select(), .where(), column == value)"),
    ("_generative", "building the SELECT (select(), .where(), column == value)"),
    ("Views.", "views (API dicts)"),
    ("Store.read", "read transaction: connection checkout, BEGIN, ROLLBACK, return"),
    ("_GeneratorContextManager.", "read transaction: connection checkout, BEGIN, ROLLBACK, return"),
)


def store_part_of(names: list[str]) -> str | None:
    if not any(n.startswith("Dispatcher.call") for n in names):
        return None
    start = max(i for i, n in enumerate(names) if n.startswith("Dispatcher.call"))
    for name in reversed(names[start:]):
        for marker, part in _STORE_PARTS:
            if name.startswith(marker):
                return part
    return "handler code itself"


def package_of(name: str) -> str:
    where = name.rsplit("(", 1)[-1].rstrip(")")
    if where.startswith("openpcs/"):
        return "openpcs/" + where.split("/")[1].removesuffix(".py")
    if where.startswith("asyncio/runners.py"):
        return "event loop (uvloop, no Python frame)"
    return where.split("/")[0].removesuffix(".py")


def stage_of(names: list[str]) -> str:
    for name in reversed(names):
        for marker, stage in _STAGES:
            if name.startswith(marker):
                return stage
    if names and names[-1].startswith("Runner.run (asyncio/runners.py)"):
        return "event loop, no Python frame (uvloop: epoll, recv/send, callbacks)"
    return "unattributed (partial stack)"


def summarize(raw: Path, top: int) -> None:
    stacks, total = parse(raw)
    if not total:
        print("  no samples")
        return
    self_fn, incl_fn, self_line, stages, packages = Counter(), Counter(), Counter(), Counter(), Counter()
    store_parts = Counter()
    for frames, count in stacks:
        names = [function_of(f) for f in frames]
        part = store_part_of(names)
        if part:
            store_parts[part] += count
        self_fn[names[-1]] += count
        packages[package_of(names[-1])] += count
        self_line[line_of(frames[-1])] += count
        stages[stage_of(names)] += count
        for name in set(names):
            if not any(root in name for root in _ROOTS):
                incl_fn[name] += count
    print(f"  {total} busy samples")
    print("  -- by stage of the request path --")
    for name, count in stages.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("  -- handler + store, broken down (shares of all busy samples) --")
    for name, count in store_parts.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("  -- self, by package (where the sampled line is) --")
    for name, count in packages.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("  -- inclusive (time in the function and everything it calls) --")
    for name, count in incl_fn.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("  -- self, by function (time in the function's own Python lines and the C calls they make) --")
    for name, count in self_fn.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("  -- self, by line --")
    for name, count in self_line.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds of sampling per operation [15]")
    parser.add_argument("--log-level", default="info", choices=("info", "warning"))
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second [100]")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (raw stacks, logs)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    wrk = ensure_wrk()
    started = Started()
    work = Path(tempfile.mkdtemp(prefix="openpcs-profile-"))
    if not args.keep:
        started.dirs.append(work)
    try:
        proc, targets = start_openpcs(started, work, work / "openpcs-data", 5, args.log_level, create=True)
        time.sleep(1)
        for target in targets:
            probe(target)
            script = work / f"{target.operation}.lua"
            write_lua(target, script)
            raw = work / f"{target.operation}.txt"
            wrk_run = subprocess.Popen([wrk, "-t2", "-c8", f"-d{args.duration + 2}s", "-s", str(script),
                                        target.url + "/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            try:
                time.sleep(1)
                subprocess.run([py_spy, "record", "--pid", str(proc.pid), "--subprocesses", "--rate",
                                str(args.rate), "--duration", str(args.duration), "--format", "raw", "-o", str(raw)],
                               check=True, capture_output=True, timeout=args.duration + 60)
                output, _ = wrk_run.communicate(timeout=60)
            finally:
                if wrk_run.poll() is None:
                    wrk_run.kill()  # by its PID; it is our child
                    wrk_run.wait()
            rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
            print(f"\n== {target.operation} (log level {args.log_level}), 8 connections, "
                  f"{rps.group(1) if rps else '?'} requests/s while sampled ==")
            summarize(raw, args.top)
        started.stop(proc)
    finally:
        started.cleanup()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
