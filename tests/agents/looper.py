"""A reasoning loop on its first run, a healthy agent after a restart.

Usage: looper.py MARKER_FILE [FAILURES]
The first run (no marker file yet) makes FAILURES (default 11) failed tool
calls in a row, then idles; later runs make successful calls. Every run
appends its pid to the marker file, so a test can count restarts.
"""

import os
import sys
import time

from clawtrace import sdk

marker = sys.argv[1]
failures = int(sys.argv[2]) if len(sys.argv) > 2 else 11
first_run = not os.path.exists(marker)
with open(marker, "a") as f:
    f.write(f"{os.getpid()}\n")
sdk.thought("first run: the search tool keeps failing" if first_run else "restarted: trying again")
i = 0
while True:
    i += 1
    if first_run and i <= failures:
        with sdk.tool_call("search", {"q": "same query"}) as call:
            call.fail("HTTP 500 from the search backend")
    elif not first_run:
        with sdk.tool_call("search", {"q": f"query {i}"}) as call:
            call.output = ["a result"]
    sdk.flush()
    time.sleep(0.05 if first_run and i <= failures else 0.5)
