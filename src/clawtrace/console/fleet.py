"""The fleet page: every agent at a glance, grouped by environment and region, updating live.

The page holds the filters; the table under them is a fragment
(``/fleet/table``) that htmx fetches again every few seconds and whenever a
filter changes, so 1,000 rows update without reloading the page. The numbers
come from the same fleet view as ``GET /api/v1/fleet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from starlette.datastructures import QueryParams

from clawtrace.access import Credential
from clawtrace.console.fleet_rows import COLGROUP, COLUMNS, UNSORTED_COLUMNS, blocks_html
from clawtrace.console.pages import render, signed_in
from clawtrace.gateway.metrics_api import current_fleet
from clawtrace.metrics.fleet import STATUSES, FleetRow, FleetTotals, sort_rows, totals
from clawtrace.metrics.stage import MetricsStage

router = APIRouter(include_in_schema=False)

# Sort keys offered (a subset of clawtrace.metrics.fleet.SORT_KEYS) and how the select names them.
SORTS: dict[str, str] = {
    "agent": "agent id",
    "status": "status",
    "cost": "cost, last hour",
    "cost_rate": "cost per hour (rate)",
    "failures": "failures in a row",
    "latency": "p95 reasoning latency",
    "heartbeat": "heartbeat age",
    "success": "tool success",
    "tokens": "tokens per action",
    "events": "events per second",
}
# Numbers where the worst is the biggest: sorting by them starts with the biggest first.
DESCENDING_FIRST = frozenset({"cost", "cost_rate", "failures", "latency", "heartbeat", "tokens", "events"})
REFRESH_SECONDS = 5
# What fleet_table.html needs to draw the table (see fleet_rows.py for why the rows are Python).
TABLE_PARTS = {
    "statuses": STATUSES,
    "columns": COLUMNS,
    "unsorted_columns": UNSORTED_COLUMNS,
    "colgroup": Markup(COLGROUP),
    "blocks_html": blocks_html,
}


@dataclass(frozen=True, slots=True)
class FleetFilters:
    q: str = ""
    env: str = ""
    region: str = ""
    status: str = ""
    sort: str = "agent"
    order: str = "asc"
    grouped: bool = True
    # Values that were not understood and were replaced by the default, said on the page.
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: QueryParams) -> FleetFilters:
        problems: list[str] = []
        status = params.get("status", "")
        if status and status not in STATUSES:
            problems.append(f"status {status!r} is not one of {', '.join(STATUSES)}; showing every status")
            status = ""
        sort = params.get("sort", "agent")
        if sort not in SORTS:
            problems.append(f"cannot sort by {sort!r}; sorting by agent id")
            sort = "agent"
        order = params.get("order") or ("desc" if sort in DESCENDING_FIRST else "asc")
        if order not in ("asc", "desc"):
            problems.append(f"order must be asc or desc, not {order!r}")
            order = "asc"
        return cls(
            q=params.get("q", "").strip(),
            env=params.get("env", ""),
            region=params.get("region", ""),
            status=status,
            sort=sort,
            order=order,
            grouped=params.get("group", "region") != "none",
            problems=tuple(problems),
        )

    def query(self) -> str:
        """The filters as a query string (for the address bar and the sort links)."""
        values = {"q": self.q, "env": self.env, "region": self.region, "status": self.status}
        pairs = {k: v for k, v in values.items() if v}
        if self.sort != "agent" or self.order != "asc":
            pairs.update(sort=self.sort, order=self.order)
        if not self.grouped:
            pairs["group"] = "none"
        return urlencode(pairs)

    def matches(self, row: FleetRow) -> bool:
        return (
            (not self.env or row.env == self.env)
            and (not self.region or row.region == self.region)
            and (not self.status or row.status == self.status)
            and (not self.q or self.q.lower() in row.agent.lower())
        )


@dataclass(slots=True)
class FleetGroup:
    env: str
    region: str
    rows: list[FleetRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))


@dataclass(frozen=True, slots=True)
class FleetView:
    groups: list[FleetGroup]
    summary: FleetTotals
    envs: list[str]
    regions: list[str]
    # Agents the person can read at all, before the filters.
    known: int


def group_rows(rows: list[FleetRow], grouped: bool) -> list[FleetGroup]:
    """Rows (already sorted) under (environment, region) headings in name order, keeping their order."""
    groups: dict[tuple[str, str], FleetGroup] = {}
    for row in rows:
        key = (row.env, row.region) if grouped else ("", "")
        group = groups.get(key)
        if group is None:
            group = groups[key] = FleetGroup(*key)
        group.rows.append(row)
        group.counts[row.status] += 1
    return [groups[key] for key in sorted(groups)]


async def fleet_view(request: Request, credential: Credential, filters: FleetFilters) -> FleetView:
    rows, windows, now = await current_fleet(request, credential.readable_envs())
    selected = [(row, window) for row, window in zip(rows, windows, strict=True) if filters.matches(row)]
    stage: MetricsStage = request.app.state.metrics
    summary = totals(
        [row for row, _ in selected], [w for _, w in selected], now, stage.settings.window_seconds
    )
    ordered = sort_rows([row for row, _ in selected], filters.sort, filters.order == "desc")
    return FleetView(
        groups=group_rows(ordered, filters.grouped),
        summary=summary,
        envs=sorted({row.env for row in rows}),
        regions=sorted({row.region for row in rows}),
        known=len(rows),
    )


@router.get("/", response_class=HTMLResponse)
async def fleet_page(request: Request) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    filters = FleetFilters.parse(request.query_params)
    view = await fleet_view(request, credential, filters)
    context = {"view": view, "filters": filters, "sorts": SORTS, **TABLE_PARTS}
    context["refresh_seconds"] = REFRESH_SECONDS
    return render(request, "fleet.html", credential, context, nav="fleet")


@router.get("/fleet/table", response_class=HTMLResponse)
async def fleet_table(request: Request) -> Response:
    """The live part of the fleet page; htmx swaps it in."""
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    filters = FleetFilters.parse(request.query_params)
    view = await fleet_view(request, credential, filters)
    response = render(
        request,
        "fleet_table.html",
        credential,
        {"view": view, "filters": filters, **TABLE_PARTS},
    )
    # The address bar follows the filters, so a reload or a shared link shows the same table.
    query = filters.query()
    response.headers["HX-Replace-Url"] = "/" + (f"?{query}" if query else "")
    return response
