# Sourced by scripts/test, scripts/demo and bench: makes .venv and installs what is missing.
# Quick when everything is there already (a stamp records what was installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CONSTRAINTS="$ROOT/constraints.txt"  # exact versions of every package (scripts/freeze)
PIP_VERSION="26.3"

setup_python() {
  local extras="$1"  # e.g. "test" or "test,integration"
  if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
    "$PY" -m pip install -q "pip==$PIP_VERSION"
  fi
  local stamp="$VENV/.installed-$extras"
  local want
  want="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  if [[ "$extras" == *integration* ]] && ! "$PY" -c "import torch" 2>/dev/null; then
    # Open WebUI needs torch; this pinned CPU build avoids several GB of CUDA wheels.
    echo "== installing torch==2.13.0 (CPU)"
    "$PY" -m pip install -q -c "$CONSTRAINTS" torch==2.13.0
  fi
  echo "== installing .[$extras] (Open WebUI takes 2-3 minutes the first time)"
  "$PY" -m pip install -q -c "$CONSTRAINTS" -e "$ROOT[$extras]"
  echo "$want" > "$stamp"
}

# apt_install COMMAND PACKAGE...: installs Debian packages unless COMMAND is already there.
apt_install() {
  local command="$1"
  shift
  if command -v "$command" >/dev/null 2>&1; then
    return
  fi
  apt_get_install "$@"
}

# apt_get_install PACKAGE...: installs Debian packages (as root; says what to do otherwise).
apt_get_install() {
  if [ "$(id -u)" != "0" ]; then
    echo "missing: install Debian's $* (as root)" >&2
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

setup_postgres() {
  # The multi-worker test creates its own PostgreSQL cluster with initdb/pg_ctl (run as the
  # `postgres` user when we are root). Debian keeps them off PATH, under /usr/lib/postgresql.
  if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    return
  fi
  apt_get_install postgresql
}
