#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the browser test (tests/serve/test_page.py), installed when missing and
# when this runs as root with apt-get (as CI does). Without them the test is skipped and says why.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
        || echo "chromium could not be installed; the browser test will be skipped" >&2
else
    echo "no chromium and no root apt-get: the browser test will be skipped (sudo apt-get install chromium chromium-driver)" >&2
fi
exit 0
