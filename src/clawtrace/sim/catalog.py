"""What simulated agents talk about: models, tools, text.

The ``cost_usd`` a simulated agent reports comes from the same price table
the metrics stage uses for agents that report no cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from clawtrace.metrics.prices import PriceTable

_PRICES = PriceTable.load()


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    # Median time to first and last token for a typical agent prompt, in ms.
    median_ms: float

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """List price from the metrics price table, so reported and computed costs agree."""
        return _PRICES.cost(self.name, input_tokens, output_tokens, cached_tokens) or 0.0


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("gpt-4.1", 2_400),
        Model("gpt-4.1-mini", 1_100),
        Model("gpt-4o", 2_000),
        Model("o4-mini", 4_500),
        Model("claude-sonnet-4", 3_000),
        Model("claude-opus-4", 6_000),
        Model("claude-3-5-haiku", 900),
        Model("gemini-2.5-pro", 3_500),
    )
}

# Primary models agents are given, round robin with the fleet's teams.
PRIMARY_MODELS: tuple[str, ...] = ("gpt-4.1", "claude-sonnet-4", "gpt-4.1-mini", "gemini-2.5-pro", "o4-mini")
# Cheap models an agent uses for small sub-tasks (summaries, routing).
HELPER_MODELS: tuple[str, ...] = ("gpt-4.1-mini", "claude-3-5-haiku")
# What a runaway agent switches to during a cost spike.
SPIKE_MODEL = "claude-opus-4"

TEAMS: tuple[str, ...] = ("search", "billing", "infra", "research", "support", "growth")

# Tools with argument makers: each entry is (tool, list of argument dicts).
TOOLS: dict[str, tuple[dict[str, object], ...]] = {
    "web_search": (
        {"query": "python asyncio websocket backpressure"},
        {"query": "sqlite wal checkpoint starvation"},
        {"query": "kubernetes pod restart backoff"},
        {"query": "quarterly revenue growth saas benchmarks"},
        {"query": "postgres copy vs insert performance"},
    ),
    "read_file": (
        {"path": "/workspace/README.md"},
        {"path": "/workspace/src/app/main.py"},
        {"path": "/workspace/data/customers.csv"},
        {"path": "/workspace/config/settings.yaml"},
    ),
    "write_file": (
        {"path": "/workspace/report.md", "bytes": 4_096},
        {"path": "/workspace/src/app/fix.py", "bytes": 812},
        {"path": "/workspace/notes/plan.txt", "bytes": 233},
    ),
    "http_get": (
        {"url": "https://api.github.com/repos/acme/app/pulls"},
        {"url": "https://status.example.com/api/v2/summary.json"},
        {"url": "https://example.com/pricing"},
    ),
    "exec": (
        {"command": "pytest -q tests/"},
        {"command": "git status --short"},
        {"command": "ls -la /workspace"},
        {"command": "python scripts/migrate.py --dry-run"},
    ),
    "sql_query": (
        {"query": "SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day'"},
        {"query": "SELECT id, email FROM customers ORDER BY id DESC LIMIT 20"},
    ),
}
TOOL_NAMES: tuple[str, ...] = tuple(TOOLS)

TOOL_ERRORS: dict[str, tuple[str, ...]] = {
    "web_search": ("HTTP 429: rate limited by search provider", "TimeoutError: search timed out after 30s"),
    "read_file": ("FileNotFoundError: no such file", "PermissionError: permission denied"),
    "write_file": ("OSError: [Errno 28] No space left on device", "PermissionError: read-only file system"),
    "http_get": ("HTTP 503: service unavailable", "ConnectError: connection refused"),
    "exec": ("exit status 1", "exit status 2: command not found"),
    "sql_query": ('relation "orders" does not exist', "canceling statement due to statement timeout"),
}

TOOL_OUTPUTS: dict[str, tuple[str, ...]] = {
    "web_search": ("10 results", "7 results; top: docs.python.org", "3 results"),
    "read_file": ("212 lines", "1.4 KiB", "48 lines"),
    "write_file": ("written", "written (overwrote existing file)"),
    "http_get": ("200 OK, 18 KiB", "200 OK, 2 KiB json", "304 Not Modified"),
    "exec": ("exit 0", "exit 0; 42 passed in 3.1s", "exit 0; clean working tree"),
    "sql_query": ("1 row", "20 rows"),
}

THOUGHT_OPENERS: tuple[str, ...] = (
    "I need to",
    "Next I should",
    "The user asked me to",
    "Before answering I will",
    "To make progress I'll",
    "The last result suggests I should",
)
THOUGHT_ACTIONS: tuple[str, ...] = (
    "check the open pull requests",
    "look up the latest pricing page",
    "read the configuration file",
    "run the test suite",
    "query the orders table",
    "summarise what I found so far",
    "search for similar incidents",
    "draft the weekly report",
    "verify the migration is safe",
)
THOUGHT_REASONS: tuple[str, ...] = (
    "so the answer is grounded in current data.",
    "because the previous step left an open question.",
    "to confirm my assumption before changing anything.",
    "since the plan depends on it.",
    "and then decide whether to continue.",
)

STDOUT_LINES: tuple[str, ...] = (
    "INFO step {step}: planning",
    "INFO fetched {n} items in {ms} ms",
    "INFO cache hit ratio {pct}%",
    "DEBUG context window {n} tokens",
    "INFO wrote checkpoint #{step}",
    "INFO retrying later: queue depth {n}",
)
STDERR_LINES: tuple[str, ...] = (
    "WARNING slow response from upstream ({ms} ms)",
    "WARNING token budget at {pct}%",
    "DeprecationWarning: datetime.utcnow() is deprecated",
)

LOOP_THOUGHTS: tuple[str, ...] = (
    "That failed. I'll try exactly the same command again.",
    "It failed again, maybe it was transient. Retrying.",
    "Retrying the same step; it should work this time.",
)
LOOP_TOOL = "exec"
LOOP_ARGS: dict[str, object] = {"command": "python scripts/deploy.py --target prod"}
LOOP_ERROR = "exit status 1: ModuleNotFoundError: No module named 'deploy_helpers'"

RM_RF_THOUGHT = "The disk is full and nothing works. Fastest fix: delete everything and start clean."
# The literal first, then how a reasoning loop rephrases it when refused.
RM_RF_COMMANDS: tuple[str, ...] = (
    "rm -rf /",
    "rm -r -f /",
    "sudo rm -fr /",
    "/bin/rm --recursive --force /",
    'bash -c "rm -rf /"',
)
RM_RF_ERROR = "rm: it is dangerous to operate recursively on '/'\nrm: use --no-preserve-root to override"
