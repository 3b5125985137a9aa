#!/usr/bin/env bash
# Create .venv and install the requirements (again only when a requirements file changed).
# Usage: bash scripts/setup.sh [requirements-file]   (default: requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req")"
sum="$(cat requirements*.txt | sha1sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$sum" > "$stamp"
fi
