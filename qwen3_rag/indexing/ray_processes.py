"""The processes of a local Ray that a killed driver left behind, found and stopped.

A driver killed with SIGKILL cannot stop the Ray it started; its raylet and GCS follow it, but
agents (``ray::DashboardAgent``, ``RuntimeEnvAgent``) can stay. Each local Ray is recorded (the
driver's pid and its session folder) so that the next run on this machine stops exactly those
processes, and no others.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import tempfile
from pathlib import Path

logger = logging.getLogger("qwen3_rag.indexing")


def _sessions_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"qwen3-rag-ray-{os.getuid()}"


def record_local_ray() -> None:
    """Note this driver's pid and its local Ray's session folder, for :func:`reap_stale_local_rays`.

    A driver killed with SIGKILL cannot stop the Ray it started; its raylet and GCS follow it,
    but agents (``ray::DashboardAgent``, ``RuntimeEnvAgent``) can stay. The record lets the
    next run on this machine find and stop exactly those processes, and no others.
    """
    session = _session_dir()
    if not session:
        return
    folder = _sessions_dir()
    folder.mkdir(mode=0o700, exist_ok=True)
    record = folder / f"{os.getpid()}.json"
    record.write_text(json.dumps({"pid": os.getpid(), "session": session}), encoding="utf-8")
    atexit.register(record.unlink, missing_ok=True)


def _session_dir() -> str | None:
    try:
        from ray._private import worker

        node = worker._global_node
        return str(node.get_session_dir_path()) if node is not None else None
    except Exception:  # a private API: without it, nothing is recorded
        return None


def reap_stale_local_rays() -> list[int]:
    """Stop the processes of local Rays whose driver died without stopping them.

    Returns:
        The pids signalled.
    """
    folder = _sessions_dir()
    killed: list[int] = []
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            pid, session = int(data["pid"]), str(data["session"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if _alive(pid):
            continue
        killed += _kill_session(session)
        record.unlink(missing_ok=True)
    if killed:
        logger.info("stopped %d processes left by a killed run's local Ray", len(killed))
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_processes(session: str) -> list[int]:
    """Pids of this user's processes whose command line names the Ray session folder."""
    # The session's name as a whole path part or option value (`--session-dir=.../NAME/logs`,
    # `--session-name=NAME`), never as a prefix of another session's name.
    pattern = re.compile(rb"(?:^|[=/])" + re.escape(Path(session).name.encode()) + rb"(?:$|/)")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(pattern.search(arg) for arg in cmdline.split(b"\0")):
            found.append(int(entry.name))
    return found


def _kill_session(session: str) -> list[int]:
    pids = session_processes(session)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids
