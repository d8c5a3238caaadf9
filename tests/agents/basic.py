"""A short agent run: output on both streams and every kind of SDK event.

Usage: basic.py [EXIT_CODE]
"""

import sys

from clawtrace import sdk

print("out 1")
print("err 1", file=sys.stderr)
sdk.thought("thinking about step 1")
with sdk.tool_call("search", {"q": "cats"}) as call:
    call.output = {"hits": 3}
try:
    with sdk.tool_call("shell", {"command": "false"}):
        raise RuntimeError("exit status 1")
except RuntimeError:
    print("tool failed as planned")
with sdk.tool_call("fetch", {"url": "http://example.invalid"}) as call:
    call.fail("HTTP 503")
# Invalid (negative tokens): the node agent must drop it and keep the rest.
sdk.llm_call(model="bad", input_tokens=-1, output_tokens=0, duration_ms=1.0)
sdk.llm_call(model="gpt-4o", input_tokens=100, output_tokens=20, duration_ms=350.5, cost_usd=0.0012)
sdk.thought("x" * 200_000)
print("y" * 100_000)
print("out 2")
sdk.thought("done")
sdk.flush()
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
