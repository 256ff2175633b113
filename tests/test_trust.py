"""The repository's `.sandbox.toml` is obeyed as far as the user approved its content (issue 26 item 3).

Unit tests of ``sandbox.configfiles``' trust rule through its readers (``config.load_settings``, every
command's; ``configfiles.file_values``); the attack itself, from a real container, is in
``tests/test_hostile_config.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import configfiles
from sandbox.config import Settings, load_settings, show
from sandbox.configfiles import UntrustedSettings
from tests.conftest import make_repo


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var in [v for v in __import__("os").environ if v.startswith("SANDBOX_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return make_repo(tmp_path / "repo")


def user_file(text: str) -> None:
    path = configfiles.user_config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_every_setting_is_classified_and_the_limit_defaults_are_the_settings_own() -> None:
    assert set(configfiles.REPO_TRUST) == set(Settings.model_fields)
    limits = {k for k, v in configfiles.REPO_TRUST.items() if v == "limit"}
    assert set(configfiles.LIMIT_DEFAULTS) == limits
    for key in limits:
        field = Settings.model_fields[key]
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        assert configfiles.LIMIT_DEFAULTS[key] == default, key


def test_an_untrusted_file_with_host_keys_is_refused_by_every_reader(repo: Path) -> None:
    (repo / ".sandbox.toml").write_text('notify = "sh -c \\"id > /tmp/x\\""\nsecret_env = ["HOST_SECRET_TOKEN"]\n'
                                        "retries = 5\n")
    for read in (load_settings, configfiles.file_values):
        with pytest.raises(UntrustedSettings) as e:
            read(repo)
        assert e.value.exit_code == 2
        line = str(e.value)
        assert "notify, secret_env" in line and "sandbox trust" in line and "\n" not in line, line
    shown = show(repo)  # config show reads it anyway, and says what it left out
    assert shown["repo_file"]["trusted"] is False and shown["repo_file"]["ignored"] == ["notify", "secret_env"]
    assert shown["notify"] is None and "HOST_SECRET_TOKEN" not in shown["secret_env"] and shown["retries"] == 5


def test_safe_keys_apply_from_an_untrusted_file(repo: Path) -> None:
    (repo / ".sandbox.toml").write_text('retries = 5\nmodel = "opus"\nprofile = "isolated"\nmemory = "1g"\n')
    s = load_settings(repo)
    assert (s.retries, s.model, s.profile, s.memory) == (5, "opus", "isolated", "1g")
    assert show(repo)["repo_file"]["ignored"] == []


def test_trust_is_for_the_very_bytes_and_can_be_revoked(repo: Path) -> None:
    path = repo / ".sandbox.toml"
    path.write_text('notify = "true"\n')
    got = configfiles.trust(repo)
    assert got.trusted and got.needs_trust == ("notify",)
    assert load_settings(repo).notify == "true"
    path.write_text('notify = "true"\n# a comment\n')  # any change: untrusted again
    with pytest.raises(UntrustedSettings):
        load_settings(repo)
    configfiles.trust(repo)
    assert configfiles.status(repo).trusted
    assert configfiles.revoke(repo) is True and configfiles.revoke(repo) is False
    with pytest.raises(UntrustedSettings):
        load_settings(repo)


@pytest.mark.parametrize(("user", "repo_text", "needs"), [
    ("", 'profile = "default"', []),
    ('profile = "isolated"', 'profile = "default"', ["profile"]),      # a downgrade
    ('profile = "isolated"', 'profile = "locked"', []),                # stricter
    ("", 'memory = "8g"', ["memory"]),                                 # over the default 4g
    ("", 'memory = "0"', ["memory"]),                                  # unlimited
    ('memory = "16g"', 'memory = "8g"', []),
    ("", "cpus = 0", ["cpus"]),
    ("", "pids_limit = 100", []),
    ('max_time = 600', 'max_time = 60', []),
    ('max_time = 600', 'max_time = 6000', ["max_time"]),
    ('max_cost = 5', 'max_cost = "lots"', ["max_cost"]),              # not comparable: needs trust
    ("", 'allow = ["pypi"]', ["allow"]),                               # wider than nothing
    ('allow = ["pypi", "npm"]', 'allow = ["npm"]', []),
    ('allow = ["pypi"]', 'allow = ["pypi", "evil.example"]', ["allow"]),
    ("", 'image = "x"\nrun_id = "r"', ["image", "run_id"]),  # (an unknown key is refused before trust: test_settings)
])
def test_limits_may_only_tighten_without_trust(repo: Path, user: str, repo_text: str, needs: list[str]) -> None:
    if user:
        user_file(user + "\n")
    (repo / ".sandbox.toml").write_text(repo_text + "\n")
    found = configfiles.lookup(repo).repo_file
    assert found is not None and list(found.ignored) == needs


def test_the_user_file_is_always_trusted_and_outside_a_repository_nothing_is_refused(repo: Path,
                                                                                    tmp_path: Path) -> None:
    user_file('notify = "true"\nsecret_env = ["X"]\n')
    assert load_settings(repo).notify == "true"
    (tmp_path / "elsewhere").mkdir()
    assert configfiles.lookup(tmp_path / "repo").repo_file is None


def test_a_repository_file_that_is_a_link_or_not_a_file_is_one_usage_line(repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.toml"
    secret.write_text('notify = "true"\n')
    (repo / ".sandbox.toml").symlink_to(secret)
    with pytest.raises(configfiles.UsageError) as e:
        load_settings(repo)
    assert ".sandbox.toml" in str(e.value)


def test_config_changes_are_the_top_level_settings_file_and_devcontainer_only(tmp_path: Path) -> None:
    from sandbox.workspace import git as gitops
    from sandbox.workspace import work
    from tests.conftest import git

    repo = make_repo(tmp_path / "r")
    base = git(repo, "rev-parse", "HEAD").strip()
    for name in ("sub/.sandbox.toml", "x.sandbox.toml", ".devcontainerx", "docs/.devcontainer/a.json"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "lookalikes")
    harmless = git(repo, "rev-parse", "HEAD").strip()
    r = gitops.find_repo(repo)
    assert work.config_changes(r, base, harmless) == []
    (repo / ".sandbox.toml").write_text('notify = "x"\n')
    (repo / ".devcontainer").mkdir()
    (repo / ".devcontainer" / "devcontainer.json").write_text("{}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "settings")
    assert work.config_changes(r, base, git(repo, "rev-parse", "HEAD").strip()) == [
        ".devcontainer/devcontainer.json", ".sandbox.toml"]
