"""Prints `tick N` (and every 10th tick a thought) until stopped or COUNT is reached.

Usage: ticker.py INTERVAL [COUNT] [MARKER_FILE]
The marker file holds the last tick number, so a test can see the agent
making progress even when the gateway is down.
"""

import os
import sys
import time

from clawtrace import sdk

interval = float(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 0
marker = sys.argv[3] if len(sys.argv) > 3 else None
i = 0
while count == 0 or i < count:
    i += 1
    print(f"tick {i}", flush=True)
    if i % 10 == 0:
        sdk.thought(f"thought {i}")
    if marker:
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {i}")
        os.replace(tmp, marker)
    time.sleep(interval)
sdk.flush()
