"""Runs before every tool call: reads the call as JSON on stdin, exits non-zero to refuse it.

Infrastructure policy (policy.cedar) is enforced by the node agent either way;
this hook holds the role's own habits, which are a prompt-level concern.
"""

import json
import sys

MAX_FETCH_BYTES = 5_000_000


def main() -> int:
    call = json.load(sys.stdin)
    tool = call.get("tool", "")
    args = call.get("arguments", {})
    if tool == "fetch" and int(args.get("max_bytes", 0)) > MAX_FETCH_BYTES:
        print(f"fetch of more than {MAX_FETCH_BYTES} bytes refused: summarise in parts", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
