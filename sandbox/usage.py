"""What an agent uses: model tokens and their cost, and the CPU and memory of its container.

**Stdlib only, pure** (no file is opened here but through the caller): the container's Claude Code
hooks import it (``sandbox.inside``) to total the ``usage`` fields of Claude Code's own transcript
into the state file, and the host imports it to check those totals (the state file is untrusted),
price them and turn the engine's stats into figures.

- **Tokens**: ``Tally`` reads a transcript (JSON lines) incrementally, from where it stopped; each
  assistant message counts once (Claude Code writes one line per content block, all carrying the
  message's usage: the last line of an id wins), per model. The state file's ``usage`` field is
  ``{model: {"input", "output", "cache_write", "cache_read", "calls"}}``.
- **Cost**: USD per million tokens per model from a price table: layers of glob patterns on the model
  id — the ``prices`` setting first, then ``PRICES`` (``merge_prices``); in the first layer with a
  match, the longest pattern wins. A model no pattern matches has no price: its cost is unknown
  (``Cost.unpriced``), never guessed as 0.
- **Resources**: ``Stats`` from two one-shot samples of the engine's stats (CPU % between them, the
  memory in use less the page cache, as ``docker stats`` shows it).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any

TOKEN_KINDS = ("input", "output", "cache_write", "cache_read")
# The transcript's (and the Messages API's) names for them.
API_FIELDS = {"input": "input_tokens", "output": "output_tokens",
              "cache_write": "cache_creation_input_tokens", "cache_read": "cache_read_input_tokens"}
MAX_TOKENS = 10**13  # a count above this is not a count (an agent's state file may say anything)

# USD per million tokens. Patterns are fnmatch globs on the model id; the longest matching pattern
# wins. Figures are list prices as published by the model's vendor; override them with `prices` in
# the settings (README "Cost").
PRICES: dict[str, dict[str, float]] = {
    "claude-opus-4-1*": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
    "claude-opus-4-0*": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
    "claude-opus-4-2025*": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
    "claude-opus-*": {"input": 5.0, "output": 25.0, "cache_write": 6.25, "cache_read": 0.5},
    "claude-sonnet-*": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
    "claude-3-7-sonnet*": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
    "claude-3-5-sonnet*": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
    "claude-haiku-*": {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.1},
    "claude-3-5-haiku*": {"input": 0.8, "output": 4.0, "cache_write": 1.0, "cache_read": 0.08},
}


# -- tokens ---------------------------------------------------------------------------------------
def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return 0
    return value


def empty() -> dict[str, int]:
    return {k: 0 for k in (*TOKEN_KINDS, "calls")}


class Tally:
    """Token totals of one or more transcripts, read on from where the last read stopped.

    ``to_json``/``from_json`` keep it between hook runs (a file private to the container)."""

    def __init__(self, raw: dict[str, Any] | None = None) -> None:
        raw = raw if isinstance(raw, dict) else {}
        self.offsets: dict[str, int] = {k: v for k, v in (raw.get("offsets") or {}).items()
                                        if isinstance(k, str) and isinstance(v, int) and v >= 0}
        self.totals: dict[str, dict[str, int]] = clean(raw.get("totals"))
        last = raw.get("last")
        self.last: dict[str, Any] | None = last if isinstance(last, dict) and isinstance(last.get("id"), str) else None

    def to_json(self) -> str:
        return json.dumps({"offsets": self.offsets, "totals": self.totals, "last": self.last})

    def feed(self, path: str, data: bytes) -> None:
        """``data``: the transcript's bytes from ``self.offsets[path]`` on; only whole lines count
        (a line still being written is read next time)."""
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            if b'"usage"' in line:
                self._entry(line)
        self.offsets[path] = self.offsets.get(path, 0) + end

    def _entry(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            return
        msg = entry.get("message") if isinstance(entry, dict) and entry.get("type") == "assistant" else None
        if not isinstance(msg, dict) or not isinstance(msg.get("usage"), dict):
            return
        mid = msg.get("id") if isinstance(msg.get("id"), str) else None
        model = str(msg.get("model") or "unknown")[:100]
        counts = {k: _count(msg["usage"].get(api)) for k, api in API_FIELDS.items()}
        if self.last is not None and mid is not None and self.last["id"] == mid:
            self.last = {"id": mid, "model": model, "counts": counts}  # the same message again: the last line wins
            return
        self._fold()
        if mid is None:
            self._add(model, counts)
        else:
            self.last = {"id": mid, "model": model, "counts": counts}

    def _fold(self) -> None:
        if self.last is not None:
            self._add(str(self.last["model"]), dict(self.last.get("counts") or {}))
            self.last = None

    def _add(self, model: str, counts: dict[str, Any]) -> None:
        into = self.totals.setdefault(model, empty())
        for k in TOKEN_KINDS:
            into[k] += _count(counts.get(k))
        into["calls"] += 1

    def usage(self) -> dict[str, dict[str, int]]:
        """Totals per model, the message still open included."""
        out = {m: dict(c) for m, c in self.totals.items()}
        if self.last is not None:
            into = out.setdefault(str(self.last["model"]), empty())
            for k in TOKEN_KINDS:
                into[k] += _count((self.last.get("counts") or {}).get(k))
            into["calls"] += 1
        return out


def clean(value: Any) -> dict[str, dict[str, int]]:
    """A ``usage`` value (from an agent's state file: untrusted) with only what it may hold:
    model ids (bounded strings) to non-negative counts."""
    out: dict[str, dict[str, int]] = {}
    if not isinstance(value, dict):
        return out
    for model, counts in list(value.items())[:50]:
        if isinstance(model, str) and isinstance(counts, dict):
            out[model[:100]] = {k: _count(counts.get(k)) for k in (*TOKEN_KINDS, "calls")}
    return out


def totals(usage: dict[str, dict[str, int]]) -> dict[str, int]:
    """Every model's counts added up."""
    out = empty()
    for counts in usage.values():
        for k in out:
            out[k] += counts.get(k, 0)
    return out


# -- cost -----------------------------------------------------------------------------------------
def check_prices(value: Any) -> dict[str, dict[str, float]]:
    """A ``prices`` table (the setting): pattern -> {input, output, cache_write, cache_read} in USD per
    million tokens (finite, >= 0; ``cache_*`` default from ``input``: 1.25× and 0.1×). Raises ValueError."""
    if not isinstance(value, dict):
        raise ValueError("prices must be a table of model patterns")  # noqa: TRY004 - a bad setting value
    out: dict[str, dict[str, float]] = {}
    for pattern, entry in value.items():
        if not isinstance(pattern, str) or not pattern or not isinstance(entry, dict):
            raise ValueError(f"prices.{pattern}: must be a table like {{input = 3, output = 15}}")
        unknown = set(entry) - set(TOKEN_KINDS)
        if unknown:
            raise ValueError(f"prices.{pattern}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(TOKEN_KINDS)})")
        got: dict[str, float] = {}
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"prices.{pattern}.{k}: must be a number >= 0 (USD per million tokens), not {v!r}")
            got[k] = float(v)
        if "input" not in got or "output" not in got:
            raise ValueError(f"prices.{pattern}: needs input and output")
        got.setdefault("cache_write", got["input"] * 1.25)
        got.setdefault("cache_read", got["input"] * 0.1)
        out[pattern] = got
    return out


Table = list[dict[str, dict[str, float]]]  # layers, the first with a match decides


def merge_prices(overrides: dict[str, dict[str, float]] | None) -> Table:
    """The setting's patterns (tried first: ``"*"`` there prices every model), then ``PRICES``."""
    return [dict(overrides or {}), PRICES]


def price_for(model: str, table: Table) -> dict[str, float] | None:
    """The prices of ``model``: in the first layer with a matching pattern, the longest one."""
    for layer in table:
        if not isinstance(layer, dict):
            continue
        if model in layer:
            return layer[model]
        matches = [p for p in layer if isinstance(p, str) and fnmatch.fnmatchcase(model, p)]
        if matches:
            return layer[max(matches, key=len)]
    return None


@dataclass(frozen=True)
class Cost:
    usd: float                               # of the models with a price
    unpriced: tuple[str, ...] = ()           # models used that no pattern matches

    def describe(self) -> str:
        """``$0.42`` (``$0.42+?`` when some model has no price; ``?`` when none has)."""
        if self.unpriced and not self.usd:
            return "?"
        return f"${self.usd:.2f}" + ("+?" if self.unpriced else "")


def cost(usage: dict[str, dict[str, int]], table: Table) -> Cost:
    usd, unpriced = 0.0, []
    for model, counts in usage.items():
        price = price_for(model, table)
        if price is None:
            if any(counts.get(k) for k in TOKEN_KINDS):
                unpriced.append(model)
            continue
        usd += sum(counts.get(k, 0) * float(price.get(k) or 0.0) for k in TOKEN_KINDS) / 1e6
    return Cost(round(usd, 6), tuple(sorted(unpriced)))


def short(n: int | None) -> str:
    """``1234567`` -> ``1.2M`` (token counts in a table)."""
    if n is None:
        return "-"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# -- resources --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One one-shot stats answer, reduced to what the figures need."""

    cpu_total: int          # ns of CPU time used since the container started
    system_total: int       # ns of the host's CPU time (all cores)
    online_cpus: int
    memory: int             # bytes in use, less the page cache
    memory_limit: int
    memory_peak: int | None  # cgroup v1's max_usage (None where the engine does not say)
    pids: int
    read_at: str = ""


def sample(raw: dict[str, Any], *, pre: bool = False) -> Sample | None:
    """The engine's stats answer (``GET /containers/ID/stats?stream=0``) as a ``Sample`` (``pre``: its
    earlier sample, ``precpu_stats``, for the CPU figures); None when it holds none (a stopped
    container answers with zeros)."""
    cpu = raw.get("precpu_stats" if pre else "cpu_stats") or {}
    mem = raw.get("memory_stats") or {}
    usage = (cpu.get("cpu_usage") or {}).get("total_usage")
    if not isinstance(usage, int) or not mem:
        return None
    extra = mem.get("stats") or {}
    cache = extra.get("total_inactive_file", extra.get("inactive_file", 0))  # v1, v2 (as `docker stats`)
    used = int(mem.get("usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    peak = mem.get("max_usage")
    return Sample(cpu_total=usage, system_total=int(cpu.get("system_cpu_usage") or 0), online_cpus=int(online),
                  memory=max(0, used - int(cache or 0)) if used else 0, memory_limit=int(mem.get("limit") or 0),
                  memory_peak=int(peak) if isinstance(peak, int) and peak else None,
                  pids=int((raw.get("pids_stats") or {}).get("current") or 0), read_at=str(raw.get("read") or ""))


@dataclass(frozen=True)
class Stats:
    """An agent's container now: CPU (% of one core, between two samples) and memory."""

    cpu_percent: float | None
    memory: int
    memory_limit: int
    memory_peak: int | None = None
    pids: int = 0
    cpu_seconds: float = 0.0     # CPU time since the container started

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 1),
                "memory_bytes": self.memory, "memory_limit": self.memory_limit,
                "memory_peak_bytes": self.memory_peak, "pids": self.pids,
                "cpu_seconds": round(self.cpu_seconds, 2)}


def from_answer(raw: dict[str, Any] | None, before: Sample | None = None) -> Stats | None:
    """The figures of one stats answer: CPU % against ``before`` (a sample of an earlier answer), else
    against the answer's own earlier sample (``precpu_stats``, present unless one-shot)."""
    now = sample(raw) if raw else None
    if now is None:
        return None
    return stats(before or sample(raw or {}, pre=True), now)


def stats(before: Sample | None, now: Sample) -> Stats:
    """The figures from two samples of one container (``before`` None: no CPU % yet). CPU % is of one
    core (100 % = one core busy), like ``docker stats``."""
    pct = None
    if before is not None and now.system_total > before.system_total and now.cpu_total >= before.cpu_total:
        pct = (now.cpu_total - before.cpu_total) / (now.system_total - before.system_total) * now.online_cpus * 100
    return Stats(cpu_percent=pct, memory=now.memory, memory_limit=now.memory_limit, memory_peak=now.memory_peak,
                 pids=now.pids, cpu_seconds=now.cpu_total / 1e9)


def size(n: int | None) -> str:
    """Bytes as ``512M`` / ``1.5G``."""
    if n is None:
        return "-"
    for unit, step in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= step:
            v = n / step
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return f"{n}B"


@dataclass
class Budget:
    """Whether an agent's cost passed ``max_cost`` (USD), and the words saying so."""

    max_cost: float
    table: Table = field(default_factory=lambda: [PRICES])

    def exceeded(self, usage: dict[str, dict[str, int]]) -> str | None:
        spent = cost(usage, self.table or [PRICES])
        if self.max_cost > 0 and spent.usd > self.max_cost:
            return f"max-cost ${self.max_cost:g} reached (estimate {spent.describe()})"
        return None
