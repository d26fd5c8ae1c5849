"""Run loaders on hostile files in a child process under a memory limit and a timeout.

The child imports the loaders first (torch alone maps gigabytes of address space), then limits its address
space (RLIMIT_AS) to what it has plus LIMIT_BYTES: an allocation a file talks us into fails there instead of
swapping the machine. For each file it prints one JSON line with the outcome and the growth of its peak
resident memory. A crash (segfault) or hang ends the child; the parent records that file's outcome as the
signal or 'timeout' and starts a fresh child for the remaining files."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time

LIMIT_BYTES = 1 << 30
TIMEOUT_S = 60  # per file; every refusal here takes well under a second
IMPORT_TIMEOUT_S = 300  # the child's imports on a loaded 2-core machine

CHILD = r"""
import importlib, json, resource, sys
loaders = {}
for key, spec in json.loads(sys.argv[1]).items():
    module, name = spec.split(":")
    loaders[key] = getattr(importlib.import_module(module), name)
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[2]), vm + int(sys.argv[2])))
for line in sys.stdin:
    case = json.loads(line)
    print(json.dumps({"start": case["name"]}), flush=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        loaders[case["loader"]](case["path"])
        outcome, message = "loaded", ""
    except MemoryError as e:
        outcome, message = "MemoryError", str(e)
    except ValueError as e:
        outcome, message = "ValueError", str(e)
    except BaseException as e:
        outcome, message = type(e).__name__, str(e)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"name": case["name"], "outcome": outcome, "message": message[:2000], "grew": grew}), flush=True)
"""


def run_confined(cases: list[dict], loaders: dict[str, str]) -> dict[str, dict]:
    """cases: {name, loader (a key of `loaders`, whose value is 'module:function'), path}; {name: result}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    results: dict[str, dict] = {}
    pending = list(cases)
    while pending:
        feed = "".join(json.dumps({**c, "path": str(c["path"])}) + "\n" for c in pending)
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(loaders), str(LIMIT_BYTES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,  # unbuffered: select() then sees every line the child has written
                env=env,
            )
            proc.stdin.write(feed.encode())
            proc.stdin.close()
            started, ended = _follow(proc, results)
            err.seek(0)
            tail = err.read()[-2000:]
        if started is None and not any(c["name"] in results for c in pending):
            raise RuntimeError(f"the loader child died before its first file ({ended}): {tail}")
        if started is not None:
            results[started] = {"name": started, "outcome": f"died ({ended})", "message": tail, "grew": None}
        pending = [c for c in pending if c["name"] not in results]
    return results


def _follow(proc: subprocess.Popen, results: dict) -> tuple[str | None, str]:
    """Read the child's lines until it ends or one file outlasts TIMEOUT_S; (file it was on, how it ended)."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    started, deadline = None, time.monotonic() + IMPORT_TIMEOUT_S
    while True:
        if not selector.select(timeout=max(deadline - time.monotonic(), 0)):
            proc.kill()
            proc.wait()
            return started, "timeout"
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            return started, f"signal {-code}" if code < 0 else f"exit {code}"
        record = json.loads(line)
        if "start" in record:
            started, deadline = record["start"], time.monotonic() + TIMEOUT_S
        else:
            results[record["name"]], started = record, None
