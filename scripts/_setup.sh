# Sourced by scripts/test, scripts/demo and bench: makes .venv and installs what is missing.
# Quick when everything is there already (a stamp records what was installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

setup_python() {
  local extras="$1"  # e.g. "test" or "test,integration"
  if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
  fi
  local stamp="$VENV/.installed-$extras"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  if [[ "$extras" == *integration* ]] && ! "$PY" -c "import torch" 2>/dev/null; then
    # Open WebUI needs torch; this pinned CPU build avoids several GB of CUDA wheels.
    echo "== installing torch==2.13.0 (CPU)"
    "$PY" -m pip install -q torch==2.13.0
  fi
  echo "== installing .[$extras] (Open WebUI takes 2-3 minutes the first time)"
  "$PY" -m pip install -q -e "$ROOT[$extras]"
  echo "$want" > "$stamp"
}

# apt_install COMMAND PACKAGE...: installs Debian packages unless COMMAND is already there.
apt_install() {
  local command="$1"
  shift
  if command -v "$command" >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" != "0" ]; then
    echo "$command is missing: install Debian's $* (as root)" >&2
    return 1
  fi
  echo "== installing $* (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

setup_chromium() {
  apt_install chromium chromium chromium-driver fonts-noto-color-emoji
}

setup_redis() {
  # The multi-worker test (tests/integration/test_multiworker.py) starts its own redis-server.
  apt_install redis-server redis-server
}
