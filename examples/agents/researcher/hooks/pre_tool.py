#!/usr/bin/env python3
"""The researcher's tool hook (docs/releases.md, "Tool hooks").

Run by the node agent as `pre_tool.py before_tool_call` with the call as JSON on
stdin, it answers {"decision": "allow"} or {"decision": "deny", "reason": ...};
`pre_tool.py after_tool_call` is told the result and answers nothing.

Infrastructure policy (policy.cedar) is enforced by the node agent either way;
this hook holds the role's own habits, which are a prompt-level concern.
"""

import json
import sys

MAX_FETCH_BYTES = 5_000_000


def main() -> int:
    call = json.load(sys.stdin)
    if sys.argv[1:] != ["before_tool_call"]:
        return 0
    args = call.get("args") or {}
    if call.get("tool") == "fetch" and int(args.get("max_bytes", 0)) > MAX_FETCH_BYTES:
        reason = f"fetch of more than {MAX_FETCH_BYTES} bytes refused: summarise in parts"
        print(json.dumps({"decision": "deny", "reason": reason}))
    else:
        print(json.dumps({"decision": "allow"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
