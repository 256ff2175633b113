"""Resources and cost: tokens from Claude Code's transcript, the price table, engine stats, the budget.

The unit tests need no engine; the slow ones run the real Claude Code against the scripted model,
whose request log says what it reported in ``usage`` — the counts sandbox shows must be exactly those.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import usage as U
from tests.conftest import Env, wait_for


# -- the transcript tally (pure) --------------------------------------------------------------------
def _line(mid: str | None, model: str, inp: int, out: int, **extra: int) -> bytes:
    usage = {"input_tokens": inp, "output_tokens": out, **extra}
    return (json.dumps({"type": "assistant", "message": {"id": mid, "model": model, "usage": usage}}) + "\n").encode()


def test_tally_counts_each_message_once_and_reads_on_from_where_it_stopped() -> None:
    t = U.Tally()
    # one message written as two lines (two content blocks): the last line's usage counts, once
    data = _line("m1", "claude-sonnet-4-5", 100, 1) + _line("m1", "claude-sonnet-4-5", 100, 40)
    data += b'{"type": "user", "message": {"content": "hi"}}\n'
    t.feed("/t.jsonl", data)
    assert t.usage() == {"claude-sonnet-4-5": {"input": 100, "output": 40, "cache_write": 0, "cache_read": 0, "calls": 1}}
    # a line still being written is left for the next read; the offset stops before it
    partial = _line("m2", "claude-sonnet-4-5", 200, 5, cache_read_input_tokens=1000)
    t.feed("/t.jsonl", partial[:20])
    assert t.offsets["/t.jsonl"] == len(data)
    again = U.Tally(json.loads(t.to_json()))  # kept between hook runs
    again.feed("/t.jsonl", partial)
    assert again.usage()["claude-sonnet-4-5"] == {"input": 300, "output": 45, "cache_write": 0, "cache_read": 1000,
                                                  "calls": 2}
    assert U.totals(again.usage())["calls"] == 2


@pytest.mark.parametrize("bad", [
    {"m": {"input": -5, "output": True, "calls": 1e30}},
    {"m": {"input": "12", "output": [1]}},
    ["not", "a", "dict"],
    "x",
])
def test_usage_from_an_agents_state_file_is_checked(bad: object) -> None:
    got = U.clean(bad)
    for counts in got.values():
        assert all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U.MAX_TOKENS for v in counts.values())
    assert U.clean({"m" * 500: {"input": 3}}) == {"m" * 100: {"input": 3, "output": 0, "cache_write": 0,
                                                              "cache_read": 0, "calls": 0}}


# -- prices (pure) -----------------------------------------------------------------------------------
def test_prices_longest_pattern_setting_first_unknown_is_unpriced() -> None:
    table = U.merge_prices(None)
    assert U.price_for("claude-sonnet-4-5-20250929", table)["output"] == 15.0
    assert U.price_for("claude-opus-4-1-2025", table)["input"] == 15.0   # more specific than claude-opus-*
    assert U.price_for("claude-opus-5-5", table)["input"] == 5.0
    assert U.price_for("gpt-9", table) is None
    used = {"claude-sonnet-4-5": {"input": 1_000_000, "output": 100_000, "cache_read": 1_000_000, "cache_write": 0},
            "gpt-9": {"input": 10, "output": 1}}
    spent = U.cost(used, table)
    assert spent.usd == pytest.approx(3.0 + 1.5 + 0.3) and spent.unpriced == ("gpt-9",)
    assert spent.describe() == "$4.80+?"
    mine = U.merge_prices(U.check_prices({"*": {"input": 1, "output": 2}}))  # the setting's patterns first
    assert U.cost({"claude-sonnet-4-5": {"input": 1_000_000, "output": 0}}, mine).usd == 1.0
    assert U.check_prices({"x": {"input": 2, "output": 4}})["x"] == {"input": 2.0, "output": 4.0,
                                                                    "cache_write": 2.5, "cache_read": 0.2}


@pytest.mark.parametrize("bad, words", [
    ({"x": {"input": -1, "output": 1}}, ["prices.x.input", ">= 0"]),
    ({"x": {"input": 1}}, ["needs input and output"]),
    ({"x": {"input": 1, "output": 1, "bogus": 2}}, ["unknown key 'bogus'"]),
    ({"x": 3}, ["prices.x"]),
])
def test_a_bad_price_table_is_one_usage_line(tmp_path: Path, bad: dict[str, object], words: list[str]) -> None:
    from tests.conftest import make_env, make_repo

    env = make_env(tmp_path, "sandbox-agent:never-used")
    repo = make_repo(tmp_path / "repo")
    lines = [f'[prices."{k}"]' + "".join(f"\n{kk} = {json.dumps(vv)}" for kk, vv in v.items()) if isinstance(v, dict)
             else f'[prices]\n"{k}" = {v}' for k, v in bad.items()]
    (repo / ".sandbox.toml").write_text("\n".join(lines) + "\n")
    env.ok("trust", cwd=repo)  # prices apply from a trusted repository file only (tests/test_trust.py)
    for argv in (["config", "show"], ["ls"]):
        res = env.run(*argv, cwd=repo)
        assert res.code == 2 and "Traceback" not in res.err, res.err
        line = res.err.strip()
        assert len(line.splitlines()) == 1 and line.startswith("sandbox: error: invalid setting prices"), line
        for w in words:
            assert w in line, line


# -- engine stats (pure part) ----------------------------------------------------------------------
def test_stats_from_the_engines_answer() -> None:
    raw = {"read": "now", "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}, "system_cpu_usage": 20_000_000_000,
                                        "online_cpus": 2},
           "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 10_000_000_000,
                            "online_cpus": 2},
           "memory_stats": {"usage": 300 * 1024**2, "limit": 4 * 1024**3, "max_usage": 400 * 1024**2,
                            "stats": {"total_inactive_file": 100 * 1024**2}},
           "pids_stats": {"current": 7}}
    st = U.from_answer(raw)
    assert st is not None
    assert st.cpu_percent == pytest.approx(20.0)  # 1 s of CPU in 10 s of 2 cores' time: 20 % of one core
    assert (st.memory, st.memory_peak, st.pids) == (200 * 1024**2, 400 * 1024**2, 7)
    assert U.size(st.memory) == "200M" and U.short(42_715) == "42.7k"
    assert U.from_answer({"cpu_stats": {}, "memory_stats": {}}) is None  # a stopped container
    one_shot = dict(raw, precpu_stats={})
    assert U.from_answer(one_shot).cpu_percent is None  # type: ignore[union-attr]


# -- against real agents -----------------------------------------------------------------------------
def _mock_usage(env: Env, name: str, repo: Path) -> tuple[int, int]:
    """What the scripted model reported, summed over the conversation's requests (its log)."""
    res = env.ok("exec", name, "--", "cat", "/tmp/sandbox-mock.log", cwd=repo)
    records = [json.loads(line) for line in res.out.splitlines() if line.strip()]
    used = [r["usage"] for r in records if r.get("answer", "").startswith(("tool_use:", "text:")) and "usage" in r]
    assert used, records
    return sum(u["input_tokens"] for u in used), sum(u["output_tokens"] for u in used)


def _remove(env: Env, repo: Path, *names: str) -> None:
    """Remove what a test spawned (others count the agents of the run), without hiding its own failure."""
    for name in names:
        env.run("rm", "--force", "--delete-branch", name, cwd=repo)


@pytest.fixture
def spawned(env: Env, repo: Path):  # type: ignore[no-untyped-def]
    names: list[str] = []
    yield names
    _remove(env, repo, *names)


@pytest.mark.slow
@pytest.mark.claude
def test_token_counts_are_what_the_scripted_model_reported(env: Env, repo: Path, spawned: list[str]) -> None:
    spawned.append("tok-1")
    env.ok("spawn", "--name", "tok-1", "write the task file", cwd=repo)
    env.ok("wait", "tok-1", "--until", "idle", "--timeout", "120", cwd=repo)
    inp, out = _mock_usage(env, "tok-1", repo)

    listed = env.ok("ls", "--json", cwd=repo).json()[0]
    assert listed["tokens"]["input"] == inp and listed["tokens"]["output"] == out, (listed["tokens"], inp, out)
    assert listed["tokens"]["calls"] == 3  # the default script: Write, Bash, the answer
    assert listed["cost_usd"] > 0 and listed["turns"] == 1 and listed["prompts"] == 1
    assert listed["cpu_percent"] is None  # only --wide asks the engine

    wide = env.ok("ls", "--wide", cwd=repo).out.splitlines()
    head = wide[0].split()
    assert head[:9] == ["NAME", "AGENT/MODEL", "STATE", "TRY", "ACTIVE", "CPU", "MEM", "TOKENS", "COST"], head
    row = wide[1].split()
    assert row[0] == "tok-1" and row[5].endswith("%") and row[6][-1] in "KMG"
    assert row[7] == f"{U.short(inp)}/{U.short(out)}" and row[8] == f"${listed['cost_usd']:.2f}"
    widej = env.ok("ls", "--wide", "--json", cwd=repo).json()[0]
    assert widej["memory_bytes"] > 1024**2 and isinstance(widej["cpu_percent"], float)

    st = env.ok("stats", "tok-1", "--json", cwd=repo).json()
    assert st["tokens"]["input"] == inp and st["memory_bytes"] > 0 and st["memory_limit"] == 4 * 1024**3
    text = env.ok("stats", "tok-1", cwd=repo).out
    assert f"{inp} in, {out} out" in text and "cost" in text and "memory" in text

    # a price table in the repository's settings (`*`: every model) changes the estimate
    (repo / ".sandbox.toml").write_text('[prices."*"]\ninput = 1000000\noutput = 0\n')
    env.ok("trust", cwd=repo)
    assert env.ok("ls", "--json", cwd=repo).json()[0]["cost_usd"] == pytest.approx(inp)
    missing = env.run("stats", "nope-1", cwd=repo)
    assert missing.code == 4 and missing.err.startswith("sandbox: error: no agent named 'nope-1'")


@pytest.mark.slow
@pytest.mark.claude
def test_the_budget_stop_keeps_the_work(env: Env, repo: Path, spawned: list[str]) -> None:
    # $10 per million tokens: the first model call (~14k tokens of Claude Code's prompt) costs ~$0.14,
    # two cost ~$0.28: the Write of the first call happens, the budget stops the commit of the second.
    (repo / ".sandbox.toml").write_text('[prices."*"]\ninput = 10\noutput = 10\n')
    env.ok("trust", cwd=repo)
    spawned += ["cost-1", "cost-2"]
    res = env.ok("spawn", "--name", "cost-1", "--max-cost", "0.2", "write the task file", cwd=repo)
    assert "cost-1" in res.out
    env.ok("wait", "cost-1", "--until", "exited", "--timeout", "120", cwd=repo)
    sb = env.ok("ls", "--json", cwd=repo).json()[0]
    assert sb["state"] == "stopped" and sb["reason"].startswith("max-cost $0.2 reached (estimate $"), sb["reason"]
    assert sb["max_cost"] == 0.2 and sb["cost_usd"] > 0.2 and sb["labels"]["sandbox.max-cost"] == "0.2"
    assert sb["engine_state"] == "running"  # the container stays: pane, workspace and work kept
    workspace = Path(sb["workspace"])
    assert (workspace / "SANDBOX_TASK.md").is_file()
    wait_for(lambda: "SANDBOX_TASK.md" in env.ok("diff", "cost-1", "--uncommitted", "--stat", cwd=repo).out, 30,
             "the uncommitted file in the diff")
    refused = env.run("rm", "cost-1", cwd=repo)
    assert refused.code == 5 and workspace.is_dir()  # work that would be lost: rm refuses
    bad = env.run("spawn", "--name", "cost-2", "--max-cost", "-1", "x", cwd=repo)
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1, bad.err
