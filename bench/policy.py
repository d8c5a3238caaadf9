"""Policy benchmark: normalise + decide per tool call, decisions per second, RBAC checks.

In-process, single thread (what one core of a node agent or gateway does):

1. ``shell``: ``PolicyEngine.decide("exec", {"command": ...})`` with the
   shipped prod bundle (``examples/policies/prod``), over a corpus of shell
   commands an agent runs (``COMMANDS``, and the rm -rf tables of
   tests/test_policy_shell.py for the adversarial end): tree-sitter parse,
   normalisation, one Cedar request for the tool and one per command and
   host. Latency per call (p50/p99/max) and calls per second.
2. ``tool``: a plain tool call (``search``): one Cedar request.
3. ``mixed``: decisions per second over a 3:1 mix of plain and shell calls.
4. ``rbac``: ``Credential.require("operator", env)`` allowed and refused, and
   ``Authenticator.authenticate`` (cached) + ``require``.
5. ``socket``: end to end through a real node agent's local socket
   (``POST /v1/authorize`` over HTTP on the Unix socket, keep-alive): what an
   agent in another language pays per decision.

Prints JSON and writes ``bench/results/policy.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawtrace.access import Credential, PermissionDenied
from clawtrace.policy import AgentIdentity, PolicyEngine, compile_bundle, load_bundle

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

TARGETS = {"shell_p99_us_max": 200, "decisions_per_s_min": 10_000, "rbac_p99_us_max": 50}
WORKSPACE = "/home/agent/work"
HOME = "/home/agent"
COMMANDS = [
    "ls -la",
    "git status",
    "git diff --stat HEAD~1",
    "python -m pytest -q tests/test_api.py",
    "pip install -r requirements.txt",
    "cat README.md | head -50",
    "grep -rn 'TODO' src/ | wc -l",
    "rm -rf ./build dist",
    "mkdir -p out && cp -r assets out/",
    "find . -name '*.pyc' -delete",
    "npm run build",
    "curl -sSL https://api.github.com/repos/acme/app/releases/latest",
    "git checkout -b fix/login && git commit -am 'fix login redirect'",
    "sed -i 's/foo/bar/g' src/app.py",
    "tar -czf release.tar.gz build/",
    "docker build -t app:dev .",
    "rm -rf /",
    "sudo rm -fr /",
    'bash -c "rm -rf /"',
    "echo / | xargs rm -rf",
    "git push --force origin main",
    "python -c 'import os; print(os.getcwd())'",
    "cd src && for f in *.py; do wc -l $f; done",
    "make test 2>&1 | tee test.log",
]


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summary_us(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def rank(p: float) -> float:
        return round(ordered[max(0, int(len(ordered) * p / 100) - 1)] / 1000, 1)

    return {
        "calls": len(ordered),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": round(ordered[-1] / 1000, 1),
        "mean": round(statistics.fmean(ordered) / 1000, 1),
    }


def timed(calls: list[Callable[[], object]], rounds: int) -> tuple[list[int], float]:
    """Per-call latencies (ns) and calls/s over ``rounds`` passes of ``calls``."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    for _ in range(rounds):
        for call in calls:
            t0 = clock()
            call()
            samples.append(clock() - t0)
    elapsed = (clock() - started) / 1e9
    return samples, len(samples) / elapsed


def engine() -> PolicyEngine:
    compiled = compile_bundle(load_bundle(ROOT / "examples" / "policies" / "prod", "prod"))
    return PolicyEngine(
        compiled, AgentIdentity("a-1", "prod", "default", "eu"), workspace=WORKSPACE, home=HOME
    )


def corpus(adversarial: bool) -> list[str]:
    commands = list(COMMANDS)
    if adversarial:
        from test_policy_shell import ALLOWED, FLAGGED

        commands += FLAGGED + ALLOWED
    return commands


def phase_in_process(args: argparse.Namespace) -> dict[str, Any]:
    e = engine()
    out: dict[str, Any] = {"policy_version": e.version}

    def first_seen(command: str) -> None:
        e.forget_commands()
        e.decide("exec", {"command": command})

    cases = (
        ("shell_first_seen", corpus(False), True),
        ("shell_repeated", corpus(False), False),
        ("shell_adversarial_first_seen", corpus(True), True),
    )
    for label, commands, cold in cases:
        calls: list[Callable[[], object]] = [
            (lambda c=c: first_seen(c)) if cold else (lambda c=c: e.decide("exec", {"command": c}))  # type: ignore[misc]
            for c in commands
        ]
        timed(calls, 2)  # warm up the allocator (and, for "repeated", the answer cache)
        samples, rate = timed(calls, max(1, args.calls // len(calls)))
        out[label] = {"commands": len(commands), "latency_us": summary_us(samples), "per_s": round(rate)}
        _print(f"{label}: p50 {out[label]['latency_us']['p50']} us, p99 {out[label]['latency_us']['p99']} us")
    plain = [lambda: e.decide("search", {"q": "weather"})]
    samples, rate = timed(plain, args.calls)
    out["tool"] = {"latency_us": summary_us(samples), "per_s": round(rate)}
    # Throughput with every command new to the engine (tools' answers are cached).
    mixed: list[Callable[[], object]] = []
    for c in COMMANDS:
        mixed += [lambda: e.decide("search", {"q": "x"})] * 3
        mixed.append(lambda c=c: first_seen(c))  # type: ignore[misc]
    samples, rate = timed(mixed, max(1, args.calls // len(mixed)))
    out["mixed_3_tool_1_shell"] = {"latency_us": summary_us(samples), "per_s": round(rate)}
    _print(f"tool: p99 {out['tool']['latency_us']['p99']} us; mixed: {round(rate):,} decisions/s")
    return out


def phase_rbac(args: argparse.Namespace) -> dict[str, Any]:
    from clawtrace.access import Authenticator, create_token
    from clawtrace.store import open_store

    operator = Credential("t1", "prod", "operator", "bench")
    viewer = Credential("t2", "prod", "viewer", "bench")

    def refused() -> None:
        with contextlib.suppress(PermissionDenied):
            viewer.require("operator", "prod")

    out: dict[str, Any] = {}
    for label, call in (("allowed", lambda: operator.require("operator", "prod")), ("refused", refused)):
        timed([call], 1000)
        samples, _ = timed([call], args.calls)
        out[label] = summary_us(samples)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store("sqlite://", Path(tmp))
        try:
            plain, _ = create_token(store, env="prod", role="operator")
            auth = Authenticator(store)
            auth.authenticate(plain)

            def full() -> None:
                auth.authenticate(plain).require("operator", "prod")

            timed([full], 1000)
            samples, _ = timed([full], args.calls)
            out["authenticate_cached_and_require"] = summary_us(samples)
        finally:
            store.close()
    full_p99 = out["authenticate_cached_and_require"]["p99"]
    _print(f"rbac: require p99 {out['allowed']['p99']} us, with authenticate {full_p99} us")
    return out


def phase_socket(args: argparse.Namespace) -> dict[str, Any]:
    """A real node agent (no gateway needed: the bundle is seeded on disk) and HTTP over its socket."""
    import msgspec

    with tempfile.TemporaryDirectory(prefix="ct-bench-policy-") as tmp:
        spool = Path(tmp) / "spool"
        spool.mkdir()
        bundle = load_bundle(ROOT / "examples" / "policies" / "prod", "prod")
        (spool / "policy.json").write_bytes(msgspec.json.encode(bundle))
        marker = Path(tmp) / "socket"
        child = [
            sys.executable,
            "-c",
            "import os, sys, time; open(sys.argv[1], 'w').write(os.environ['CLAWTRACE_SOCKET'])\n"
            "time.sleep(600)",
            str(marker),
        ]
        node = subprocess.Popen(
            [sys.executable, "-m", "clawtrace", "run", "--agent", "bench-1", "--env", "prod",
             "--gateway", "ws://127.0.0.1:9", "--spool-dir", str(spool), "--workspace", tmp,
             "--log-level", "warning", "--", *child],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not (marker.exists() and marker.read_text()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the node agent did not start its child")
                time.sleep(0.05)
            path = marker.read_text()

            class UnixConnection(http.client.HTTPConnection):
                def connect(self) -> None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.connect(path)

            conn = UnixConnection("localhost")

            def ask(command: str) -> None:
                body = json.dumps({"tool": "exec", "args": {"command": command}, "wait": False})
                conn.request("POST", "/v1/authorize", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                json.loads(response.read())

            calls: list[Callable[[], object]] = [(lambda c=c: ask(c)) for c in COMMANDS]  # type: ignore[misc]
            timed(calls, 5)
            samples, rate = timed(calls, max(1, args.socket_calls // len(calls)))
            conn.close()
        finally:
            node.terminate()
            node.wait(15)
    out = {"latency_us": summary_us(samples), "per_s": round(rate)}
    _print(f"socket (HTTP over the node agent's Unix socket): p50 {out['latency_us']['p50']} us, "
           f"p99 {out['latency_us']['p99']} us, {out['per_s']:,}/s")  # fmt: skip
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "policy",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "in_process": phase_in_process(args),
        "rbac": phase_rbac(args),
    }
    if not args.skip_socket:
        result["socket"] = phase_socket(args)
    ip = result["in_process"]
    result["targets"] = TARGETS
    result["meets_targets"] = {
        "shell_p99": ip["shell_first_seen"]["latency_us"]["p99"] <= TARGETS["shell_p99_us_max"],
        "decisions_per_s": ip["mixed_3_tool_1_shell"]["per_s"] >= TARGETS["decisions_per_s_min"],
        "rbac_p99": result["rbac"]["authenticate_cached_and_require"]["p99"] <= TARGETS["rbac_p99_us_max"],
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=50_000, help="calls per in-process measurement [50000]")
    p.add_argument(
        "--socket-calls", type=int, default=5_000, help="calls through the node agent's socket [5000]"
    )
    p.add_argument("--skip-socket", action="store_true", help="in-process phases only")
    p.add_argument("--out", type=Path, default=HERE / "results" / "policy.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    output = main(arguments)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))
