"""Start `errands api` or `errands run` as one replica on the host network.

The entry point of the HTTP services of deploy/compose.local.yml (mounted, not in the image).
On the host network every container shares the machine's ports and host name, and Compose
refuses `hostname:`; this gives each replica, before errands starts in this same process
(PID 1, so `docker stop` signals the supervisor itself), what a bridge network gives it:

* an identity: ERRANDS_HOSTNAME, unless set, is the container's short id (a container's host
  name on a bridge network), so worker ids and `errands stats` tell replicas apart;
* a port, for `run`: the first from ERRANDS_COMPOSE_WORKER_PORT that no other replica holds
  and nothing listens on, held under a lock for the life of the container, so that
  `--scale worker=N` never clashes;
* a Prometheus target: a file in the shared volume Prometheus reads (file_sd), naming the
  address and the replica; removed when errands exits, rewritten when a crashed replica
  restarts, and swept by the next replica to start when its owner is gone for good.

`replica.py health` is the healthcheck of these containers: GET /ready where errands listens.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import sys
import urllib.request
from pathlib import Path

TARGETS = Path("/targets")  # shared by the replicas; Prometheus reads it (file_sd)
CLAIMS = TARGETS / "claims"  # one lock file per worker port
ANNOUNCED = Path("/tmp/errands-http-addr")  # the container's own: where `health` looks
PORTS = 100  # worker ports tried from ERRANDS_COMPOSE_WORKER_PORT on
# Docker mounts /etc/hostname, /etc/hosts and /etc/resolv.conf from .../containers/<id>/
# (Podman from .../overlay-containers/<id>/), whatever the network and cgroup version.
CONTAINER_ID = re.compile(r"containers/([0-9a-f]{64})/")

_claims: list[int] = []  # lock descriptors, open until this process and its children end


def container_id(mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    found = CONTAINER_ID.search(mountinfo.read_text())
    if found is None:
        sys.exit("replica.py: cannot find this container's id; set ERRANDS_HOSTNAME")
    return found.group(1)


def claim_port(first: int) -> int:
    """The first port from `first` on that no replica holds and nothing listens on: held."""
    for port in range(first, first + PORTS):
        lock = _lock(port)
        if lock is None:
            continue
        if _bindable(port):
            _claims.append(lock)
            return port
        os.close(lock)
    sys.exit(f"replica.py: ports {first} to {first + PORTS - 1} are all taken")


def sweep() -> None:
    """Remove the targets of worker replicas gone for good (their lock is free)."""
    for target in TARGETS.glob("worker-*.json"):
        lock = _lock(int(target.stem.partition("-")[2]))
        if lock is not None:
            target.unlink(missing_ok=True)
            os.close(lock)


def _lock(port: int) -> int | None:
    """The lock of `port`'s claim, taken; None when a live replica holds it."""
    fd = os.open(CLAIMS / str(port), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def announce(name: str, address: str, replica: str) -> Path:
    """Write the Prometheus target `name` atomically (file_sd reads only *.json)."""
    target = TARGETS / f"{name}.json"
    draft = TARGETS / f".{name}.draft"
    draft.write_text(json.dumps([{"targets": [address], "labels": {"replica": replica}}]))
    draft.replace(target)
    ANNOUNCED.write_text(address)
    return target


def health() -> None:
    try:
        address = ANNOUNCED.read_text().strip()
        urllib.request.urlopen(f"http://{address}/ready", timeout=3)
    except OSError as exc:  # not announced yet, refused, timed out, or not 2xx
        sys.exit(f"not ready: {exc}")


def main(arguments: list[str]) -> None:
    if arguments == ["health"]:
        health()
        return
    command = arguments[0] if arguments else "run"
    if command not in ("api", "run"):
        sys.exit(f"replica.py: starts `errands api` or `errands run`, not {command!r}")
    if not os.environ.get("ERRANDS_HOSTNAME"):
        os.environ["ERRANDS_HOSTNAME"] = container_id()[:12]
    if command == "run":
        CLAIMS.mkdir(exist_ok=True)
        sweep()
        port = claim_port(int(os.environ.get("ERRANDS_COMPOSE_WORKER_PORT", "9100")))
        os.environ["ERRANDS_HTTP_ADDR"] = f"127.0.0.1:{port}"
        name = f"worker-{port}"
    else:
        port = int(os.environ.get("ERRANDS_HTTP_ADDR", "0.0.0.0:3000").rpartition(":")[2])
        name = command
    target = announce(name, f"127.0.0.1:{port}", os.environ["ERRANDS_HOSTNAME"])
    supervisor = os.getpid()
    try:
        from errands.cli import main as errands  # noqa: PLC0415 (after the environment is set)

        sys.argv = ["errands", *arguments]
        errands()
    finally:
        if os.getpid() == supervisor:  # never in a forked child
            with contextlib.suppress(OSError):
                target.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
