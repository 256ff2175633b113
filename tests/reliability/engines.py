"""Engines for the reliability tests: a counting proxy in front of the engine, and a private
Docker engine (its own socket, data-root, exec-root, pidfile, config, a bridge of its own, no iptables),
stopped and removed whatever happens."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path


class CountingProxy:
    """A unix-socket proxy in front of the engine that counts HTTP requests (as bench/run.py's)."""

    REQUEST = re.compile(rb"(?:^|\r\n)(GET|POST|PUT|DELETE|HEAD) /\S* HTTP/1\.[01]\r\n")

    def __init__(self, path: str, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target, self.count = path, target, 0
        self.lock = threading.Lock()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self.lock:
                        self.count += len(self.REQUEST.findall(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.srv.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class PrivateEngine:
    """``dockerd`` of our own: ``start()``, ``stop()`` (SIGTERM, as a reboot or a service restart
    does; or SIGKILL), ``close()`` (stopped, its containers, bridge and directories removed).

    Its default bridge is one of its own (``sbxe…``, made here): never ``--bridge=none``, with which
    dockerd *deletes the host's docker0* at start-up (moby's removeDefaultBridgeInterface), taking the
    main engine's default network away (seen here: the main engine's builds failed after it)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sbxe-", dir="/var/tmp"))
        self.exec_root = Path(tempfile.mkdtemp(prefix="sbxe-", dir="/tmp"))  # short: containerd's socket path
        self.sock = self.exec_root / "d.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "dockerd.log"
        self.bridge = f"sbxe{self.root.name[-6:].lower()}"[:15]
        octet = int.from_bytes(os.urandom(1), "big") % 200 + 20
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True, capture_output=True)
        subprocess.run(["ip", "addr", "add", f"10.213.{octet}.1/24", "dev", self.bridge], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
        (self.root / "daemon.json").write_text('{"storage-driver": "fuse-overlayfs"}\n'
                                               if _main_driver() == "fuse-overlayfs" else "{}\n")

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return subprocess.run(["docker", *args], env=self.env(), capture_output=True, text=True, **kw)

    def start(self, timeout: float = 60) -> float:
        """Start it; the seconds until it answers."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", str(self.root / "daemon.json"), "--data-root", str(self.root / "data"),
             "--exec-root", str(self.exec_root / "x"), "--pidfile", str(self.root / "docker.pid"),
             "-H", self.host, f"--bridge={self.bridge}", "--iptables=false", "--ip-masq=false",
             "--cgroup-parent", f"/{self.root.name}"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        while self.docker("version", "--format", "{{.Server.Version}}").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"private dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def crash(self) -> None:
        """As a power cut: SIGKILL to dockerd, its containerd and shims, and every process of its
        containers (their cgroups under this engine's own cgroup parent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in _pids_with(str(self.exec_root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for procs in Path("/sys/fs/cgroup").glob(f"*/{self.root.name}/*/cgroup.procs"):
            try:
                for pid in procs.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
        # a reboot wipes the exec-root (/run is a tmpfs): the new engine starts a new containerd there
        self._unmount(self.exec_root)
        shutil.rmtree(self.exec_root / "x", ignore_errors=True)
        self.sock.unlink(missing_ok=True)

    @staticmethod
    def _unmount(d: Path) -> None:
        for line in Path("/proc/mounts").read_text().splitlines()[::-1]:
            mnt = line.split()[1]
            if mnt.startswith(str(d)):
                subprocess.run(["umount", "-l", mnt], capture_output=True)

    def load(self, image: str) -> None:
        """The image from the main engine (``docker save | docker load``)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        done = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=self.env(), capture_output=True, text=True)
        save.wait()
        if done.returncode != 0 or save.returncode != 0:
            raise RuntimeError(f"docker load: {done.stderr}")

    def close(self) -> None:
        """Never raises: its containers removed, the engine stopped, its directories gone."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", "-v", *ids, timeout=120)
        except Exception:  # noqa: BLE001 - a finalizer
            pass
        self.stop()
        # containerd's shims of its containers, if any survived the engine
        for pid in _pids_with(str(self.exec_root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for d in (self.exec_root, self.root):
            self._unmount(d)
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _main_driver() -> str:
    return subprocess.run(["docker", "info", "--format", "{{.Driver}}"], capture_output=True, text=True).stdout.strip()


def _pids_with(text: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found
