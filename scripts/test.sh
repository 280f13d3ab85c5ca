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
# The DICOM tests validate every written CT and RT Structure Set instance with dciodvfy (Debian's
# dicom3tools); install it when root. Without it those tests skip, except as root in CI, where they fail.
if ! command -v dciodvfy >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing dicom3tools (dciodvfy) for the DICOM validity tests"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null) \
            || echo "setup: could not install dicom3tools; the DICOM validity tests will fail in CI"
    else
        echo "setup: dciodvfy not installed and not root; the DICOM validity tests will be skipped"
    fi
fi
# The RT Structure Set is also read back by an independent reader, plastimatch (Debian's plastimatch);
# install it when root, as dicom3tools above. Without it that test skips, except as root in CI, where it fails.
if ! command -v plastimatch >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing plastimatch for the RT Structure Set read-back test"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq plastimatch >/dev/null) \
            || echo "setup: could not install plastimatch; the read-back test will fail in CI"
    else
        echo "setup: plastimatch not installed and not root; the RT Structure Set read-back test will be skipped"
    fi
fi
# Two pytest workers (pytest-xdist), one test file each at a time so that a file's module fixtures are
# built once: most of the suite's time is single-threaded (subprocesses importing torch and MONAI,
# MLflow's SQLite store, small convolutions), so two workers on two cores took 376 s where one process
# took 571 s (2 cores, AMD EPYC). RADMTL_TEST_WORKERS=0 runs it in this one process.
python -m pytest -n "${RADMTL_TEST_WORKERS:-2}" --dist loadfile "$@"
