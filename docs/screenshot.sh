#!/usr/bin/env bash
# Build the documentation and take a screenshot of its front page with headless Chromium
# (Debian: apt-get install chromium) and Pillow: docs/screenshots/index.png, 1280 x 1600.
#   docs/screenshot.sh [PAGE]     # PAGE: a page of the site, default index.html
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
BROWSER="${BROWSER:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}"
PAGE="${1:-index.html}"
"$PYTHON" docs/build.py --out build/docs
mkdir -p docs/screenshots
NAME="$(basename "$PAGE" .html)"
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="docs/screenshots/$NAME.png" --window-size=1280,1600 \
    "file://$PWD/build/docs/$PAGE"
# A 64-colour palette keeps the text sharp and the file small enough to commit (~100 KB).
"$PYTHON" - "docs/screenshots/$NAME.png" <<'PY'
import sys
from PIL import Image

path = sys.argv[1]
Image.open(path).convert("RGB").quantize(64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
PY
echo "docs/screenshots/$NAME.png"
