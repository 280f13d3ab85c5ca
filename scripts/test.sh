#!/usr/bin/env bash
# The README's test command: set up .venv on a fresh machine, then run the whole test suite.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# The browser tests need Debian's Chromium (the MLflow UI test also ChromeDriver); install them when root.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium and chromium-driver for the browser test"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
            || echo "setup: could not install chromium; the browser test will be skipped"
    else
        echo "setup: chromium not installed and not root; the browser test will be skipped"
    fi
fi
# Debian tools the tests use as independent readers: install each when root. Without one its tests skip,
# except as root in CI, where they fail (tests/conftest.py).
install_debian_tool() {  # COMMAND PACKAGE WHAT
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing $2 ($1) for $3"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null) \
            || echo "setup: could not install $2; $3 will fail in CI"
    else
        echo "setup: $1 not installed and not root; $3 will be skipped"
    fi
}
# dciodvfy validates every written CT and RT Structure Set instance; plastimatch reads the RT Structure
# Set back.
install_debian_tool dciodvfy dicom3tools "the DICOM validity tests"
install_debian_tool plastimatch plastimatch "the RT Structure Set read-back test"
# Two pytest workers (pytest-xdist), one test file each at a time so that a file's module fixtures are
# built once: most of the suite's time is single-threaded (subprocesses importing torch and MONAI,
# MLflow's SQLite store, small convolutions), so two workers on two cores took 376 s where one process
# took 571 s (2 cores, AMD EPYC). RADMTL_TEST_WORKERS=0 runs it in this one process.
python -m pytest -n "${RADMTL_TEST_WORKERS:-2}" --dist loadfile "$@"
