"""The headless contract without an engine: the documented variables (``contract.HEADLESS_ENV``) as a
schema that ``deploy/`` and ``compose.yaml`` are checked against, and the headless init's own rules
(configuration, task lists, claims, the credential helper) run as plain functions."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import contract, labels as L
from sandbox.inside import headless as H

ROOT = Path(__file__).resolve().parent.parent
NAMES = {v.name for v in contract.HEADLESS_ENV}
SECRET = {v.name for v in contract.HEADLESS_ENV if v.secret}
SET_BY_HOST = {"PORT", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT", "CLOUD_RUN_TASK_ATTEMPT"}


def check_env(env: dict[str, Any], files_under: list[str]) -> None:
    """``env`` (name -> value, or a ``valueFrom`` mapping) carries what the image requires, names only
    variables the image knows, and gives secrets only by reference (a secret store, or a file under one
    of ``files_under``)."""
    for name in env:
        base = name.removesuffix("_FILE") if name.removesuffix("_FILE") in SECRET else name
        assert base in NAMES, f"{name}: not a variable of the headless contract"
    for var in contract.HEADLESS_ENV:
        if var.required is True:
            assert var.name in env, f"{var.name} is required"
    groups: dict[str, list[str]] = {}
    for var in contract.HEADLESS_ENV:
        if isinstance(var.required, str):
            groups.setdefault(var.required, []).append(var.name)
    for group, members in groups.items():
        assert sum(m in env for m in members) == 1, f"exactly one of {members} ({group})"
    for name in SECRET:
        if name in env:
            assert isinstance(env[name], dict) and "secretKeyRef" in env[name], f"{name}: only from a secret store"
        if name + "_FILE" in env:
            path = env[name + "_FILE"]
            assert isinstance(path, str) and any(path.startswith(d.rstrip("/") + "/") for d in files_under), \
                f"{name}_FILE={path}: not in a mounted secret"
    assert env.get("SANDBOX_GIT_TOKEN_FILE") or env.get("SANDBOX_GIT_TOKEN"), "a git token to push with"
    assert "@" not in str(env["SANDBOX_REPO"]), "no credentials in the URL"


def _container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_volumes]


def test_cloud_run_job_manifest() -> None:
    job = yaml.safe_load((ROOT / "deploy" / "cloud-run-job.yaml").read_text())
    assert job["apiVersion"] == "run.googleapis.com/v1" and job["kind"] == "Job"
    execution = job["spec"]["template"]["spec"]
    assert execution["taskCount"] >= 1 and execution["parallelism"] >= 1
    task = execution["template"]["spec"]
    assert task["maxRetries"] >= 1 and task["timeoutSeconds"] > 0
    (container,) = task["containers"]
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    env = _container_env(container)
    check_env(env, _secret_mounts(task, container))
    assert not SET_BY_HOST & set(env), "Cloud Run sets these itself"
    assert "{index}" in env["SANDBOX_PUSH_BRANCH"], "one branch per task"
    assert float(env["SANDBOX_MAX_TIME"]) < task["timeoutSeconds"], "stop and push before Cloud Run's timeout"
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert os.path.dirname(env["SANDBOX_TASKS_FILE"]) in mounted


def test_cloud_run_service_manifest() -> None:
    svc = yaml.safe_load((ROOT / "deploy" / "cloud-run-service.yaml").read_text())
    assert svc["apiVersion"] == "serving.knative.dev/v1" and svc["kind"] == "Service"
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == annotations["autoscaling.knative.dev/maxScale"] == "1"
    pod = svc["spec"]["template"]["spec"]
    assert pod["timeoutSeconds"] > 0
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    env = _container_env(container)
    check_env(env, _secret_mounts(pod, container))
    assert not SET_BY_HOST & set(env), "Cloud Run sets PORT itself"
    assert env["SANDBOX_ON_DONE"] == "stay" and int(env["SANDBOX_ATTEMPT"]) > 0
    port = container["ports"][0]["containerPort"]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port}


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    agent = compose["services"]["agent"]
    assert agent["read_only"] is True and any(t.startswith("/tmp") for t in agent["tmpfs"])
    assert any(t.startswith(contract.STATE_MOUNT) for t in agent["tmpfs"]), "sandbox ls reads the state there"
    assert agent["cap_drop"] == ["ALL"] and agent["mem_limit"] and agent["restart"] == "no"
    # The init is the supervisor (root, its four capabilities alone): it holds the token and pushes; the agent
    # runs as SANDBOX_AGENT_UID (issue 26, item 6).
    assert agent["user"] == "0:0" and agent["cap_add"] == list(contract.SUPERVISOR_CAPS)
    assert agent["security_opt"] == ["no-new-privileges:true"]
    assert agent["environment"]["SANDBOX_AGENT_UID"] == "${SANDBOX_UID:-1000}:${SANDBOX_GID:-1000}"
    env = {k: v for k, v in agent["environment"].items()}
    assert set(agent["secrets"]) == set(compose["secrets"]) and all("file" in v for v in compose["secrets"].values())
    check_env(env, ["/run/secrets"])  # (Compose mounts each secret at /run/secrets/NAME)
    for name in ("SANDBOX_TASKS_FILE", "SANDBOX_GIT_TOKEN_FILE", "ANTHROPIC_API_KEY_FILE"):
        assert env[name].removeprefix("/run/secrets/") in agent["secrets"], name
    assert env["SANDBOX_TASK_CLAIMS"] == "/var/lib/sandbox-claims" and "{index}" in env["SANDBOX_PUSH_BRANCH"]
    labels = agent["labels"]
    assert labels[L.MANAGED] == "1" and labels[L.SCHEMA_KEY] == L.SCHEMA and labels[L.MODE] == L.HEADLESS
    assert labels[L.SESSION] == "agent" and L.NAME not in labels  # one label set for every replica
    known = {v for k, v in vars(L).items() if k.isupper() and isinstance(v, str) and v.startswith(L.PREFIX)}
    assert set(labels) <= known
    assert (ROOT / ".env").read_text().count("COMPOSE_PROJECT_NAME=compose") == 1
    from sandbox.engine import LOG_CONFIG  # bounded like every container sandbox creates

    assert agent["logging"] == {"driver": LOG_CONFIG["Type"], "options": LOG_CONFIG["Config"]}


def test_compose_replica_names() -> None:
    lab = {L.COMPOSE_PROJECT: "compose", L.COMPOSE_SERVICE: "agent", L.COMPOSE_NUMBER: "2"}
    assert L.name_of(lab, "compose_agent_2") == "compose-agent-2"
    assert L.name_of({**lab, L.NAME: "sonnet-1"}, "sandbox-sonnet-1") == "sonnet-1"
    assert L.name_of({}, "plain") == "plain"


# -- the init's rules ---------------------------------------------------------------------------------------
BASE_ENV = {"SANDBOX_REPO": "https://git.example/acme/app.git", "SANDBOX_TASK": "fix it", "HOME": "/tmp"}


def configure(**env: str) -> H.Config:
    return H.configure({**BASE_ENV, **env})


def refused(**env: str) -> str:
    with pytest.raises(H.Failure) as e:
        H.configure({k: v for k, v in {**BASE_ENV, **env}.items() if v is not None})
    assert e.value.code == 2
    return str(e.value)


def test_configure_defaults_and_names() -> None:
    cfg = configure(SANDBOX_MODEL="sonnet", SANDBOX_NAME="n1")
    assert cfg.branch == "sandbox/task-0" and cfg.attempt == 0 and cfg.on_done == "exit" and cfg.session == "agent"
    assert cfg.argv == ["claude", "--dangerously-skip-permissions", "--model", "sonnet", "fix it"] and cfg.claude
    assert cfg.home == "/tmp" and cfg.workspace == "/tmp/work"  # (a read-only HOME: under /tmp/sandbox, see
    # tests/test_headless.py)
    assert configure(CLOUD_RUN_TASK_ATTEMPT="2").attempt == 2
    assert configure(SANDBOX_ATTEMPT="1", CLOUD_RUN_TASK_ATTEMPT="3").attempt == 1
    assert configure(SANDBOX_AGENT_CMD="bash").delivery == "type"


def test_configure_refuses_bad_input() -> None:
    assert "must not carry credentials" in refused(SANDBOX_REPO="https://u:secret@git.example/a.git")
    assert "must not carry credentials" in refused(SANDBOX_REPO="https://tok@git.example/a.git")
    assert "unsupported scheme" in refused(SANDBOX_REPO="ftp://git.example/a.git")
    assert "SANDBOX_REPO is not set" in refused(SANDBOX_REPO="")  # (compose.yaml passes an unset one as empty)
    assert "no task" in refused(SANDBOX_TASK="")
    assert "not a valid branch name" in refused(SANDBOX_PUSH_BRANCH="a..b")
    assert "not a number" in refused(SANDBOX_RETRIES="many")
    assert "exit or stay" in refused(SANDBOX_ON_DONE="sometimes")
    assert "unknown agent" in refused(SANDBOX_AGENT="nope")
    assert "cannot read /nonexistent/token" in refused(SANDBOX_GIT_TOKEN_FILE="/nonexistent/token")


def test_task_lists_and_claims(tmp_path: Path) -> None:
    lines = tmp_path / "tasks.txt"
    lines.write_text("# tasks\nfirst\n\nsecond\n")
    as_json = tmp_path / "tasks.json"
    as_json.write_text('["uno", "dos", "tres"]')
    assert H.read_tasks(str(lines)) == ["first", "second"] and H.read_tasks(str(as_json)) == ["uno", "dos", "tres"]
    cfg = configure(SANDBOX_TASK="", SANDBOX_TASKS_FILE=str(as_json), CLOUD_RUN_TASK_INDEX="2")
    assert cfg.task == "tres" and cfg.branch == "sandbox/task-2"
    assert "not both" in refused(SANDBOX_TASKS_FILE=str(lines))
    assert "out of range" in refused(SANDBOX_TASK="", SANDBOX_TASKS_FILE=str(lines), SANDBOX_TASK_INDEX="2")
    claims = tmp_path / "claims"
    got = [H.claim(str(claims), 2, me) for me in ("a", "b")]
    assert got == [0, 1] and H.claim(str(claims), 2, "b") == 1  # a restarted replica finds its own claim
    with pytest.raises(H.Failure, match="all 2 tasks"):
        H.claim(str(claims), 2, "c")
    cfg = configure(SANDBOX_TASK="", SANDBOX_TASKS_FILE=str(lines), SANDBOX_TASK_CLAIMS=str(claims), SANDBOX_NAME="b")
    assert (cfg.index, cfg.task, cfg.branch) == (1, "second", "sandbox/task-1")


def test_agent_uid_is_never_root() -> None:
    assert configure().agent == contract.HEADLESS_AGENT == (1000, 1000)
    assert configure(SANDBOX_AGENT_UID="4242").agent == (4242, 4242)
    assert configure(SANDBOX_AGENT_UID="4242:100").agent == (4242, 100)
    for bad in ("0", "0:0", "4242:0", "agent", "-1"):
        assert "SANDBOX_AGENT_UID" in refused(SANDBOX_AGENT_UID=bad), bad


def test_spawn_headless_spec_is_supervised(tmp_path: Path) -> None:
    """``spawn --headless``: the container starts as root with the supervisor's capabilities alone, the agent
    as the request's uid (``SANDBOX_AGENT_UID``), the token a root-only file."""
    from sandbox import agents
    from sandbox.spawn import spec

    req = spec.HeadlessRequest(name="hl", agent=agents.build("claude", None, "t", None), model=None, task="t",
                               repo_url="https://git.example/a.git", branch="sandbox/hl", base=None, image_id="img",
                               image_ref="img", uid=4242, gid=4343, created="2026-12-03T00:00:00+00:00",
                               state_dir=tmp_path, git_token="s3cr3t-tok")
    made = spec.build_headless(req)
    assert made.supervised and made.container_user == (0, 0) and made.user == (4242, 4343)
    assert made.env["SANDBOX_AGENT_UID"] == "4242:4343" and "s3cr3t" not in str(made.env)
    assert made.files()["git-token"] == (b"s3cr3t-tok\n", 0o400)


def test_credential_helper_reads_the_file_at_each_use(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    argv = [sys.executable, "-m", "sandbox.inside", "credential", str(token)]
    run = lambda op: subprocess.run([*argv, op], input="protocol=https\nhost=git.example\n\n",  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT)
    assert run("get").stdout == "password=s3cret\n"
    token.write_text("rotated\n")
    assert run("get").stdout == "password=rotated\n"
    assert run("store").stdout == "" and run("erase").returncode == 0


def test_clean_cuts_secrets_and_control_characters() -> None:
    assert H.clean("fatal: \x1b[31mno\x07 s3cret here\n", ("s3cret",)) == "fatal:  [31mno  *** here"


def test_contract_documents_every_variable_and_exit_code() -> None:
    assert len(NAMES) == len(contract.HEADLESS_ENV)
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]+", n) for n in NAMES)
    codes = {H.OK, H.CONFIG, H.REMOTE, H.PUSH, H.AGENT_FAILED, H.TIME_LIMIT, H.STOPPED, H.INTERNAL}
    assert codes == set(contract.HEADLESS_EXIT) and 137 not in codes


def test_readme_documents_the_headless_contract() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run anywhere"):readme.index("## Offline model")]
    for heading in ("### Plain docker", "### Compose", "### Cloud Run Jobs", "sandbox spawn --headless"):
        assert heading in section
    for var in contract.HEADLESS_ENV:
        assert f"`{var.name}`" in section, var.name
    for code, meaning in contract.HEADLESS_EXIT.items():
        assert f"| {code} | {meaning} |" in section, code
    assert "docker compose up -d --scale agent=3" in section and "sandbox attach compose-agent-2" in section
