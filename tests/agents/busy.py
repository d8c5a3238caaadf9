"""Burns CPU itself and holds ~96 MB in a grandchild, until killed."""

import subprocess
import sys
import time

HOLD = "import time; x = b'x' * (96 * 1024 * 1024); print('held', flush=True); time.sleep(600)"
holder = subprocess.Popen([sys.executable, "-c", HOLD], stdout=sys.stdout)
time.sleep(0.2)
print("ready", flush=True)
while True:
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
    time.sleep(0.01)
