"""Ray's own C++ log lines on the driver's stderr, shown only when the user asks (``verbose``).

Ray Data's actors make the driver's core worker log an ERROR line that is Ray's internal note,
not the user's problem (``core_worker.cc: ... has constructor arguments in the object store and
max_restarts > 0``: Ray Data puts every actor's constructor in the object store). Only the
``fatal`` level hides it; Ray then announces the level it read from the environment on stderr
(``logging.cc: Set ray log level from environment variable``), which is filtered out of stderr
while ``ray.init`` runs. Every other line still reaches stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

LEVEL_VARIABLE = "RAY_BACKEND_LOG_LEVEL"
# Ray's announcement of the level it read (logging.cc), the one line filtered out.
LEVEL_NOTICE = b"Set ray log level from environment variable " + LEVEL_VARIABLE.encode()


@contextlib.contextmanager
def quiet_ray_backend(verbose: bool) -> Iterator[None]:
    """Around ``ray.init``: the driver's core worker logs only fatal lines, unless ``verbose``.

    The core worker reads the level once, when ``ray.init`` starts it; the caller's environment
    comes back afterwards. A level the caller set in the environment is theirs and is kept.
    """
    if verbose or LEVEL_VARIABLE in os.environ:
        yield
        return
    os.environ[LEVEL_VARIABLE] = "fatal"
    try:
        with _stderr_without(LEVEL_NOTICE):
            yield
    finally:
        os.environ.pop(LEVEL_VARIABLE, None)


@contextlib.contextmanager
def _stderr_without(marker: bytes) -> Iterator[None]:
    """File descriptor 2 through a pipe that drops lines holding ``marker`` and passes the rest.

    At the descriptor level, because the line comes from C++. Processes started meanwhile (a
    local Ray's daemons) inherit the pipe; the pump forwards their lines until they close it.
    """
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    original = os.dup(2)
    target = os.dup(original)  # the pump's own copy: it may outlive this block

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if marker not in line:
                    os.write(target, line)
        os.close(target)

    thread = threading.Thread(target=pump, name="ray-stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        # Without children holding the pipe, the pump ends here, having passed everything on.
        thread.join(timeout=1)
