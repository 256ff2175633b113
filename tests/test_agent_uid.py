"""The agent's uid is never the invoking user's (issue 26 item 4): the rule, without an engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import config as lightsettings  # (agent_ids lives in config)
from sandbox.config import AGENT_UID_OFFSET, ROOT_FALLBACK_UID, agent_ids


@pytest.mark.parametrize("uid, gid, env, expected", [
    (1000, 1000, {}, (AGENT_UID_OFFSET + 1000, AGENT_UID_OFFSET + 1000)),
    (1001, 50, {}, (AGENT_UID_OFFSET + 1001, AGENT_UID_OFFSET + 50)),
    (0, 0, {"SUDO_UID": "1000", "SUDO_GID": "1000"}, (AGENT_UID_OFFSET + 1000, AGENT_UID_OFFSET + 1000)),
    (0, 0, {}, (ROOT_FALLBACK_UID, ROOT_FALLBACK_UID)),
])
def test_the_agent_never_runs_as_the_invoking_user(monkeypatch: pytest.MonkeyPatch, uid: int, gid: int,
                                                   env: dict[str, str], expected: tuple[int, int]) -> None:
    monkeypatch.setattr(lightsettings.os, "getuid", lambda: uid)
    monkeypatch.setattr(lightsettings.os, "getgid", lambda: gid)
    for key in ("SUDO_UID", "SUDO_GID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got = agent_ids(None, None)
    assert got == expected and got[0] not in (0, uid, int(env.get("SUDO_UID", "0")))
    assert agent_ids(4242, None) == (4242, expected[1])  # (the setting still chooses)


def test_a_store_others_cannot_read_is_found_before_the_spawn(tmp_path: Path) -> None:
    from sandbox.spawn.trees import readable_by as _readable_by

    store = tmp_path / "objects"
    store.mkdir()
    me = os.getuid()
    store.chmod(0o700)
    assert not _readable_by(store, me + AGENT_UID_OFFSET, 12345) and _readable_by(store, me, 0)
    store.chmod(0o755)
    assert _readable_by(store, me + AGENT_UID_OFFSET, 12345)
