"""The isolated profile's two proxies, as configuration text (standard library only, pure).

An isolated agent sits on an internal network with no route out. Its only ways out are two
containers made from the same image (``sandbox-proxy:bookworm``, ``images/proxy/build.sh``):

* the **model proxy** (nginx): a reverse proxy to the model API (``https://api.anthropic.com`` or
  ``http://host:port``) that replaces whatever credential the agent sends (it holds a placeholder)
  with the real one — ``x-api-key: KEY`` or ``Authorization: Bearer KEY`` — and verifies the
  upstream's TLS certificate (nginx does not by default: a proxy that adds the key must);
* the **egress proxy** (squid): a forward proxy for HTTP and ``CONNECT`` that allows the hosts of
  an allowlist (names, ``*.domain``, ``host:port``, presets ``pypi`` ``npm`` ``crates`` ``debian``
  ``github``) and denies everything else, raw IPs included unless listed; it never holds the key.

Both accept clients only from the networks named (the agent's internal subnet), listen as an
unprivileged user, and log one line per request to stdout, which :func:`parse_netlog` reads back
into :class:`NetRecord` (``docker logs`` of a per-agent proxy is that agent's net log).

Nothing here talks to Docker: :func:`model_proxy` and :func:`egress_proxy` describe the containers
(argv, user, files to copy in before start, mounts); :func:`archive` makes the tar for
``put_archive``. The key travels only in a file (mode 0400) copied into the created model proxy
before it starts: never in its command, environment or labels, so never in ``docker inspect``.
"""

from __future__ import annotations

import io
import ipaddress
import re
import tarfile
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IMAGE = "sandbox-proxy:bookworm"
CONF_DIR = "/etc/sandbox-proxy"  # an anonymous volume (the root filesystem is read-only)
MODEL_PORT = 8080
EGRESS_PORT = 3128
PROXY_UID = PROXY_GID = 13  # `proxy` in Debian's base-passwd: an unprivileged user in every Debian image
DOCKER_DNS = "127.0.0.11"  # the engine's resolver on user-defined networks (nginx needs an address)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# The agent's network: `docker network create --internal` (no route out, no outside DNS) and, on
# Docker's bridge, no address for the host on it: without inhibit_ipv4 the bridge holds the gateway
# address and an "internal" container still reaches every host service bound to 0.0.0.0 there.
INTERNAL_NETWORK_OPTIONS = {"com.docker.network.bridge.inhibit_ipv4": "true"}

NETLOG_TAG = "sandbox-netlog/1"  # squid's lines
MODELLOG_TAG = "sandbox-model/1"  # nginx's lines

PRESETS: dict[str, tuple[str, ...]] = {
    "pypi": ("pypi.org", "files.pythonhosted.org"),
    "npm": ("registry.npmjs.org",),
    "crates": ("crates.io", "static.crates.io", "index.crates.io"),
    "debian": ("deb.debian.org", "security.debian.org"),
    "github": ("github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
               "raw.githubusercontent.com"),
}

KINDS = ("x-api-key", "bearer")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 7235 token68: nothing nginx would interpret


class ProxyConfigError(ValueError):
    """A value that cannot go into a proxy's configuration (one line, says which and why)."""


# -- values --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upstream:
    """The model API the model proxy forwards to: ``scheme://host[:port]``, no path."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{_url_host(self.host)}:{self.port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return _url_host(self.host) if self.port == default else f"{_url_host(self.host)}:{self.port}"


def parse_upstream(url: str) -> Upstream:
    """``https://api.anthropic.com`` / ``http://host:port`` -> :class:`Upstream` (else ProxyConfigError)."""
    if not isinstance(url, str) or not url.isprintable() or any(c.isspace() for c in url):
        raise ProxyConfigError(f"model upstream {url!r}: not a URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ProxyConfigError(f"model upstream {url!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ProxyConfigError(f"model upstream {url!r}: no user or password in the URL (the key is given apart)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ProxyConfigError(f"model upstream {url!r}: only scheme://host[:port], no path or query")
    try:
        port = parts.port
    except ValueError:
        raise ProxyConfigError(f"model upstream {url!r}: bad port") from None
    host = _host(parts.hostname or "", what=f"model upstream {url!r}")
    return Upstream(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


@dataclass(frozen=True)
class Credential:
    """The real key: ``kind`` is ``x-api-key`` (Anthropic API keys) or ``bearer`` (OAuth tokens)."""

    kind: str
    value: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProxyConfigError(f"credential kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not isinstance(self.value, str) or not 8 <= len(self.value) <= 8192 or not _TOKEN.fullmatch(self.value):
            raise ProxyConfigError("the credential must be 8 to 8192 characters of A-Z a-z 0-9 . _ ~ + / = -")


@dataclass(frozen=True)
class Allowed:
    """One allowlist entry: ``host`` is a name, ``.domain`` (it and its subdomains) or an IP address;
    ``port`` None means the usual ones (80 and 443 for plain HTTP, 443 for CONNECT)."""

    host: str
    port: int | None = None

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.host)

    def __str__(self) -> str:
        host = f"*{self.host}" if self.host.startswith(".") else _url_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"


def parse_allow(entries: Iterable[str]) -> tuple[Allowed, ...]:
    """Presets expanded, hosts validated (a hostname, ``*.domain``, an IP, each optionally ``:port``;
    IPv6 as ``[addr]:port``), lower-cased, duplicates and entries a wildcard covers dropped; sorted."""
    found: set[Allowed] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise ProxyConfigError(f"allowlist entry {entry!r}: not a string")
        text = entry.strip().lower()
        if text in PRESETS:
            found.update(Allowed(h) for h in PRESETS[text])
            continue
        found.add(_allowed(entry, text))
    wild = {(a.host, a.port) for a in found if a.host.startswith(".")}
    kept = {a for a in found if not any(
        (w, a.port) in wild for w in _parents(a.host) if w != a.host)}
    return tuple(sorted(kept, key=_order))


def _order(a: Allowed) -> tuple[str, int]:
    return a.host, a.port or 0


def _allowed(entry: str, text: str) -> Allowed:
    what = f"allowlist entry {entry!r}"
    if not text or not text.isprintable() or any(c.isspace() for c in text):
        raise ProxyConfigError(f"{what}: not a host name (a name, *.domain, an IP, optionally :port)")
    host, port = text, None
    if text.startswith("["):  # [v6] or [v6]:port
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")) or not _is_ip(host) or ":" not in host:
            raise ProxyConfigError(f"{what}: bad IPv6 address (write [addr] or [addr]:port)")
        port = _port(rest[1:], what) if rest else None
        return Allowed(str(ipaddress.ip_address(host)), port)
    if text.count(":") == 1:
        host, raw_port = text.split(":")
        port = _port(raw_port, what)
    elif text.count(":") > 1:
        raise ProxyConfigError(f"{what}: an IPv6 address goes in brackets: [addr] or [addr]:port")
    if host.startswith("*."):
        name = _host(host[2:], what=what, ip=False)
        if "." not in name:
            raise ProxyConfigError(f"{what}: a wildcard needs a domain with a dot (*.example.com)")
        return Allowed("." + name, port)
    return Allowed(_host(host, what=what), port)


def _host(host: str, *, what: str, ip: bool = True) -> str:
    host = host.lower()
    if ip and _is_ip(host):
        return str(ipaddress.ip_address(host))
    if len(host) > 253 or not _HOSTNAME.fullmatch(host) or host.rsplit(".", 1)[-1].isdigit():
        raise ProxyConfigError(f"{what}: not a host name (letters, digits, - and dots; a name, *.domain, an IP)")
    return host


def _port(raw: str, what: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535 or raw != str(int(raw)):
        raise ProxyConfigError(f"{what}: the port must be a number from 1 to 65535")
    return int(raw)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parents(host: str) -> list[str]:
    """``a.b.c`` -> ``.a.b.c``, ``.b.c``, ``.c`` (the wildcards that would cover it)."""
    labels = host.lstrip(".").split(".")
    return ["." + ".".join(labels[i:]) for i in range(len(labels))]


def _networks(clients: Sequence[str]) -> list[str]:
    if not clients:
        raise ProxyConfigError("name the client networks (the agent's internal subnet): a proxy open to all is refused")
    out = []
    for c in clients:
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except (ValueError, TypeError):
            raise ProxyConfigError(f"client network {c!r}: not an address or CIDR") from None
    return out


# -- nginx: the model proxy ----------------------------------------------------------------------
NGINX_CONF = f"{CONF_DIR}/nginx.conf"
CREDENTIAL_CONF = f"{CONF_DIR}/credential.conf"  # the only file with the key
NGINX_ARGV = ("nginx", "-c", NGINX_CONF, "-e", "stderr")  # after the image's ENTRYPOINT (tini --)
# What the model proxy passes, with the key (README "Profiles"): what Claude Code was seen to ask of the
# model API (the Messages API, `?beta=true` in the query) and its token count; every other path is 403.
MODEL_PATHS: tuple[tuple[str, str], ...] = (("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"))


def nginx_conf(upstream: Upstream, *, clients: Sequence[str], port: int = MODEL_PORT,
               resolver: str = DOCKER_DNS) -> str:
    """nginx.conf for the model proxy (no secret in it: the key is in ``credential.conf``)."""
    nets = _networks(clients)
    resolver = str(ipaddress.ip_address(resolver))
    _port(str(port), "model proxy port")
    tls = upstream.scheme == "https"
    lines = [
        "# sandbox model proxy: generated by sandbox/proxy.py, do not edit",
        "daemon off;",
        "worker_processes 1;",
        "pid /tmp/nginx.pid;",
        "error_log stderr warn;",
        "events { worker_connections 512; }",
        "http {",
        f"    log_format sandbox '{MODELLOG_TAG} $msec $remote_addr $request_method $status "
        "$request_length $bytes_sent $request_uri';",
        "    access_log /dev/stdout sandbox;",
        "    server_tokens off;",
        "    client_body_temp_path /tmp/nginx-body;",
        "    proxy_temp_path /tmp/nginx-proxy;",
        "    fastcgi_temp_path /tmp/nginx-fastcgi;",
        "    uwsgi_temp_path /tmp/nginx-uwsgi;",
        "    scgi_temp_path /tmp/nginx-scgi;",
        "    client_max_body_size 64m;",
        # A variable in proxy_pass makes nginx resolve the upstream per request (through `resolver`),
        # not once at start: the API's addresses change.
        f"    resolver {_url_host(resolver)} valid=30s ipv6=off;",
        "    resolver_timeout 10s;",
        "    server {",
        f"        listen {port};",
        *[f"        allow {n};" for n in nets],
        "        deny all;",
        f'        set $sandbox_upstream "{upstream.url}";',
    ]
    for method, path in MODEL_PATHS:
        # An exact match of the normalised path; what goes upstream is that very path (and the
        # client's query), never the client's spelling of it.
        lines += [
            f"        location = {path} {{",
            f"            limit_except {method} {{ deny all; }}",
            f"            proxy_pass $sandbox_upstream{path}$is_args$args;",
            "            proxy_http_version 1.1;",
            '            proxy_set_header Connection "";',
            f'            proxy_set_header Host "{upstream.host_header}";',
            f"            include {CREDENTIAL_CONF};",
            "            proxy_buffering off;",  # server-sent events: each token as it comes
            "            proxy_request_buffering off;",
            "            proxy_read_timeout 900s;",
            "            proxy_send_timeout 900s;",
            "            proxy_redirect off;",
        ]
        if tls:
            lines += [
                "            proxy_ssl_server_name on;",
                f'            proxy_ssl_name "{upstream.host}";',
                "            proxy_ssl_verify on;",
                f"            proxy_ssl_trusted_certificate {CA_BUNDLE};",
                "            proxy_ssl_verify_depth 4;",
                "            proxy_ssl_protocols TLSv1.2 TLSv1.3;",
            ]
        lines += ["        }"]
    lines += [
        "        location / {",  # every other path: refused here, logged with its path, never sent on
        "            default_type text/plain;",
        '            return 403 "sandbox: the model proxy passes only the model API\\n";',
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def credential_conf(credential: Credential) -> str:
    """The two header lines that replace what the agent sends (whatever it sends: nginx drops every
    client header of a name it sets, in any letter case; an empty value removes the header)."""
    if credential.kind == "x-api-key":
        real, other = f'x-api-key "{credential.value}"', 'Authorization ""'
    else:
        real, other = f'Authorization "Bearer {credential.value}"', 'x-api-key ""'
    return f"proxy_set_header {real};\nproxy_set_header {other};\n"


# -- squid: the egress proxy ---------------------------------------------------------------------
SQUID_CONF = f"{CONF_DIR}/squid.conf"
SQUID_ARGV = ("squid", "-N", "-f", SQUID_CONF)  # -N: in the foreground, no daemon

# time client method host port squid-status http-status bytes-from-client bytes-to-client
_LOGFORMAT = f"{NETLOG_TAG} %ts.%03tu %>a %rm %>rd %>rP %Ss %>Hs %>st %<st"
# Never reached through the proxy, even for a listed name that resolves there: the proxy itself and
# link-local (cloud metadata, 169.254.169.254).
_NEVER = ("127.0.0.0/8", "0.0.0.0/8", "::1", "169.254.0.0/16", "fe80::/10")


def squid_conf(allow: Sequence[Allowed], *, clients: Sequence[str], port: int = EGRESS_PORT) -> str:
    """squid.conf for the egress proxy: ``allow`` (from :func:`parse_allow`) and nothing else."""
    nets = _networks(clients)
    _port(str(port), "egress proxy port")
    lines = [
        "# sandbox egress proxy: generated by sandbox/proxy.py, do not edit",
        f"http_port {port}",
        "pid_filename none",
        "cache deny all",
        "cache_mem 0 MB",
        "coredump_dir /tmp",
        "netdb_filename none",
        "pinger_enable off",
        "logfile_rotate 0",
        "cache_log stdio:/dev/stderr",
        f"logformat sandbox {_LOGFORMAT}",
        "access_log stdio:/dev/stdout logformat=sandbox",
        "visible_hostname sandbox-egress",
        "httpd_suppress_version_string on",
        "via off",
        "forwarded_for delete",
        "shutdown_lifetime 1 seconds",
        "",
        f"acl sbx_clients src {' '.join(nets)}",
        "acl sbx_connect method CONNECT",
        f"acl sbx_never dst {' '.join(_NEVER)}",
        "acl sbx_web port 80 443",
        "acl sbx_tls port 443",
        "http_access deny !sbx_clients",
        "http_access deny manager",
    ]
    by_port: dict[int | None, list[Allowed]] = {}
    for a in allow:
        if not isinstance(a, Allowed):
            raise ProxyConfigError(f"allowlist entry {a!r}: not parsed (use parse_allow)")
        _allowed(str(a), str(a).lower())  # revalidate: an Allowed made by hand gets no free pass
        if a not in by_port.setdefault(a.port, []):
            by_port[a.port].append(a)
    for p, entries in sorted(by_port.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        tag = "any" if p is None else str(p)
        names = [a.host for a in entries if not a.is_ip]
        ips = [a.host for a in entries if a.is_ip]
        dests = []
        if p is not None:
            lines.append(f"acl sbx_port_{tag} port {p}")
        if names:  # -n: never a reverse lookup, so a raw IP never matches a name
            lines.append(f"acl sbx_names_{tag} dstdomain -n {' '.join(names)}")
            dests.append(f"sbx_names_{tag}")
        if ips:
            lines.append(f"acl sbx_ips_{tag} dst {' '.join(ips)}")
            dests.append(f"sbx_ips_{tag}")
        for d in dests:
            if p is None:
                lines.append(f"http_access allow sbx_connect sbx_tls {d} !sbx_never")
                lines.append(f"http_access allow !sbx_connect sbx_web {d} !sbx_never")
            else:
                lines.append(f"http_access allow sbx_port_{tag} {d} !sbx_never")
    lines += ["http_access deny all", ""]
    return "\n".join(lines)


# -- the containers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxyContainer:
    """What the engine creates for one proxy; ``files`` go into ``CONF_DIR`` (put_archive) before start."""

    role: str                                   # "model" or "egress"
    command: tuple[str, ...]                    # after the image's ENTRYPOINT (tini --)
    port: int
    files: dict[str, tuple[bytes, int]] = field(repr=False)   # name -> (content, mode)
    user: str = f"{PROXY_UID}:{PROXY_GID}"
    read_only_root: bool = True
    tmpfs: dict[str, str] = field(default_factory=lambda: {"/tmp": "rw,nosuid,nodev,noexec,size=64m"})
    volumes: tuple[str, ...] = (CONF_DIR,)
    cap_drop: tuple[str, ...] = ("ALL",)
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)

    def archive(self) -> bytes:
        return archive(self.files, PROXY_UID, PROXY_GID)


def model_proxy(upstream: Upstream, credential: Credential, *, clients: Sequence[str],
                port: int = MODEL_PORT, resolver: str = DOCKER_DNS) -> ProxyContainer:
    conf = nginx_conf(upstream, clients=clients, port=port, resolver=resolver)
    return ProxyContainer("model", NGINX_ARGV, port, {
        "nginx.conf": (conf.encode(), 0o400),
        "credential.conf": (credential_conf(credential).encode(), 0o400),
    })


def egress_proxy(allow: Sequence[Allowed], *, clients: Sequence[str], port: int = EGRESS_PORT) -> ProxyContainer:
    return ProxyContainer("egress", SQUID_ARGV, port,
                          {"squid.conf": (squid_conf(allow, clients=clients, port=port).encode(), 0o400)})


def archive(files: dict[str, tuple[bytes, int]], uid: int, gid: int, top: str = ".") -> bytes:
    """A tar of ``files`` (name -> (content, mode)) under ``top`` (mode 0500), owned by uid:gid."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo(top)
        d.type, d.mode, d.uid, d.gid = tarfile.DIRTYPE, 0o500, uid, gid
        tar.addfile(d)
        for name, (data, mode) in sorted(files.items()):
            if "/" in name or name in ("", ".", ".."):
                raise ProxyConfigError(f"file name {name!r}: one plain name")
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- the net log ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetRecord:
    """One request a proxy saw. ``decision``: ``allowed``, ``denied`` (by the allowlist) or ``error``
    (a request squid could not parse); ``status`` is squid's (``TCP_TUNNEL``, ``TCP_MISS``,
    ``TCP_DENIED``…) or ``MODEL`` for the model proxy; ``code`` the HTTP status sent to the client."""

    time: float
    client: str
    method: str
    host: str
    port: int | None
    decision: str
    status: str
    code: int
    bytes_in: int    # from the client
    bytes_out: int   # to the client
    proxy: str       # "egress" or "model"
    path: str = "-"  # the model proxy's: the request's path and query as the client sent them (capped)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_FIELD = re.compile(r"[\x21-\x7e]{1,300}")
_LONG_FIELD = re.compile(r"[\x21-\x7e]{1,16384}")  # nginx escapes what is not printable ASCII as \xXX
PATH_SHOWN = 200


def parse_netlog(text: str, *, model_host: str | None = None, model_port: int | None = None) -> list[NetRecord]:
    """Records from the proxies' stdout (``docker logs``, the stdout stream only: squid and nginx write
    their own diagnostics to stderr). Lines that are not exactly a record are skipped, so text a
    client managed to get into a line can at most spoil that line. ``model_host``/``model_port``
    name the upstream on the model proxy's records (its log lines do not carry it)."""
    out: list[NetRecord] = []
    for line in text.splitlines():
        fields = line.split(" ")
        if fields[0] == MODELLOG_TAG and len(fields) == 8 and _LONG_FIELD.fullmatch(fields[7]):
            # the path is the client's to choose: a long one is cut, never a reason to lose the record
            fields[7] = fields[7][:PATH_SHOWN] + ("..." if len(fields[7]) > PATH_SHOWN else "")
        if not fields or not all(_FIELD.fullmatch(f) for f in fields):
            continue
        try:
            if fields[0] == NETLOG_TAG and len(fields) == 10:
                out.append(_squid_record(fields[1:]))
            elif fields[0] == MODELLOG_TAG and len(fields) == 8:
                t, client, method, code, got, sent, path = fields[1:]
                out.append(NetRecord(float(t), _ip(client), method, model_host or "-", model_port,
                                     "allowed" if int(code) != 403 else "denied", "MODEL", int(code),
                                     int(got), int(sent), "model", path))
        except ValueError:
            continue
    return out


def _squid_record(f: list[str]) -> NetRecord:
    t, client, method, host, port, status, code, got, sent = f
    if "DENIED" in status:
        decision = "denied"
    elif status.startswith("NONE"):
        decision = "error"
    else:
        decision = "allowed"
    return NetRecord(float(t), _ip(client), method, host, None if port == "-" else int(port), decision,
                     status, 0 if code == "-" else int(code), _num(got), _num(sent), "egress")


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _num(text: str) -> int:
    return 0 if text == "-" else int(text)
