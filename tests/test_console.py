"""The web console end to end: Debian's Chromium (headless, Playwright), a real gateway, the simulator.

One gateway and one simulated fleet serve most of the module (12 agents in dev,
one of them stuck in a failing-tool loop); each test logs in with its own
credential in its own browser context. The environments page has a gateway
of its own, with releases and a small fleet that follows a role. The alert rule file makes the loop
fire ReasoningLoop within seconds and only notify, so the alert stays for the
silencing test. Screenshots of every page go to test-artifacts/screenshots/.
The first tests need no browser: the pieces the pages are built from.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from starlette.datastructures import QueryParams

from browser import launch, log_in, new_context, screenshot
from clawtrace.console.fleet import FleetFilters
from clawtrace.console.formatting import millis, seconds, usd
from clawtrace.console.replay import alert_markers, build_steps
from clawtrace.sim import FleetConfig, Scenario, agent_ids, assign_scenarios
from clawtrace.store import open_store
from clawtrace.store.base import ApprovalRecord
from gateway_process import GatewayProcess
from releases import post, upload, write_release_dir

ROOT = Path(__file__).resolve().parent.parent
AGENTS = 12
SEED = 5
RULES = """
rules:
  - name: ReasoningLoop
    condition: consecutive_failed_tool_calls > 3
    for: 1s
    severity: critical
    actions: [notify]
  - name: CostSpike
    condition: cost_usd_per_hour > 5
    enabled: false
"""
# Assertions that wait for the page (htmx polling, the live tail, the alert engine).
WAIT_MS = 20_000


# --- the pieces, without a browser ---------------------------------------------------------


def event(seq: int, kind: str, second: float, **fields: Any) -> dict[str, Any]:
    ts = f"2026-01-31T03:02:{second:06.3f}+00:00"
    return {"seq": seq, "kind": kind, "ts": ts, "session": "s", **fields}


def test_a_session_becomes_steps_of_thought_llm_tool_result() -> None:
    events = [
        event(1, "lifecycle", 0.0, state="started"),
        event(2, "thought", 1.0, text="the build dir is stale"),
        event(3, "llm_call", 1.5, model="m", input_tokens=1000, output_tokens=50, duration_ms=400),
        event(4, "heartbeat", 1.6),
        event(5, "tool_call", 2.0, call_id="c1", tool="exec", args={"command": "rm -rf ./build"}),
        event(6, "log", 2.1, stream="stdout", line="removing"),
        event(7, "tool_result", 2.5, call_id="c1", ok=True, duration_ms=300),
        event(8, "thought", 3.0, text="now build"),
        event(9, "thought", 3.1, text="carefully"),
        event(10, "tool_call", 3.2, call_id="c2", tool="exec", args={"command": "make"}),
        event(11, "policy", 3.2, decision="deny", tool="exec", rule="r"),
        event(12, "tool_call", 4.0, call_id="c3", tool="search", args={}),
        event(13, "tool_result", 4.4, call_id="c3", ok=False, duration_ms=100, error="boom"),
    ]
    steps, heartbeats = build_steps(events)
    assert heartbeats == 1
    assert [s.kinds for s in steps] == [
        ["lifecycle", "thought", "llm_call", "tool_call", "tool_result"],
        ["thought", "tool_call", "policy"],
        ["tool_call", "tool_result"],
    ]
    first, second, third = steps
    assert (first.tokens, first.llm_ms, first.tool_ms, first.tool, first.ok) == (
        1050,
        400.0,
        300.0,
        "exec",
        True,
    )
    assert first.wall_ms == pytest.approx(2500.0)
    assert (second.thought, second.denied, second.ok) == ("now build", True, None)
    assert (third.tool, third.ok, third.index) == ("search", False, 2)
    # An alert at 03:02:03.5 fired during the second step: "before it" is that step.
    start = first.started
    [marker] = alert_markers([("ReasoningLoop", start + 3.5, 11.0)], steps)
    assert marker.step_before == 1
    [early] = alert_markers([("DeadNode", start - 10, None)], steps)
    assert early.step_before is None


def test_fleet_filters_say_what_they_did_not_understand() -> None:
    filters = FleetFilters.parse(QueryParams({"status": "sleepy", "sort": "cost", "q": " eu "}))
    assert (filters.status, filters.sort, filters.order, filters.q) == ("", "cost", "desc", "eu")
    assert filters.problems == (
        "status 'sleepy' is not one of healthy, degraded, dead, quarantined; showing every status",
    )
    assert filters.query() == "q=eu&sort=cost&order=desc"
    assert FleetFilters.parse(QueryParams({"sort": "vibes"})).sort == "agent"


def test_numbers_read_at_a_glance() -> None:
    dash = "\N{EN DASH}"
    assert [seconds(None), seconds(12.4), seconds(150), seconds(7200)] == [dash, "12 s", "2.5 min", "2.0 h"]
    assert [millis(850), millis(1234), usd(1234.5)] == ["850 ms", "1.2 s", "$1,234.50"]


def test_the_vendored_browser_assets_are_the_pinned_ones() -> None:
    """scripts/vendor_assets.py --check: offline, every vendored file has its recorded checksum."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "vendor_assets.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


# --- the console in a browser --------------------------------------------------------------


@dataclass
class Console:
    gw: GatewayProcess
    viewer: str
    operator: str
    admin: str
    agents: list[str]
    loop_agent: str

    @property
    def url(self) -> str:
        return self.gw.http_url

    def healthy_agent(self, index: int) -> str:
        return [a for a in self.agents if a != self.loop_agent][index]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    rules_dir = root / "rules"
    rules_dir.mkdir()
    (rules_dir / "dev.yaml").write_text(RULES)
    config = root / "clawtrace.toml"
    config.write_text(f'[gateway.alerts]\nrules_dir = "{rules_dir}"\ngroup_wait_seconds = 0.5\n')
    gw = GatewayProcess(root / "gw", extra_args=["--config", str(config)])
    gw.start()
    sim_log = (root / "sim.log").open("wb")
    sim = subprocess.Popen(
        [sys.executable, "-m", "clawtrace", "simulate", "-n", str(AGENTS), "--gateway", gw.ws_url,
         "--token", gw.token("dev", "agent"), "--rate", "2", "--loop", "1", "--scenario-after", "3",
         "--heartbeat-interval", "1", "--seed", str(SEED), "--drain-timeout", "2", "-q"],
        stdout=sim_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ids = [agent for agent, _ in agent_ids(FleetConfig(agents=AGENTS))]
    [loop_agent] = assign_scenarios(ids, {Scenario.LOOP: 1}, SEED)
    try:
        deadline = time.monotonic() + 30
        while len(gw.agents()) < AGENTS:
            assert time.monotonic() < deadline, (root / "sim.log").read_text()
            time.sleep(0.2)
        yield Console(
            gw=gw,
            viewer=gw.token("dev", "viewer"),
            operator=gw.token("dev", "operator"),
            admin=gw.token("*", "admin"),
            agents=ids,
            loop_agent=loop_agent,
        )
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(15)
        except subprocess.TimeoutExpired:
            sim.kill()
        log = gw.log()
        gw.stop()
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def fleet_rows(page: Page) -> Any:
    return page.locator("table.fleet tbody tr[data-agent]")


def test_login_fleet_filters_sorting_and_live_updates(console: Console, chromium: Browser) -> None:
    context = new_context(chromium)
    page = context.new_page()
    # A page asked for without a session is the login form, and after it the page asked for.
    page.goto(f"{console.url}/alerts")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Falerts$"))
    page.fill("#token", "ct_nope_nope")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("unknown credential")
    page.fill("#token", console.viewer)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{console.url}/alerts")

    page.click("nav a[data-go=f]")
    expect(page.locator("#fleet-total")).to_have_text(f"{AGENTS} agents")
    # Grouped by environment and region: 3 regions, 4 agents each.
    expect(page.locator("h2.fleet-group")).to_have_count(3)
    expect(fleet_rows(page)).to_have_count(AGENTS)
    expect(page.locator("h2.fleet-group").first).to_contain_text("dev")

    # Live: the table is fetched again without reloading the page.
    page.evaluate("window.stillTheSamePage = true")
    stamp = page.locator(".updated").inner_text()
    expect(page.locator(".updated")).not_to_have_text(stamp, timeout=WAIT_MS)
    assert page.evaluate("window.stillTheSamePage") is True

    page.fill("#fleet-q", "eu-west-1")
    expect(fleet_rows(page)).to_have_count(AGENTS // 3)
    expect(page).to_have_url(re.compile(r"\?q=eu-west-1$"))
    page.fill("#fleet-q", "")
    expect(fleet_rows(page)).to_have_count(AGENTS)

    # Sort by cost (the header; again flips it), as one list.
    page.check("input[name=group]")
    expect(page.locator("h2.fleet-group")).to_have_count(0)
    page.click("th button[data-sort=cost]")
    expect(page.locator("th[aria-sort=descending] button[data-sort=cost]")).to_have_count(1)
    costs = page.eval_on_selector_all(
        "table.fleet tbody tr[data-agent]",
        "rows => rows.map(r => Number(r.cells[7].textContent.replace(/[$,]/g, '')))",
    )
    assert len(costs) == AGENTS and costs == sorted(costs, reverse=True), costs
    page.click("th button[data-sort=cost]")
    expect(page.locator("th[aria-sort=ascending] button[data-sort=cost]")).to_have_count(1)
    page.uncheck("input[name=group]")
    page.select_option("#fleet-sort", "agent")
    expect(page.locator("h2.fleet-group")).to_have_count(3)
    screenshot(page, "fleet")
    context.close()


def test_agent_live_tail_pause_filter_and_replay(console: Console, chromium: Browser) -> None:
    context = new_context(chromium)
    page = log_in(context, console.url, console.viewer, with_form=False)
    agent = console.healthy_agent(0)
    page.click(f"table.fleet a[href='/agents/{agent}']")
    expect(page.locator("h1")).to_have_text(agent)
    expect(page.locator("#tail-state")).to_contain_text("live")

    # New events appear as the agent sends them.
    page.wait_for_function("window.clawtraceTail.shown >= 3", timeout=WAIT_MS)
    rows = page.locator("#tail-table tbody tr")
    # Paused: nothing is added, events are held; resumed: they appear.
    page.keyboard.press("p")
    expect(page.locator("#tail-pause")).to_have_attribute("aria-pressed", "true")
    paused_rows = rows.count()
    page.wait_for_function("window.clawtraceTail.held >= 2", timeout=WAIT_MS)
    assert rows.count() == paused_rows
    expect(page.locator("#tail-state")).to_contain_text("paused")
    page.click("#tail-pause")
    expect(rows).not_to_have_count(paused_rows)

    # Filter by kind, then search.
    page.uncheck(".kinds input[value=log]")
    expect(page.locator("#tail-table tr.k-log:visible")).to_have_count(0)
    expect(page.locator("#tail-table tr.k-thought:visible")).not_to_have_count(0)
    page.check(".kinds input[value=log]")
    page.fill("#tail-search", "tool_call")
    visible_kinds = page.eval_on_selector_all(
        "#tail-table tbody tr",
        "rows => rows.filter(r => r.offsetParent !== null).map(r => r.cells[2].textContent)",
    )
    assert visible_kinds and set(visible_kinds) <= {"tool_call"}, visible_kinds
    page.fill("#tail-search", "")

    # A viewer gets no action buttons; the charts are drawn.
    expect(page.locator("#agent-actions")).to_have_count(0)
    expect(page.locator(".chart-grid figure .uplot")).not_to_have_count(0, timeout=WAIT_MS)
    screenshot(page, "agent")

    # The reasoning replay of its session, step by step (buttons and keys).
    page.click("a[title^='replay ']")
    expect(page).to_have_url(re.compile(rf"/agents/{agent}/replay\?session="))
    steps = int(page.locator("#replay").get_attribute("data-steps") or 0)
    assert steps >= 3
    expect(page.locator("#step-number")).to_have_text("1")
    page.keyboard.press("j")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#step-number")).to_have_text("3")
    expect(page.locator("#step-detail-2")).to_be_visible()
    expect(page.locator("#step-detail-0")).to_be_hidden()
    page.click("[data-step-go=prev]")
    expect(page.locator("#step-number")).to_have_text("2")
    expect(page).to_have_url(re.compile(r"#step-2$"))
    page.keyboard.press("End")
    expect(page.locator("#step-number")).to_have_text(str(steps))
    page.keyboard.press("Home")
    detail = page.locator("#step-detail-0")
    expect(detail.locator("dt", has_text="tokens")).to_have_count(1)
    expect(detail.locator(".step-events li").first).to_be_visible()
    screenshot(page, "replay")
    context.close()


def test_an_alert_fires_an_operator_silences_it_and_replays_up_to_it(
    console: Console, chromium: Browser
) -> None:
    context = new_context(chromium)
    page = log_in(context, console.url, console.operator, with_form=False)
    page.goto(f"{console.url}/alerts")
    loop = console.loop_agent
    row = page.locator(f"#alerts-table tr.state-firing[data-rule=ReasoningLoop][data-agent='{loop}']")
    expect(row).to_have_count(1, timeout=30_000)
    expect(page.locator("table.rules tr", has_text="ReasoningLoop").locator(".pill")).to_have_text("firing")
    screenshot(page, "alerts")

    row.locator("button", has_text="Silence agent").click()
    expect(page.locator("#silence-target")).to_have_value(loop)
    expect(page.locator("#silence-reason")).to_be_focused()
    page.keyboard.type("console test: known loop")
    page.keyboard.press("Enter")
    expect(page.locator(".toast").last).to_contain_text("alert(s) muted now")
    expect(page.locator("#silences-table tr", has_text=loop)).to_have_count(1)
    expect(row.locator(".pill", has_text="silenced")).to_have_count(1, timeout=WAIT_MS)
    [alert] = [a for a in console.gw.get("/api/v1/alerts").json()["alerts"] if a["agent"] == loop]
    assert alert["silenced_by"], alert
    audit = console.gw.get("/api/v1/audit", action="silence").json()["entries"]
    assert [(e["target"], e["reason"]) for e in audit] == [(loop, "console test: known loop")]
    assert audit[0]["actor"].startswith("operator:")

    # Acknowledged: no more repeats; then the silence is ended early.
    row.locator("button", has_text="Ack").click()
    expect(page.locator(".toast").last).to_contain_text("ReasoningLoop acknowledged")
    expect(row.locator(".pill", has_text="acked")).to_have_count(1, timeout=WAIT_MS)
    page.locator("#silences-table tr", has_text=loop).locator("button", has_text="Expire").click()
    expect(page.locator("#silences-table tr", has_text=loop)).to_have_count(0, timeout=WAIT_MS)
    expect(row.locator(".pill", has_text="silenced")).to_have_count(0, timeout=WAIT_MS)

    # From the alert to the agent's reasoning just before it fired.
    fired_at = alert["fired_at"]
    row.locator("a", has_text="replay").click()
    expect(page).to_have_url(re.compile(rf"/agents/{loop}/replay\?at="))
    expect(page.locator(".alert-jump").first).to_contain_text("ReasoningLoop")
    current = page.locator("#timeline li.step.current")
    expect(current).to_have_count(1)
    started = float(current.get_attribute("data-started") or "inf")
    later = page.locator(
        "#timeline li.step.current + li.step, #timeline li.step.current + li.marker + li.step"
    )
    assert started <= fired_at
    if later.count():
        assert float(later.first.get_attribute("data-started") or 0) > fired_at - 1
    expect(page.locator("#timeline li.marker")).to_contain_text("ReasoningLoop")
    screenshot(page, "replay-before-alert")
    context.close()


def test_an_operator_restarts_and_quarantines_and_a_viewer_is_refused(
    console: Console, chromium: Browser
) -> None:
    restarted, quarantined = console.healthy_agent(1), console.healthy_agent(2)
    operator = new_context(chromium)
    page = log_in(operator, console.url, console.operator, with_form=False)
    page.goto(f"{console.url}/agents/{restarted}")
    expect(page.locator("#tail-state")).to_contain_text("live")
    page.fill("#action-reason", "console test restart")
    page.click("#agent-actions button:text-is('Restart')")
    expect(page.locator(".toast").last).to_contain_text("sent to the node agent")
    # The simulated agent restarts: its new lifecycle arrives in the live tail.
    page.uncheck(".kinds input[value=log]")
    expect(
        page.locator("#tail-table tr.k-lifecycle", has_text="started · console test restart")
    ).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#agent-audit")).to_contain_text("restart", timeout=WAIT_MS)
    screenshot(page, "agent-operator")
    entries = console.gw.get("/api/v1/audit", target=restarted, action="restart").json()["entries"]
    assert [(e["result"], e["reason"]) for e in entries] == [("ok", "console test restart")]

    # Quarantine: the status says so, the agent's tool calls are denied (and listed), then release.
    page.goto(f"{console.url}/agents/{quarantined}")
    page.click("#agent-actions button:text-is('Quarantine')")
    expect(page.locator("#agent-panel .banner")).to_contain_text("Quarantined", timeout=WAIT_MS)
    expect(page.locator("#agent-panel .status")).to_have_text("quarantined")
    expect(page.locator("#agent-decisions")).to_contain_text("quarantine", timeout=WAIT_MS)
    page.goto(f"{console.url}/policies")
    expect(page.locator("#denials-table tr", has_text=quarantined).first).to_contain_text("quarantine")
    page.goto(f"{console.url}/agents/{quarantined}")
    page.click("#agent-actions button:text-is('Release')")
    expect(page.locator(".toast").last).to_contain_text("quarantine lifted")
    expect(page.locator("#agent-panel .banner")).to_have_count(0, timeout=WAIT_MS)

    # A viewer: no buttons, and the server refuses the request a button would have sent.
    viewer = new_context(chromium)
    view = log_in(viewer, console.url, console.viewer, with_form=False)
    view.goto(f"{console.url}/agents/{restarted}")
    expect(view.locator("h1")).to_have_text(restarted)
    expect(view.locator("#agent-actions")).to_have_count(0)
    expect(view.locator("button", has_text="Restart")).to_have_count(0)
    status, body = view.evaluate(
        """async (agent) => {
             const r = await fetch(`/console/api/v1/agents/${agent}/commands`, {
               method: "POST",
               headers: {"Content-Type": "application/json"},
               body: JSON.stringify({action: "restart", reason: "forged"}),
             });
             return [r.status, await r.json()];
           }""",
        restarted,
    )
    assert status == 403, body
    assert "needs the operator role" in body["error"]["message"]
    view.goto(f"{console.url}/alerts")
    expect(view.locator("#silence-form")).to_have_count(0)
    expect(view.locator("#alerts-table button")).to_have_count(0)
    view.goto(f"{console.url}/policies")
    expect(view.locator("#try-form")).to_have_count(0)
    screenshot(view, "agent-viewer-alerts")

    # The same refusals outside a browser: the JSON API, and a cross-site post with an operator's cookie.
    direct = httpx.post(
        f"{console.url}/api/v1/agents/{restarted}/commands",
        json={"action": "restart"},
        headers={"Authorization": f"Bearer {console.viewer}"},
    )
    assert direct.status_code == 403, direct.text
    cross_site = httpx.post(
        f"{console.url}/console/api/v1/agents/{restarted}/commands",
        json={"action": "restart"},
        cookies={"clawtrace_token": console.operator},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403 and "evil.example" in cross_site.json()["error"]["message"]
    anonymous = httpx.post(
        f"{console.url}/console/api/v1/agents/{restarted}/commands", json={"action": "stop"}
    )
    assert anonymous.status_code == 401
    restarts = console.gw.get("/api/v1/audit", target=restarted, action="restart").json()["entries"]
    assert len(restarts) == 1  # the forged requests did nothing
    operator.close()
    viewer.close()


def test_metrics_and_policies_pages(console: Console, chromium: Browser) -> None:
    policy = (ROOT / "examples" / "policies" / "prod" / "policy.cedar").read_text()
    applied = httpx.put(
        f"{console.url}/api/v1/policies/dev",
        json={"files": {"policy.cedar": policy}, "settings": {"description": "console test bundle"}},
        headers={"Authorization": f"Bearer {console.admin}"},
    )
    assert applied.status_code == 200, applied.text
    context = new_context(chromium)
    page = log_in(context, console.url, console.admin, with_form=False)

    page.goto(f"{console.url}/charts?compare=region")
    expect(page.locator("#chart-status")).to_contain_text("3 lines per chart", timeout=WAIT_MS)
    latency = page.locator("figure[data-chart=latency]")
    expect(latency.locator(".uplot")).to_have_count(1)
    # The legend: the time and one line per region.
    expect(latency.locator(".u-legend .u-series")).to_have_count(4)
    expect(latency.locator(".u-legend")).to_contain_text("eu-west-1")
    page.select_option("#range-select", "21600")
    expect(page).to_have_url(re.compile(r"range=21600"))
    expect(page.locator("#chart-status")).to_contain_text("one point per 2 min", timeout=WAIT_MS)
    screenshot(page, "metrics")

    # A tool call waiting for a person (as a node agent's require_approval decision leaves it).
    waiting = console.healthy_agent(3)
    store = open_store("sqlite://", console.gw.data_dir)
    try:
        now = time.time()
        approval = ApprovalRecord(
            id="appr-console-1",
            agent=waiting,
            env="dev",
            tool="exec",
            command="python -c 'print(1)'",
            rule="prod-inline-code-needs-approval",
            reason="inline code needs a person",
            created=now,
            expires=now + 600,
        )
        store.add_approvals([approval])
    finally:
        store.close()

    page.goto(f"{console.url}/policies")
    request = page.locator("#approvals-table tr[data-approval=appr-console-1]")
    expect(request).to_contain_text(waiting, timeout=WAIT_MS)
    request.locator("button", has_text="Approve").click()
    expect(page.locator(".toast").last).to_contain_text("approved")
    expect(request).to_have_count(0, timeout=WAIT_MS)
    approvals = console.gw.get("/api/v1/audit", action="approve").json()["entries"]
    assert [(e["target"], e["actor"].split(":")[0]) for e in approvals] == [(waiting, "admin")]
    expect(page.locator("article.bundle h3")).to_contain_text("dev")
    expect(page.locator("article.bundle")).to_contain_text("console test bundle")
    page.fill("#try-agent", console.agents[0])
    page.fill("#try-command", "sudo bash -c 'rm -rf /'")
    page.fill("#try-workspace", "/srv/agents/a-1")
    page.click("#try-form button[type=submit]")
    verdict = page.locator("#try-result .decision-box")
    expect(verdict).to_have_class(re.compile(r"verdict-deny"))
    expect(verdict.locator("table.facts")).to_contain_text("rm")
    expect(verdict.locator("table.facts")).to_contain_text("sudo")
    page.fill("#try-command", "ls -la")
    page.click("#try-form button[type=submit]")
    expect(page.locator("#try-result .decision-box")).to_have_class(re.compile(r"verdict-allow"))
    screenshot(page, "policies", full_page=True)
    context.close()


def test_keyboard_theme_and_laptop_widths(console: Console, chromium: Browser) -> None:
    context = new_context(chromium)
    page = log_in(context, console.url, console.viewer, with_form=False)
    expect(fleet_rows(page)).to_have_count(AGENTS)
    page.keyboard.press("/")
    expect(page.locator("#fleet-q")).to_be_focused()
    page.keyboard.press("Escape")
    page.keyboard.press("j")
    expect(page.locator("tr.focused")).to_have_count(1)
    page.keyboard.press("?")
    expect(page.locator("dialog#help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("dialog#help")).to_be_hidden()

    # Theme: system (light here) -> light -> dark, kept across pages.
    light_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.keyboard.press("t")
    page.keyboard.press("t")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light_bg
    page.keyboard.press("g")
    page.keyboard.press("a")
    expect(page).to_have_url(f"{console.url}/alerts")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.goto(console.url)
    screenshot(page, "fleet-dark")
    page.keyboard.press("t")
    expect(page.locator("html")).not_to_have_attribute("data-theme", re.compile("."))

    # Nothing wider than a small laptop's window (1,024 px; the other tests run at 1,280 px).
    page.set_viewport_size({"width": 1024, "height": 768})
    for path in ("/", f"/agents/{console.agents[0]}", "/alerts", "/policies", "/charts"):
        page.goto(f"{console.url}{path}")
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} at 1,024 px is {overflow} px too wide"
    screenshot(page, "metrics-laptop")
    context.close()


# --- the environments page ------------------------------------------------------------------

ROLE_AGENTS = 3
# Staging needs an admin's approval too, so the page has an Approve to press; dev never rolls back
# on its own (a default alert rule firing on a simulated agent would make the test flaky).
ENVIRONMENTS_CONFIG = """
[gateway.environments.staging.gates]
approval = true

[gateway.environments.dev.rollout]
auto_rollback = false
"""


@dataclass
class Environments:
    gw: GatewayProcess
    viewer: str
    operator: str
    admin: str

    @property
    def url(self) -> str:
        return self.gw.http_url

    def role_status(self, env: str) -> dict[str, Any]:
        status: dict[str, Any] = self.gw.get(f"/api/v1/envs/{env}/roles/researcher").json()
        return status


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environments]:
    """researcher@1.3.0 then @1.4.0 deployed to dev, and three simulated agents that follow the role."""
    root = tmp_path_factory.mktemp("environments")
    config = root / "clawtrace.toml"
    config.write_text(ENVIRONMENTS_CONFIG)
    gw = GatewayProcess(root / "gw", extra_args=["--config", str(config)])
    gw.start()
    sim: subprocess.Popen[bytes] | None = None
    try:
        admin = gw.token("*", "admin")
        for version in ("1.3.0", "1.4.0"):
            upload(gw.http_url, admin, write_release_dir(root / version, role="researcher", version=version))
            body = {"release": f"researcher@{version}", "env": "dev"}
            deployed = post(gw.http_url, admin, "/api/v1/deployments", body)
            assert deployed.status_code == 201, deployed.text
        sim = subprocess.Popen(
            [sys.executable, "-m", "clawtrace", "simulate", "-n", str(ROLE_AGENTS), "--role", "researcher",
             "--env", "dev", "--gateway", gw.ws_url, "--token", gw.token("dev", "agent"), "--rate", "2",
             "--heartbeat-interval", "1", "--seed", str(SEED), "--drain-timeout", "2", "-q"],
            stdout=(root / "sim.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        envs = Environments(gw, gw.token("*", "viewer"), gw.token("*", "operator"), admin)
        deadline = time.monotonic() + 30
        while (envs.role_status("dev").get("progress") or {}).get("running") != ROLE_AGENTS:
            assert time.monotonic() < deadline, (root / "sim.log").read_text()
            time.sleep(0.2)
        yield envs
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(15)
            except subprocess.TimeoutExpired:
                sim.kill()
        log = gw.log()
        gw.stop()
        assert "Traceback" not in log, log[-5000:]


def env_cell(page: Page, env: str) -> Any:
    return page.locator(f"td.env-cell[data-env={env}][data-role=researcher]")


def test_environments_rollout_gates_promotion_approval_and_diff(
    environments: Environments, chromium: Browser
) -> None:
    envs = environments
    context = new_context(chromium)
    page = log_in(context, envs.url, envs.operator, with_form=False)
    page.keyboard.press("g")
    page.keyboard.press("e")
    expect(page).to_have_url(f"{envs.url}/envs")
    expect(page.locator("table.env-board thead th[data-env]")).to_have_text(
        [re.compile(r"^dev"), re.compile(r"^staging ← dev"), re.compile(r"^prod ← staging")]
    )

    # dev: the release every connected agent of the role runs, its phase and a full progress bar.
    dev = env_cell(page, "dev")
    expect(dev.locator(".ref")).to_have_text("researcher@1.4.0")
    expect(dev.locator(".progress-text")).to_have_text(
        f"{ROLE_AGENTS} of {ROLE_AGENTS} connected agents run researcher@1.4.0"
    )
    expect(dev.locator("progress")).to_have_attribute("value", str(ROLE_AGENTS))
    expect(dev.locator("progress")).to_have_attribute("max", str(ROLE_AGENTS))
    expect(dev.locator(".ph-complete")).to_have_count(1, timeout=WAIT_MS)
    expect(dev.locator("button", has_text="Rollback")).to_have_count(1)

    # staging: the promotion from dev with every gate; the soak gate fails and says why.
    staging = env_cell(page, "staging")
    expect(staging.locator(".promotion-head")).to_contain_text("researcher@1.4.0 from dev")
    soak = staging.locator("li[data-gate=soak]")
    expect(soak).to_have_class(re.compile(r"\bfail\b"))
    expect(soak).to_contain_text(re.compile(r"live in dev for \d+s of the 1h required"))
    expect(staging.locator("li[data-gate=approval]")).to_have_class(re.compile(r"\bfail\b"))
    expect(staging.locator("button", has_text="Approve")).to_have_count(0)  # an operator's page

    # Promote anyway: refused, with the API's message naming the failed gate.
    staging.locator("button", has_text="Promote to staging").click()
    expect(page.locator(".toast.error").last).to_contain_text(
        "researcher@1.4.0 cannot enter staging: soak gate: live in dev for"
    )
    screenshot(page, "environments")
    [refused] = envs.gw.get("/api/v1/audit", action="promote").json()["entries"]
    assert (refused["result"], refused["env"]) == ("refused", "staging"), refused

    # The env diff: dev is ahead of staging, a pending promotion, shown but not flagged.
    row = page.locator("#diff-table tr[data-area=release][data-key=researcher]")
    expect(row).to_have_class("shown")
    expect(row).to_contain_text("not in staging yet: pending promotion")
    expect(row.locator(".flag")).to_have_count(0)
    page.select_option("#diff-b", "prod")
    expect(page).to_have_url(re.compile(r"/envs\?a=dev&b=prod#env-diff$"))
    expect(page.locator("#diff-table thead")).to_contain_text("prod")
    expect(page.locator("#diff-table tr[data-key=researcher]")).to_contain_text("pending promotion")
    context.close()

    # An admin approves the release for staging: the approval gate passes, the soak gate still fails.
    context = new_context(chromium)
    page = log_in(context, envs.url, envs.admin, with_form=False)
    page.goto(f"{envs.url}/envs")
    staging = env_cell(page, "staging")
    page.fill("#env-reason", "console test approval")
    staging.locator("button", has_text="Approve for staging").click()
    expect(page.locator(".toast").last).to_contain_text("approved for staging by admin:")
    approval = staging.locator("li[data-gate=approval]")
    expect(approval).to_have_class(re.compile(r"\bpass\b"), timeout=WAIT_MS)
    expect(approval).to_contain_text("approved by admin:")
    expect(staging.locator("li[data-gate=soak]")).to_have_class(re.compile(r"\bfail\b"))
    expect(staging.locator("button", has_text="Approve")).to_have_count(0)
    [approved] = envs.gw.get("/api/v1/audit", action="approve_promotion").json()["entries"]
    assert (approved["env"], approved["reason"]) == ("staging", "console test approval"), approved
    context.close()


def test_environments_a_viewer_is_refused_and_an_operator_rolls_back(
    environments: Environments, chromium: Browser
) -> None:
    envs = environments
    viewer = new_context(chromium)
    view = log_in(viewer, envs.url, envs.viewer, with_form=False)
    view.goto(f"{envs.url}/envs")
    # The gates are there to read; no button is.
    expect(env_cell(view, "staging").locator("li[data-gate=soak]")).to_have_count(1)
    for label in ("Promote", "Rollback", "Approve", "Deploy"):
        expect(view.locator("button", has_text=label)).to_have_count(0)
    expect(view.locator("#deploy-form")).to_have_count(0)
    forged = """async ([path, body]) => {
        const r = await fetch(path, {
          method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
        });
        return [r.status, await r.json()];
      }"""
    promotion = {"release": "researcher@1.4.0", "to": "staging", "reason": "forged"}
    status, body = view.evaluate(forged, ["/console/api/v1/promotions", promotion])
    assert status == 403 and "needs the operator role" in body["error"]["message"], body
    status, body = view.evaluate(forged, ["/console/api/v1/rollbacks", {"role": "researcher", "env": "dev"}])
    assert status == 403 and "needs the operator role" in body["error"]["message"], body
    # Asking for the gates only is a viewer's right.
    status, body = view.evaluate(forged, ["/console/api/v1/promotions", {**promotion, "check": True}])
    assert status == 200 and not body["passed"], body
    view.goto(f"{envs.url}/envs/dev/roles/researcher")
    expect(view.locator("#role-agents tbody tr")).to_have_count(ROLE_AGENTS)
    expect(view.locator("#role-live button")).to_have_count(0)
    assert envs.role_status("dev")["deployment"]["ref"] == "researcher@1.4.0"  # the forgeries did nothing
    viewer.close()

    # An operator rolls dev back from the role's page: every agent goes back to 1.3.0.
    operator = new_context(chromium)
    page = log_in(operator, envs.url, envs.operator, with_form=False)
    page.goto(f"{envs.url}/envs")
    env_cell(page, "dev").locator("a", has_text="history").click()
    expect(page).to_have_url(f"{envs.url}/envs/dev/roles/researcher")
    history = page.locator("#role-history tbody tr")
    expect(history).to_have_count(2)
    expect(history.first).to_contain_text("researcher@1.4.0")
    page.fill("#env-reason", "console test rollback")
    page.locator("#role-live button", has_text="Rollback").click()
    expect(page.locator(".toast").last).to_contain_text(
        "researcher@1.3.0 is the desired release of researcher in dev now (rollback)"
    )
    expect(history).to_have_count(3, timeout=WAIT_MS)
    expect(history.first).to_have_attribute("data-kind", "rollback")
    expect(history.first).to_contain_text("console test rollback")
    expect(
        page.locator("#role-history tr", has_text="researcher@1.4.0").locator(".ph-rolled_back")
    ).to_have_count(1)
    expect(page.locator("#role-live .progress-text")).to_have_text(
        f"{ROLE_AGENTS} of {ROLE_AGENTS} connected agents run researcher@1.3.0", timeout=WAIT_MS
    )
    screenshot(page, "environment-role", full_page=True)

    # Both pages fit a small laptop's window.
    page.set_viewport_size({"width": 1024, "height": 768})
    for path in ("/envs", "/envs/dev/roles/researcher"):
        page.goto(f"{envs.url}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} at 1,024 px is {overflow} px too wide"
    operator.close()
