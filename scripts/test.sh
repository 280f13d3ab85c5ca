#!/usr/bin/env bash
# The README's test command: set up .venv on a fresh machine, then run the whole test suite.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# The MLflow UI browser test needs Debian's Chromium + ChromeDriver; install them when root.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium and chromium-driver for the browser test"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
            || echo "setup: could not install chromium; the browser test will be skipped"
    else
        echo "setup: chromium not installed and not root; the browser test will be skipped"
    fi
fi
python -m pytest "$@"
