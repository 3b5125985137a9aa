#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite, browser tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-dev.txt
# The browser test drives Debian's Chromium; install it where we may (root + apt), else it skips.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "note: could not install chromium; the browser test will skip"
fi
# Two workers (one thread each, tests/conftest.py): on this project's 2-core CI the suite takes about half the time
# of one process, whose tests mostly wait on subprocesses, servers and a browser. PYTEST_WORKERS=0 runs one process.
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
