"""Records its start time in FILE, then exits with CODE at once.

Usage: crasher.py FILE CODE
"""

import sys
import time

with open(sys.argv[1], "a") as f:
    f.write(f"{time.monotonic()}\n")
print("crashing", flush=True)
sys.exit(int(sys.argv[2]))
