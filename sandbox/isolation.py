"""The isolated profile at run time: an agent's own network and proxies, made, found and removed.

``sandbox.spawn.spec.isolated_profile`` says what an isolated agent needs (``ContainerSpec.isolation``);
this module makes it through the engine before the agent's container exists (``make``, each step
undone on failure), finds it again by label (``sandbox.proxy-of=NAME``, ``sandbox.proxy-role``;
never ``sandbox.managed``: these are not agents), removes it with its agent (``drop``), and reads
what the proxies saw (``netlog``). The configuration text of the proxies is ``sandbox.proxy``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from sandbox import labels as L
from sandbox.errors import ImageMissing

if TYPE_CHECKING:
    from pathlib import Path

    from sandbox.engine import Engine
    from sandbox.proxy import NetRecord
    from sandbox.spawn.spec import ContainerSpec


def make(engine: Engine, container: ContainerSpec, default_network: str, undo: ExitStack,
         lock_dir: Path | None = None) -> str:
    """The agent's internal network and its proxies, started (side by side), before the agent; the
    network's id. The real key goes only into the model proxy, as a file copied in before it starts.
    ``default_network`` (the default profile's bridge) is made on demand when the proxies go out by it
    (under ``lock_dir``'s lock, as a default spawn makes it: ``Engine.ensure_network``)."""
    from sandbox import proxy
    from sandbox.spawn import spec

    iso = container.isolation
    assert iso is not None
    image = engine.image_id(proxy.IMAGE)
    if image is None:
        raise ImageMissing(f"proxy image {proxy.IMAGE} is not built (the isolated profile needs it)",
                           hint="run `sandbox image build --proxy`")
    outside = iso.egress_network
    if outside == default_network:
        outside = engine.ensure_network(outside, {L.MANAGED: "1"}, lock_dir=lock_dir)
    network_id, subnet = engine.create_internal_network(iso.network, {**iso.labels, L.PROXY_ROLE: "network"})
    undo.callback(engine.remove_network, network_id)
    wanted = [("egress", proxy.egress_proxy(iso.allow, clients=[subnet]), spec.EGRESS_PROXY_HOST)]
    if iso.model is not None:
        upstream, credential = iso.model
        wanted.append(("model", proxy.model_proxy(upstream, credential, clients=[subnet]), spec.MODEL_PROXY_HOST))
    names = {role: iso.proxy_name(container.name, role) for role, _, _ in wanted}
    for name in names.values():  # by name: a proxy whose create raised after taking effect goes too
        undo.callback(engine.remove, name)

    def one(role: str, pc: proxy.ProxyContainer, alias: str) -> None:
        cid = engine.create_proxy(pc, name=names[role], image=image, labels={**iso.labels, L.PROXY_ROLE: role},
                                  network=iso.network, alias=alias, outside=outside, runtime=container.runtime)
        engine.put_archive(cid, proxy.CONF_DIR, pc.archive())
        engine.start(cid)

    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        for done in [pool.submit(one, *w) for w in wanted]:
            done.result()
    return network_id


def proxies(engine: Engine, name: str) -> list[dict[str, Any]]:
    """Agent ``name``'s proxy containers, as the engine lists them (none for other profiles)."""
    return engine.list_containers([f"{L.PROXY_OF}={name}"])


def drop(engine: Engine, name: str) -> None:
    """Remove agent ``name``'s proxies (their anonymous volume holds the key: removed with them) and
    its internal network; gone already is fine."""
    for c in proxies(engine, name):
        engine.remove(str(c["Id"]), force=True)
    for net in engine.list_networks([f"{L.PROXY_OF}={name}"]):
        engine.remove_network(str(net["Id"]))


def everything(engine: Engine, run_id: str | None) -> list[dict[str, Any]]:
    """Every isolated agent's proxy containers and networks (of ``run_id``, if given): ``Labels`` and
    ``Created`` of each (what gc needs to find those whose agent is gone)."""
    filters = [L.PROXY_OF, *([f"{L.RUN_ID}={run_id}"] if run_id else [])]
    return [*engine.list_containers(filters),
            *({"Labels": n.get("Labels") or {}, "Created": n.get("Created")} for n in engine.list_networks(filters))]


def netlog(engine: Engine, name: str) -> list[NetRecord]:
    """Every request agent ``name``'s proxies saw, oldest first; the proxies' own loopback checks left out."""
    from sandbox import proxy

    records = []
    for c in proxies(engine, name):
        text = engine.logs(str(c["Id"]), tail=None, stderr=False)
        records += [r for r in proxy.parse_netlog(text) if not r.client.startswith("127.")]
    return sorted(records, key=lambda r: r.time)


def gateways(engine: Engine, container_id: str, name: str) -> list[str]:
    """``gateway:443`` of every network the agent and its proxies are on (what doctor probes)."""
    found: list[str] = []
    for ref in [container_id, *(str(c["Id"]) for c in proxies(engine, name))]:
        for endpoint in engine.networks_of(ref).values():
            gateway = f"{endpoint.get('Gateway')}:443"
            if endpoint.get("Gateway") and gateway not in found:
                found.append(gateway)
    return found


def peer_address(engine: Engine, container_id: str) -> str | None:
    """An address of another running agent (what doctor probes), if there is one."""
    for c in engine.list_containers(L.managed_filter(), all=False):
        if c["Id"] == container_id:
            continue
        for endpoint in ((c.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if endpoint.get("IPAddress"):
                return str(endpoint["IPAddress"])
    return None
