"""The fleet table's rows as HTML, built in Python rather than in the template.

This is the console's one hot loop: 1,000 agents x 12 cells, again every few
seconds for every open fleet page, so both ends are kept cheap:

- the server: through Jinja (a macro, a filter and an escape for each cell)
  the rows took 350-450 ms per render on the reference machine under load;
  written here, with ``html.escape`` on the few strings that come from
  outside, about 10-40 ms. The numbers come from ``formatting.py`` (digits,
  units and a dash only) and need no escaping;
- the browser: the rows go in blocks of ``BLOCK_ROWS``, each its own table
  (same fixed column widths, so the columns line up) inside an element with
  ``content-visibility: auto``, so Chromium lays out and paints only the
  blocks on screen. One 1,000-row table cost ~0.9 s of layout and ~0.4 s of
  pre-paint per load or refresh; the blocks cost what the visible ones do.
  Each block repeats the column headings for screen readers (visually
  hidden); the visible heading row is its own table above the blocks.

Everything around the rows stays in ``fleet_table.html``.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from markupsafe import Markup

from clawtrace.console.formatting import NO_VALUE, mebibytes, millis, number, percent, seconds, usd
from clawtrace.metrics.fleet import (
    DEAD_AFTER_SECONDS,
    DEGRADED_CONSECUTIVE_FAILURES,
    DEGRADED_SUCCESS_RATE,
    TOKENS_PER_ACTION_WARNING,
    FleetRow,
)

# (sort key, heading) of the sortable columns, then the two that are not.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("agent", "Agent"),
    ("status", "Status"),
    ("heartbeat", "Heartbeat"),
    ("success", "Tool success"),
    ("failures", "Fails in a row"),
    ("latency", "p95 reasoning"),
    ("tokens", "Tokens / action"),
    ("cost", "Cost 1 h"),
    ("cost_rate", "Cost/h"),
    ("events", "Events/s"),
)
UNSORTED_COLUMNS = ("CPU", "RSS")
COLGROUP = '<colgroup><col class="c-agent"><col class="c-status"><col span="10"></colgroup>'
BLOCK_ROWS = 50
# The height a block is assumed to have before it is first laid out (a dense row is ~24 px).
ROW_PIXELS = 24
# A cell turns amber before its number makes the agent degraded or dead, or crosses the
# default CostSpike threshold ($5/h), so that what is about to go wrong stands out.
HEARTBEAT_WARNING_SECONDS = DEAD_AFTER_SECONDS * 2 / 3
COST_RATE_WARNING = 5.0

_HIDDEN_HEADINGS = (
    '<thead class="sr"><tr>'
    + "".join(f'<th scope="col">{label}</th>' for _, label in COLUMNS)
    + "".join(f'<th scope="col">{label}</th>' for label in UNSORTED_COLUMNS)
    + "</tr></thead>"
)


def _cell(text: str, warn: bool = False) -> str:
    return f'<td class="w">{text}</td>' if warn else f"<td>{text}</td>"


def row_html(row: FleetRow, grouped: bool) -> str:
    agent = escape(row.agent)
    where = "" if grouped else f' <span class="muted">{escape(row.env)}/{escape(row.region)}</span>'
    offline = ""
    if not row.connected and row.status != "dead":
        offline = ' <span class="muted" title="not connected">\N{CIRCLED REVERSE SOLIDUS}</span>'
    heartbeat = row.heartbeat_age_s
    success = row.tool_success_rate
    tokens = row.tokens_per_action
    cpu = NO_VALUE if row.cpu_percent is None else f"{number(row.cpu_percent, 1)}%"
    return "".join(
        (
            f'<tr class="s-{row.status}" data-agent="{agent}">',
            f'<td><a href="/agents/{quote(row.agent, safe="")}">{agent}</a>{where}</td>',
            f'<td class="st">{row.status}{offline}</td>',
            _cell(seconds(heartbeat), heartbeat is not None and heartbeat > HEARTBEAT_WARNING_SECONDS),
            _cell(percent(success), success is not None and success < DEGRADED_SUCCESS_RATE),
            _cell(str(row.consecutive_failures), row.consecutive_failures >= DEGRADED_CONSECUTIVE_FAILURES),
            _cell(millis(row.reasoning_latency_p95_ms)),
            _cell(number(tokens), tokens is not None and tokens > TOKENS_PER_ACTION_WARNING),
            _cell(usd(row.cost_usd_last_hour)),
            _cell(usd(row.cost_usd_per_hour_rate), row.cost_usd_per_hour_rate > COST_RATE_WARNING),
            _cell(number(row.events_per_s, 1)),
            _cell(cpu),
            _cell(mebibytes(row.rss_bytes)),
            "</tr>",
        )
    )


def blocks_html(rows: list[FleetRow], grouped: bool) -> Markup:
    """The rows in blocks of ``BLOCK_ROWS``, as markup the template inserts as is (escaped here)."""
    out: list[str] = []
    for start in range(0, len(rows), BLOCK_ROWS):
        block = rows[start : start + BLOCK_ROWS]
        out.append(
            f'<div class="fleet-block" style="contain-intrinsic-size: auto {len(block) * ROW_PIXELS}px">'
            f'<table class="fleet dense">{COLGROUP}{_HIDDEN_HEADINGS}<tbody>'
        )
        out.extend(row_html(row, grouped) for row in block)
        out.append("</tbody></table></div>")
    return Markup("".join(out))
