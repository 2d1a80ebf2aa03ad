"""What the demo world is made of: meters, models, features, accounts and their habits.

Names follow docs/TEAM-NOTES.md (models, meters, dimension keys, `acct-NNN` accounts) so the
generated events price against the shipped pricebooks. Per-account habits (models, projects,
agents) are tiny Python tables built once per seed and looked up column-wise by index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from usagebox_demo.rand import Rng

# Meter codes index these tuples (0-2 are the per-call LLM meters).
METERS = ("input_tokens", "output_tokens", "cached_input_tokens", "gpu_seconds", "tool_calls")
PRODUCTS = ("llm-api", "llm-api", "llm-api", "gpu-cloud", "agent-tools")
UNITS = ("tokens", "tokens", "tokens", "seconds", "calls")
M_INPUT, M_OUTPUT, M_CACHED, M_GPU, M_TOOL = range(5)

OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini")
ANTHROPIC_MODELS = ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-3-5-haiku")

FEATURES = ("chat", "search", "summarize", "code-review", "extract")
FEATURE_WEIGHTS = (0.40, 0.20, 0.18, 0.12, 0.10)
# Median tokens per call by feature: (input, output, cached input).
FEATURE_MEDIANS = (
    (800, 350, 1600),
    (2200, 300, 3000),
    (6000, 450, 8000),
    (4500, 800, 9000),
    (3000, 250, 4000),
)
TOKEN_SIGMA = (0.8, 0.7, 0.6)

TOOLS = ("web_search", "code_interpreter", "file_search")
TOOL_WEIGHTS = (0.5, 0.2, 0.3)
GPUS = ("h100", "a100", "l4")
GPU_WEIGHTS = (0.4, 0.35, 0.25)
AGENTS = ("support-bot", "research-agent", "code-agent", "sales-assistant", "ops-agent")
PROJECTS = ("web", "mobile", "internal", "batch", "eval")

MAX_MODELS, MAX_PROJECTS, MAX_AGENTS = 4, 3, len(AGENTS)
ZIPF_EXPONENT = 1.3


def account_id(k: int) -> str:
    """`acct-001` … `acct-050`, continuing `acct-051` … `acct-2000` for benchmarks."""
    return f"acct-{k:03d}"


@dataclass(frozen=True)
class AccountBook:
    """Per-account habits as flat, fixed-stride tables gathered by `acct * stride + slot`."""

    ids: pl.Series
    weights: tuple[float, ...]
    n_models: pl.Series
    models: pl.Series
    n_projects: pl.Series
    projects: pl.Series
    n_agents: pl.Series
    agents: pl.Series


def _pad(values: list[str], size: int) -> list[str]:
    return [values[i % len(values)] for i in range(size)]


def _model_pool(draw: float) -> tuple[str, ...]:
    """Vendor preference: OpenAI-only, Anthropic-only or both."""
    if draw < 0.4:
        return OPENAI_MODELS
    if draw < 0.7:
        return ANTHROPIC_MODELS
    return OPENAI_MODELS + ANTHROPIC_MODELS


def build_accounts(seed: int, n_accounts: int) -> AccountBook:
    """Zipf-like volume weights (acct-001 largest) and each account's models, projects, agents."""
    if n_accounts < 1:
        raise ValueError("n_accounts must be >= 1")
    rows: dict[str, list] = {k: [] for k in ("nm", "m", "np", "p", "na", "a")}
    for k in range(1, n_accounts + 1):
        r = Rng(seed, "account", k).python()
        models = r.sample(_model_pool(r.random()), r.randint(2, MAX_MODELS))
        projects = [f"proj-{k:03d}-{p}" for p in r.sample(PROJECTS, r.randint(1, MAX_PROJECTS))]
        n_agents = MAX_AGENTS if k <= 5 else r.randint(1, MAX_AGENTS)
        agents = r.sample(AGENTS, n_agents)
        rows["nm"].append(len(models))
        rows["m"] += _pad(models, MAX_MODELS)
        rows["np"].append(len(projects))
        rows["p"] += _pad(projects, MAX_PROJECTS)
        rows["na"].append(n_agents)
        rows["a"] += _pad(agents, MAX_AGENTS)
    return AccountBook(
        ids=pl.Series([account_id(k) for k in range(1, n_accounts + 1)], dtype=pl.String),
        weights=tuple(1.0 / math.pow(k, ZIPF_EXPONENT) for k in range(1, n_accounts + 1)),
        n_models=pl.Series(rows["nm"], dtype=pl.UInt32),
        models=pl.Series(rows["m"], dtype=pl.String),
        n_projects=pl.Series(rows["np"], dtype=pl.UInt32),
        projects=pl.Series(rows["p"], dtype=pl.String),
        n_agents=pl.Series(rows["na"], dtype=pl.UInt32),
        agents=pl.Series(rows["a"], dtype=pl.String),
    )


def hour_weights() -> tuple[float, ...]:
    """Diurnal load by UTC hour: an EU morning bump and a larger US afternoon peak."""
    return tuple(
        0.15
        + math.exp(-((h - 15) ** 2) / (2 * 3.5**2))
        + 0.55 * math.exp(-((h - 9) ** 2) / (2 * 2.5**2))
        for h in range(24)
    )


def day_weight(weekday: int, day_of_month: int) -> float:
    """Weekly shape (weekends ~half) times a mild growth trend over the month."""
    week = (1.0, 1.05, 1.05, 1.0, 0.9, 0.5, 0.45)[weekday]
    return week * (1.0 + 0.2 * (day_of_month - 1) / 30.0)
