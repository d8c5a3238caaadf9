"""Writes its pid to FILE, then waits; on SIGTERM says so and exits with code 7.

Usage: graceful.py FILE
"""

import os
import signal
import sys
import time


def on_term(signum: int, frame: object) -> None:
    print("got SIGTERM, cleaning up", flush=True)
    sys.exit(7)


signal.signal(signal.SIGTERM, on_term)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
print("ready", flush=True)
while True:
    time.sleep(0.05)
