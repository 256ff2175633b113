"""The counting relay on the sync's transport: the remote command of the host's ``git fetch ext::…``.

``python3 -I -S relay.py LIMIT -- ARGV…`` runs ``ARGV`` (``docker exec -i C … export``), passes bytes
both ways between git (its stdin/stdout) and that command, and counts what comes from the
container. Past ``LIMIT`` bytes (0: no limit) it kills the remote command, says so on stderr in one
line git passes through (``sandbox relay: over LIMIT``) and exits 3: git's fetch aborts, and the
host (``gitops.fetch_from``) drops what it had received. A remote command that ended with the
``timeout`` wrapper's codes (124, 137) is reported as ``sandbox relay: remote exited N``.

It is run by the host's own interpreter in isolated mode, as a file (standard library only, nothing
imported from ``sandbox``), so nothing in the environment or the current directory changes it.

Why no off-the-shelf tool fits: git caps what a *push* brings (``receive.maxInputSize``) but has no
cap for a fetch; ``pv --stop-at-size`` and ``head -c`` cut one direction of a two-way stream and exit
0, so git cannot tell a cut from an end, and leave the remote end running; ``ulimit -f`` counts
files, not pipes; ``socat`` counts nothing. What is needed is small: copy, count, kill, fail
(standard library only; ``posix_spawn`` rather than ``subprocess``, whose import would cost every sync).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

PREFIX = "sandbox relay: "
CHUNK = 1 << 16


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print(f"{PREFIX}usage: relay.py LIMIT -- ARGV...", file=sys.stderr)
        return 2
    limit, command = int(argv[0]), argv[2:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # (the fetch's quarantine is not theirs)
    in_r, child_in = os.pipe()    # git -> the remote end
    from_child, out_w = os.pipe()  # the remote end -> git (both close-on-exec: the child keeps only its 0 and 1)
    pid = os.posix_spawnp(command[0], command, env,
                          file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)])
    os.close(in_r)
    os.close(out_w)

    def upstream() -> None:  # git -> the remote end (wants and haves: small, not counted)
        try:
            while data := os.read(0, CHUNK):
                _write_all(child_in, data)
        except OSError:
            pass
        finally:
            os.close(child_in)

    threading.Thread(target=upstream, daemon=True).start()  # (each direction on its own: neither waits on the other)
    received = 0
    try:
        while data := os.read(from_child, CHUNK):  # the remote end -> git: the pack, counted
            received += len(data)
            if limit and received > limit:
                print(f"{PREFIX}over {limit}", file=sys.stderr, flush=True)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return 3
            _write_all(1, data)
    except OSError:  # git went away: so does the remote end
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return 1
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # (a signal: as a shell says it)
    if code in (124, 137):
        print(f"{PREFIX}remote exited {code}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
