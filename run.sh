#!/usr/bin/env bash
# ./run.sh          set up on first use, then start the app (http://localhost:8501)
# ./run.sh test     set up on first use, then run the whole test suite
# ./run.sh setup    only set up (.venv with the pinned requirements)
set -euo pipefail
cd "$(dirname "$0")"

want=requirements.txt
[ "${1:-app}" = test ] && want=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(cat "$want" requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --disable-pip-version-check -q -r "$want"
  # the package itself, editable: the `mnist-lab` command, from any folder
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  touch "$stamp"
fi

case "${1:-app}" in
  app)
    shift || true
    exec .venv/bin/python -m streamlit run app.py "$@"
    ;;
  test)
    shift
    # The browser tests drive Debian's Chromium; install it when we can (root, apt).
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    exec .venv/bin/python -m pytest "$@"
    ;;
  setup) ;;
  *) echo "usage: ./run.sh [app|test|setup] [args...]" >&2; exit 2 ;;
esac
