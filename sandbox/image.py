"""Building the images, with no registry: the offline base, the agent image and the proxy image.

* ``sandbox-base:bookworm`` — ``images/base/build.sh``: debootstrap a minimal Debian bookworm with
  tmux, git, tini, python3 … and ``docker import`` it (needs root and debootstrap; ~45 s, once).
* ``sandbox-proxy:bookworm`` — ``images/proxy/build.sh``: the same recipe with nginx-light, squid,
  ca-certificates and tini (the isolated profile's proxies, ``sandbox/proxy.py``; ~1–2 min, once).
* ``sandbox-agent:latest`` — ``Dockerfile.agent`` on top of that base (or, online, on
  ``debian:bookworm-slim``), with the real Claude Code CLI taken from PyPI's ``claude-agent-sdk``
  wheel and this package's stdlib-only modules.

The agent image carries the digest of its inputs (Dockerfile, in-container modules, Claude Code
version, base image id) in the label ``sandbox.image.inputs``; a build whose digest matches the
existing image is a reuse, not a rebuild. Every engine call goes through :class:`sandbox.engine.Engine`;
subprocesses only run the base script and pip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sandbox
from sandbox.config import Settings
from sandbox.engine import Engine
from sandbox.errors import ImageMissing, SandboxError, UsageError

OnLine = Callable[[str], None] | None

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_SCRIPT = REPO_ROOT / "images" / "base" / "build.sh"
PROXY_SCRIPT = REPO_ROOT / "images" / "proxy" / "build.sh"
PROXY_IMAGE = "sandbox-proxy:bookworm"  # = sandbox.proxy.IMAGE
DOCKERFILE = REPO_ROOT / "Dockerfile.agent"
PACKAGE_DIR = Path(__file__).resolve().parent
# The modules that run inside the container: standard library only (see AGENTS.md).
INSIDE_MODULES = ("__init__.py", "contract.py", "inside/__init__.py", "inside/__main__.py", "inside/supervisor.py",
                  "inside/home.py", "inside/hooks.py", "inside/export.py", "inside/probe.py", "inside/mockmodel.py",
                  "inside/headless.py",
                  "agents.py", "errors.py", "usage.py")  # (agents, errors: the presets, for headless mode;
                                                          #  usage: the hooks total the tokens)

ONLINE_BASE = "debian:bookworm-slim"
SDK_PACKAGE = "claude-agent-sdk"
BUNDLED_CLAUDE = "claude_agent_sdk/_bundled/claude"

LABEL_INPUTS = "sandbox.image.inputs"
LABEL_CLAUDE = "sandbox.image.claude"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_BASE = "org.opencontainers.image.base.name"

# Engine/host architecture -> the wheel's platform tag.
_WHEEL_PLATFORMS = {
    "x86_64": "manylinux_2_17_x86_64",
    "amd64": "manylinux_2_17_x86_64",
    "aarch64": "manylinux_2_17_aarch64",
    "arm64": "manylinux_2_17_aarch64",
}


class ImageBuildError(SandboxError):
    """An image (or one of its inputs) could not be built or fetched."""


# -- Claude Code ---------------------------------------------------------------------------------
def claude_binary(settings: Settings, on_line: OnLine = None) -> Path:
    """The real Claude Code CLI (a static binary) for ``settings.claude_sdk_version``, cached.

    Taken from PyPI's ``claude-agent-sdk`` wheel (``claude_agent_sdk/_bundled/claude``); the wheel
    is downloaded with pip into ``cache_dir/wheels`` unless it is already there.
    """
    emit = _emitter(on_line)
    version = settings.claude_sdk_version
    target = settings.cache_dir / "claude" / version / "claude"
    if _is_executable(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(settings.cache_dir / "claude" / ".lock", emit, "another process is fetching Claude Code"):
        if _is_executable(target):
            return target
        wheel = _claude_wheel(settings, version, emit)
        started = time.monotonic()
        emit(f"extracting Claude Code {version} from {wheel.name}")
        _extract_member(wheel, BUNDLED_CLAUDE, target)
        emit(f"Claude Code {version} cached at {target} ({_elapsed(started)})")
    return target


def _claude_wheel(settings: Settings, version: str, emit: Callable[[str], None]) -> Path:
    wheels = settings.cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platform_tag = _wheel_platform()
    found = _find_wheel(wheels, version, platform_tag)
    if found is not None:
        emit(f"reusing {found}")
        return found
    argv = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check",
        "--platform", platform_tag, "--python-version", "3.11",
        f"{SDK_PACKAGE}=={version}", "-d", str(wheels),
    ]  # fmt: skip
    started = time.monotonic()
    emit(f"downloading {SDK_PACKAGE}=={version} ({platform_tag}, ~180 MB) from PyPI with pip")
    rc, tail = _run_streaming(argv, emit)
    found = _find_wheel(wheels, version, platform_tag)
    if rc != 0 or found is None:
        last = tail[-1] if tail else f"exit {rc}"
        raise ImageBuildError(
            f"pip could not download {SDK_PACKAGE}=={version}: {last}",
            hint=f"PyPI must be reachable; or put the wheel into {wheels}",
        )
    emit(f"downloaded {found.name} ({found.stat().st_size // 2**20} MiB, {_elapsed(started)})")
    return found


def _wheel_platform() -> str:
    machine = platform.machine().lower()
    try:
        return _WHEEL_PLATFORMS[machine]
    except KeyError:
        raise ImageBuildError(f"no Claude Code build for this architecture ({machine})") from None


def _find_wheel(wheels: Path, version: str, platform_tag: str) -> Path | None:
    arch = platform_tag.split("_", 3)[-1]  # x86_64 / aarch64
    name = SDK_PACKAGE.replace("-", "_")
    matches = sorted(wheels.glob(f"{name}-{version}-*-manylinux*{arch}.whl"))
    return matches[-1] if matches else None


def _extract_member(wheel: Path, member: str, target: Path) -> None:
    """Stream one member of a zip to a temp file beside ``target``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            raise ImageBuildError(f"{wheel.name} has no {member}: not the wheel that bundles Claude Code") from None
        except (zipfile.BadZipFile, EOFError) as e:
            wheel.unlink(missing_ok=True)  # a truncated download: the next run fetches it again
            raise ImageBuildError(f"{wheel.name} is damaged ({e}); it was removed, run the build again") from e
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- base image ----------------------------------------------------------------------------------
def build_base(engine: Engine, settings: Settings, *, force: bool = False, on_line: OnLine = None) -> str:
    """Ensure the offline base image ``settings.base_image`` exists (``images/base/build.sh``); its id."""
    return _build_rootfs(engine, settings.base_image, BASE_SCRIPT, "base image", force=force, on_line=on_line)


# -- proxy image ---------------------------------------------------------------------------------
def build_proxy(engine: Engine, ref: str = PROXY_IMAGE, *, force: bool = False, on_line: OnLine = None) -> str:
    """Ensure the offline proxy image ``ref`` (nginx-light + squid, for the isolated profile's model and
    egress proxies, see ``sandbox/proxy.py``) exists (``images/proxy/build.sh``); its id."""
    return _build_rootfs(engine, ref, PROXY_SCRIPT, "proxy image", force=force, on_line=on_line)


def _build_rootfs(engine: Engine, ref: str, script: Path, what: str, *, force: bool, on_line: OnLine) -> str:
    """Reuse ``ref`` when the engine has it (unless ``force``), else run ``script`` (debootstrap + import)."""
    emit = _emitter(on_line)
    if not force:
        image_id = engine.image_id(ref)
        if image_id is not None:
            emit(f"reusing {what} {ref} ({_short(image_id)})")
            return image_id
    if not script.is_file():
        raise ImageBuildError(
            f"{script} is missing: the {what} is built from a source checkout of sandbox",
            hint=f"or build {ref} elsewhere and `docker load` it",
        )
    started = time.monotonic()
    emit(f"building {what} {ref} with {script.relative_to(REPO_ROOT)} (needs root and debootstrap)")
    argv = ["bash", str(script), *(["--force"] if force else []), ref]
    rc, tail = _run_streaming(argv, emit)
    if rc != 0:
        errors = [line for line in tail if "error:" in line]
        last = (errors or list(tail) or [f"exit {rc}"])[-1]
        raise ImageBuildError(f"building {what} {ref} failed: {last.removeprefix('build.sh: error: ')}")
    image_id = engine.image_id(ref)
    if image_id is None:
        raise ImageBuildError(f"{script.name} finished but the engine has no {ref}")
    emit(f"{what} {ref} ready ({_short(image_id)}, {_elapsed(started)})")
    return image_id


# -- agent image ---------------------------------------------------------------------------------
def build_agent(
    engine: Engine,
    settings: Settings,
    *,
    offline: bool = True,
    base: str | None = None,
    force: bool = False,
    on_line: OnLine = None,
) -> str:
    """Ensure the agent image ``settings.image`` is built from the current inputs; its id.

    offline (default): on the debootstrapped base ``settings.base_image`` (built if missing).
    online: on ``base`` (default ``debian:bookworm-slim``), which must already be on the engine.
    A matching ``sandbox.image.inputs`` label means reuse; ``force`` rebuilds anyway (the engine's
    layer cache still applies; ``build_base(force=True)`` redoes the base).
    """
    emit = _emitter(on_line)
    if not DOCKERFILE.is_file():
        raise ImageBuildError(f"{DOCKERFILE} is missing: the agent image is built from a source checkout of sandbox")
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(settings.cache_dir / "build.lock", emit, "another image build is running"):
        started = time.monotonic()
        base_ref, base_id = _ensure_base(engine, settings, offline=offline, base=base, on_line=on_line)
        claude = claude_binary(settings, on_line)
        files = _context_files()  # read once: the digest describes exactly what goes into the context
        digest = inputs_digest(files, settings.claude_sdk_version, base_id)
        version_ref = _version_ref(settings.image)  # None: the user picked their own tag

        if not force:
            existing = engine.image_id(settings.image)
            if existing is not None and engine.image_labels(settings.image).get(LABEL_INPUTS) == digest:
                _tag(engine, existing, version_ref, settings.image)
                emit(f"reusing {settings.image} ({_short(existing)}): its inputs are unchanged ({digest[:19]})")
                return existing

        emit(f"building {settings.image} on {base_ref} (Claude Code {settings.claude_sdk_version})")
        context = _make_context(settings.cache_dir / "context", claude, files)
        try:
            image_id = engine.build_image(
                str(context),
                DOCKERFILE.name,
                settings.image,
                buildargs={
                    "BASE": base_ref,
                    "SANDBOX_VERSION": sandbox.__version__,
                    "CLAUDE_VERSION": settings.claude_sdk_version,
                    "INPUTS_DIGEST": digest,
                },
                on_line=on_line,
            )
        finally:
            shutil.rmtree(context, ignore_errors=True)
        _tag(engine, image_id, version_ref, settings.image)
        also = f" and {version_ref}" if version_ref else ""
        emit(f"built {settings.image}{also} ({_short(image_id)}, {_elapsed(started)})")
        return image_id


def _ensure_base(
    engine: Engine, settings: Settings, *, offline: bool, base: str | None, on_line: OnLine
) -> tuple[str, str]:
    if offline and (base is None or base == settings.base_image):
        return settings.base_image, build_base(engine, settings, on_line=on_line)
    ref = base or ONLINE_BASE
    image_id = engine.image_id(ref)
    if image_id is None:
        raise ImageMissing(
            f"base image {ref} is not on the engine, and sandbox never pulls images",
            hint=f"`docker pull {ref}` or `docker load` it first, or build offline on {settings.base_image}",
        )
    _emitter(on_line)(f"using base image {ref} ({_short(image_id)})")
    return ref, image_id


def _context_files() -> dict[str, bytes]:
    """The small files of the build context, by their path in it: the Dockerfile and sandbox/*.py."""
    files = {DOCKERFILE.name: DOCKERFILE.read_bytes()}
    for name in INSIDE_MODULES:
        module = PACKAGE_DIR / name
        if module.is_file():
            files[f"sandbox/{name}"] = module.read_bytes()
    return files


def inputs_digest(files: dict[str, bytes], claude_version: str, base_id: str) -> str:
    """sha256 over everything that makes the agent image: Dockerfile, modules, Claude Code, base."""
    h = hashlib.sha256()

    def part(name: str, data: bytes) -> None:
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)

    for name in sorted(files):
        part(name, files[name])
    part("claude-version", claude_version.encode())
    part("base-image-id", base_id.encode())
    return "sha256:" + h.hexdigest()


def _make_context(root: Path, claude: Path, files: dict[str, bytes]) -> Path:
    """A fresh build context: ``files``, plus ``claude`` (hardlinked when possible)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("build-*"):  # left by an interrupted build (we hold the build lock)
        shutil.rmtree(stale, ignore_errors=True)
    context = Path(tempfile.mkdtemp(dir=root, prefix="build-"))
    os.chmod(context, 0o755)
    try:
        os.link(claude, context / "claude")
    except OSError:
        shutil.copy2(claude, context / "claude")
    (context / "sandbox").mkdir(mode=0o755)
    for name, data in files.items():
        dest = context / name
        dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        dest.write_bytes(data)
        os.chmod(dest, 0o644)
    return context


def _version_ref(image: str) -> str | None:
    """The second tag: ``repo:latest`` -> ``repo:<sandbox version>`` (``sandbox-agent:0.1.0``).

    An image with a tag of its own choosing (``sandbox-agent:dev``) gets no second tag, so that it
    never moves the version tag away from the ``latest`` build.
    """
    repo, tag = _split_ref(image)
    return f"{repo}:{sandbox.__version__}" if tag == "latest" else None


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon was a registry port
        return ref, "latest"
    return name, tag


def _tag(engine: Engine, image_id: str, ref: str | None, primary: str) -> None:
    if ref is None or ref == primary or engine.image_id(ref) == image_id:
        return
    repo, tag = _split_ref(ref)
    engine.tag_image(image_id, repo, tag)


# -- status --------------------------------------------------------------------------------------
def image_status(engine: Engine, settings: Settings) -> dict[str, Any]:
    """What ``sandbox image status`` shows: is ``settings.image`` there, and built from today's inputs?"""
    ref = settings.image
    image_id = engine.image_id(ref)
    labels = engine.image_labels(ref) if image_id else {}
    base_ref = labels.get(LABEL_BASE) or settings.base_image
    base_id = engine.image_id(base_ref)
    expected = None
    if base_id is not None and DOCKERFILE.is_file():
        expected = inputs_digest(_context_files(), settings.claude_sdk_version, base_id)
    inputs = labels.get(LABEL_INPUTS)
    if image_id is None:
        reason = "not built"
    elif base_id is None:
        reason = f"its base image {base_ref} is gone"
    elif expected is None:
        reason = "no Dockerfile.agent to compare with"
    elif inputs != expected:
        reason = "its inputs changed (Dockerfile, in-container modules, Claude Code version or base)"
    else:
        reason = "up to date"
    return {
        "image": ref,
        "exists": image_id is not None,
        "id": image_id,
        "version": labels.get(LABEL_VERSION),
        "claude": labels.get(LABEL_CLAUDE),
        "base": base_ref if image_id else None,
        "base_id": base_id,
        "inputs": inputs,
        "expected_inputs": expected,
        "up_to_date": image_id is not None and inputs is not None and inputs == expected,
        "reason": reason,
    }


# -- helpers -------------------------------------------------------------------------------------
def _emitter(on_line: OnLine) -> Callable[[str], None]:
    return on_line if on_line is not None else (lambda _line: None)


def _run_streaming(argv: list[str], emit: Callable[[str], None]) -> tuple[int, deque[str]]:
    """Run argv, sending each output line (stdout and stderr) to emit; exit code and the last lines."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    tail: deque[str] = deque(maxlen=30)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace", bufsize=1, env=env,
        )  # fmt: skip
    except OSError as e:
        raise ImageBuildError(f"cannot run {argv[0]}: {e}") from e
    assert proc.stdout is not None
    with proc:
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                if line.strip():
                    tail.append(line)
                    emit(line)
        except BaseException:
            proc.terminate()
            raise
    return proc.returncode, tail


@contextlib.contextmanager
def _locked(path: Path, emit: Callable[[str], None], busy: str) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            emit(f"waiting: {busy} (lock {path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


# -- a repository's toolchain (README "Toolchain") -----------------------------------------------
DEVCONTAINER = Path(".devcontainer") / "devcontainer.json"
TOOLCHAIN_PREFIX = "sandbox-agent-"     # sandbox-agent-<repo>:<digest>: the agent layer on the repository's base
BUILT_BASE_PREFIX = "sandbox-toolchain-"  # sandbox-toolchain-<repo>:latest: what its Dockerfile built
LABEL_TOOLCHAIN = "sandbox.toolchain.inputs"  # on a built base: the digest of its Dockerfile, context and args
# What the agent layer needs of a base (Dockerfile.agent's first step): these, or apt-get to install them.
AGENT_TOOLS = ("tmux", "git", "tini", "python3", "less", "ps", "update-ca-certificates")
USER_TOOLS = ("getent", "groupadd", "useradd")
# Claude Code is linked against glibc: its loader, by architecture.
_GLIBC_LOADERS = {"x86_64": "/lib64/ld-linux-x86-64.so.2", "amd64": "/lib64/ld-linux-x86-64.so.2",
                  "aarch64": "/lib/ld-linux-aarch64.so.1", "arm64": "/lib/ld-linux-aarch64.so.1"}
MAX_DEVCONTAINER_BYTES = 1 << 20


@dataclass(frozen=True)
class Toolchain:
    """Where a repository's agent image comes from: an image on the engine (``base``) or a Dockerfile
    built first (``dockerfile`` in ``context`` with ``args``); ``why`` says which file chose it."""

    top: Path
    why: str
    base: str | None = None
    dockerfile: Path | None = None
    context: Path | None = None
    args: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The repository's part of the image names: its directory's name and a digest of its path."""
        stem = re.sub(r"[^a-z0-9._-]+", "-", self.top.name.lower()).strip("._-")[:40] or "repo"
        return f"{stem}-{hashlib.sha256(str(self.top).encode()).hexdigest()[:8]}"

    @property
    def built_base(self) -> str:
        return f"{BUILT_BASE_PREFIX}{self.name}:latest"


def toolchain_of(settings: Settings, top: Path | None) -> Toolchain | None:
    """The repository's toolchain, or None (the default agent image ``settings.image``).

    ``[toolchain] base`` or ``dockerfile`` (a trust key of ``.sandbox.toml``); an empty ``[toolchain]``
    table: ``.devcontainer/devcontainer.json``'s ``image`` or ``build.dockerfile``. A devcontainer.json
    alone chooses nothing: the repository's files name an image only through approved content."""
    tc = settings.toolchain
    if tc is None or top is None:
        return None
    where = f"{top / '.sandbox.toml'} [toolchain]"
    if tc.base is not None:
        return Toolchain(top, f"{where} base = {tc.base!r}", base=tc.base)
    if tc.dockerfile is not None:
        path = top / tc.dockerfile
        return Toolchain(top, f"{where} dockerfile = {tc.dockerfile!r}", dockerfile=path, context=path.parent)
    return _devcontainer(top)


def _devcontainer(top: Path) -> Toolchain:
    path = top / DEVCONTAINER
    doc = _read_jsonc(path)
    build = doc.get("build") if isinstance(doc.get("build"), dict) else {}
    dockerfile = build.get("dockerfile", doc.get("dockerFile"))
    image = doc.get("image")
    if isinstance(image, str) and image.strip() and dockerfile is None:
        return Toolchain(top, f"{path} image = {image.strip()!r}", base=image.strip())
    if isinstance(dockerfile, str) and dockerfile.strip():
        context = build.get("context", doc.get("context", "."))
        args = build.get("args") or {}
        if not isinstance(context, str) or not isinstance(args, dict):
            raise UsageError(f"{path}: build.context must be a path and build.args a table of strings")
        here = path.parent
        file, ctx = (here / dockerfile.strip()).resolve(), (here / context).resolve()
        for p in (file, ctx):
            if not p.is_relative_to(top.resolve()):
                raise UsageError(f"{path}: {p} is outside the repository")
        return Toolchain(top, f"{path} build.dockerfile = {dockerfile.strip()!r}", dockerfile=file, context=ctx,
                         args=tuple(sorted((str(k), str(v)) for k, v in args.items())))
    raise UsageError(f"[toolchain] names no base or dockerfile, and {path} names no image or build.dockerfile",
                     hint='set [toolchain] base = "IMAGE" or dockerfile = "PATH" in .sandbox.toml')


def _read_jsonc(path: Path) -> dict[str, Any]:
    """devcontainer.json (JSON with comments and trailing commas), read with no link followed, capped."""
    import json

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_DEVCONTAINER_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"[toolchain] names no base or dockerfile, and there is no {path}",
                         hint='set [toolchain] base = "IMAGE" or dockerfile = "PATH" in .sandbox.toml') from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_DEVCONTAINER_BYTES:
        raise UsageError(f"cannot read {path}: over {MAX_DEVCONTAINER_BYTES} bytes")
    try:
        doc = json.loads(_strip_jsonc(data.decode("utf-8")))
    except (UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"cannot read {path}: not a JSON object")
    return doc


def _strip_jsonc(text: str) -> str:
    """JSONC -> JSON: ``//`` and ``/* */`` comments outside strings dropped, trailing commas removed."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _dockerfile_digest(tc: Toolchain) -> str:
    assert tc.dockerfile is not None and tc.context is not None
    try:
        data = tc.dockerfile.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the toolchain's Dockerfile {tc.dockerfile}: {e.strerror}") from None
    h = hashlib.sha256(data + b"\0" + str(tc.context).encode() + b"\0" + repr(tc.args).encode())
    return "sha256:" + h.hexdigest()


def _base_of(engine: Engine, tc: Toolchain, *, build: bool, force: bool, emit: Callable[[str], None]) -> tuple[str, str | None]:
    """(the base's ref, its id or None when it is missing or stale); ``build``: a Dockerfile is built when
    its inputs changed (``force``: always — the engine's layer cache keeps it quick)."""
    if tc.base is not None:
        return tc.base, engine.image_id(tc.base)
    ref, digest = tc.built_base, _dockerfile_digest(tc)
    have = engine.image_id(ref)
    if have is not None and not force and engine.image_labels(ref).get(LABEL_TOOLCHAIN) == digest:
        return ref, have
    if not build:
        return ref, None
    assert tc.dockerfile is not None and tc.context is not None
    emit(f"building the toolchain's base {ref} from {tc.dockerfile}")
    inside = tc.dockerfile.is_relative_to(tc.context)
    image_id = engine.build_image(str(tc.context), str(tc.dockerfile.relative_to(tc.context) if inside else tc.dockerfile),
                                  ref, buildargs=dict(tc.args), labels={LABEL_TOOLCHAIN: digest}, on_line=emit)
    return ref, image_id


def check_base(engine: Engine, ref: str) -> None:
    """The agent layer's needs of a base, checked in a throwaway container of it (no network): a shell,
    glibc (Claude Code's loader), the user tools, and the agent tools or apt-get to install them.
    One ``UsageError`` naming what is missing."""
    loader = _GLIBC_LOADERS.get(platform.machine().lower(), "/lib64/ld-linux-x86-64.so.2")
    script = ("for t in " + " ".join(AGENT_TOOLS + USER_TOOLS + ("apt-get",)) + "; do "
              "command -v $t >/dev/null 2>&1 || echo \"missing $t\"; done; "
              f"[ -e {loader} ] || echo 'missing glibc'")
    res = engine.run_tool(ref, "0:0", [], ["/bin/sh", "-c", script], {}, timeout=60)
    what = f"the toolchain's base image {ref}"
    need = "the agent layer needs a Debian- or Ubuntu-like base (glibc, apt)"
    if res.exit_code != 0:
        detail = res.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"{what} cannot run /bin/sh ({(detail or ['exit ' + str(res.exit_code)])[-1][:200]}): {need}")
    missing = [line.split(" ", 1)[1] for line in res.stdout.decode(errors="replace").splitlines()
               if line.startswith("missing ")]
    if "glibc" in missing:
        raise UsageError(f"{what} has no glibc ({loader} is missing; musl, as on Alpine?): Claude Code needs glibc; {need}")
    users = [t for t in USER_TOOLS if t in missing]
    tools = [t for t in AGENT_TOOLS if t in missing]
    if users:
        raise UsageError(f"{what} has no {', '.join(users)} (the agent user is made with them): {need}")
    if tools and "apt-get" in missing:
        raise UsageError(f"{what} lacks {', '.join(tools)} and has no apt-get to install them: {need}")


def require_base(engine: Engine, tc: Toolchain) -> None:
    """A toolchain's base image must be on the engine (never pulled): else one ``UsageError`` line."""
    if tc.base is not None and engine.image_id(tc.base) is None:
        raise UsageError(f"the toolchain's base image {tc.base} is not on the engine, and sandbox never pulls images",
                         hint=f"`docker pull {tc.base}` or `docker load` it first ({tc.why})")


def toolchain_image(engine: Engine, settings: Settings, tc: Toolchain, *, build: bool = True, force: bool = False,
                    on_line: OnLine = None) -> tuple[str, str]:
    """(the ref, the id) of the repository's agent image ``sandbox-agent-<repo>:<digest>``: the agent layer
    (``Dockerfile.agent``) on the toolchain's base, cached by its inputs like the default image. A missing
    base is a ``UsageError`` (never pulled); ``build=False`` refuses a missing or stale one instead."""
    emit = _emitter(on_line)
    if not DOCKERFILE.is_file():
        raise ImageBuildError(f"{DOCKERFILE} is missing: the agent image is built from a source checkout of sandbox")
    require_base(engine, tc)
    found = _toolchain_ref(engine, settings, tc, build=False, force=force, emit=emit)
    if found[1] is not None:
        return found[0], found[1]
    if not build:
        raise ImageMissing(f"the toolchain image of {tc.top} is not built from today's inputs ({tc.why})",
                           hint="run `sandbox image build` in the repository")
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(settings.cache_dir / "build.lock", emit, "another image build is running"):
        ref, existing, base_ref, digest, files = _toolchain_ref(engine, settings, tc, build=True, force=force, emit=emit)
        if existing is not None:
            return ref, existing
        check_base(engine, base_ref)
        started = time.monotonic()
        emit(f"building {ref}: the agent layer on {base_ref} ({tc.why})")
        claude = claude_binary(settings, on_line)
        context = _make_context(settings.cache_dir / "context", claude, files)
        try:
            image_id = engine.build_image(
                str(context), DOCKERFILE.name, ref,
                buildargs={"BASE": base_ref, "SANDBOX_VERSION": sandbox.__version__,
                           "CLAUDE_VERSION": settings.claude_sdk_version, "INPUTS_DIGEST": digest},
                on_line=on_line)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        emit(f"built {ref} ({_short(image_id)}, {_elapsed(started)})")
        for old in engine.image_tags(ref.rpartition(":")[0]):  # the repository's earlier builds: none is used again
            if old != ref and engine.remove_image(old):
                emit(f"removed {old} (built from earlier inputs)")
        return ref, image_id


def _toolchain_ref(engine: Engine, settings: Settings, tc: Toolchain, *, build: bool, force: bool,
                   emit: Callable[[str], None]) -> tuple[str, str | None, str, str, dict[str, bytes]]:
    """(the agent image's ref, its id when it is built from today's inputs, the base's ref, the digest, the
    context's files); the base's Dockerfile is built first when ``build``."""
    base_ref, base_id = _base_of(engine, tc, build=build, force=force, emit=emit)
    if base_id is None:
        return "", None, base_ref, "", {}
    files = _context_files()
    digest = inputs_digest(files, settings.claude_sdk_version, base_id)
    ref = f"{TOOLCHAIN_PREFIX}{tc.name}:{digest.removeprefix('sha256:')[:12]}"
    existing = engine.image_id(ref)
    if existing is None or force or engine.image_labels(ref).get(LABEL_INPUTS) != digest:
        existing = None
    return ref, existing, base_ref, digest, files


def toolchain_status(engine: Engine, settings: Settings, top: Path | None) -> dict[str, Any]:
    """Which image a repository's agents get, and why (``sandbox image status``)."""
    tc = toolchain_of(settings, top)
    if tc is None:
        why = "no [toolchain] in its trusted .sandbox.toml" if top is not None else "not in a git repository"
        return {"repository": str(top) if top else None, "image": settings.image, "why": f"the default agent image: {why}"}
    out: dict[str, Any] = {"repository": str(top), "why": tc.why, "base": tc.base or tc.built_base}
    if tc.base is not None and engine.image_id(tc.base) is None:
        return {**out, "image": None, "exists": False, "reason": f"its base {tc.base} is not on the engine (never pulled)"}
    try:
        ref, image_id = toolchain_image(engine, settings, tc, build=False)
    except ImageMissing as e:
        return {**out, "image": None, "exists": False, "reason": str(e)}
    return {**out, "image": ref, "id": image_id, "exists": True, "reason": "up to date"}
