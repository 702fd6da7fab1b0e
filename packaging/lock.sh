#!/usr/bin/env bash
# Regenerates the two lock files of the Debian package build.
#
# requirements.lock: the runtime dependencies of revproxy
# (setup.cfg's install_requires, resolved) at the exact versions that
# requirements-test.txt pins for `make test`, with the sha256 of every file
# the index offers for each version (wheels for every platform, and the
# sdist). debian/rules installs the Debian package's venv from it in pip's
# hash-checking mode.
#
# requirements-build.lock: the tools debian/rules needs besides them, which
# never enter the package: setuptools and wheel (pyproject.toml's build
# requirements) and the unit tests' hypothesis, trustme, treq and what they
# need beyond the runtime set; same versions, same hashes, installed with
# --no-deps into a directory of their own.
#
# Run by `make lock`; pip-tools runs in a throwaway venv.
#
# After changing a pin in requirements-test.txt or a dependency in setup.cfg:
#   make lock && make test        (tests/test_pins.py checks the two agree)
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_TOOLS_VERSION=7.6.2
# The packages of requirements-build.lock (each pinned in requirements-test.txt).
BUILD_TOOLS="setuptools wheel hypothesis sortedcontainers trustme treq multipart"
python=/usr/bin/python3     # the python the Debian package is built with

# This machine's pip config names local find-links directories that lack
# most packages; pip warns about each one. Keep the rest of stderr.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
quiet "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "pip-tools==$PIP_TOOLS_VERSION"

# setup.cfg is read through its build backend; -c pins every package that
# requirements-test.txt pins to that version. --allow-unsafe would pin pip
# and setuptools too, should a runtime dependency ever need them. Index and
# find-links options of this machine's pip config are not written out.
CUSTOM_COMPILE_COMMAND="make lock" quiet "$tmp/venv/bin/pip-compile" \
    --quiet \
    --generate-hashes \
    --strip-extras \
    --allow-unsafe \
    --no-emit-index-url \
    --no-emit-find-links \
    --no-emit-trusted-host \
    --no-header \
    --constraint requirements-test.txt \
    --output-file "$tmp/requirements.lock" \
    setup.cfg

{
    cat <<HEADER
# requirements.lock: the runtime dependencies of revproxy, exact versions
# with the sha256 of every file (pip's hash-checking mode). The Debian
# package's venv is installed from this file (debian/rules); the versions
# are those of requirements-test.txt (tests/test_pins.py checks it).
#
# Generated; do not edit. Regenerate with \`make lock\` (packaging/lock.sh):
#   pip-compile $PIP_TOOLS_VERSION (pip-tools), Python $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), in a throwaway venv:
#   pip-compile --generate-hashes --strip-extras --allow-unsafe \\
#       --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \\
#       --constraint requirements-test.txt --output-file requirements.lock setup.cfg
HEADER
    cat "$tmp/requirements.lock"
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock: $(grep -c '^[A-Za-z0-9]' requirements.lock) packages, $(grep -c -- '--hash=sha256:' requirements.lock) hashes"

# The build tools: resolved with their dependencies (for the right versions
# and hashes), then only the tools themselves are kept; the rest is in
# requirements.lock or needed by nothing at build time.
printf '%s\n' $BUILD_TOOLS > "$tmp/build.in"
CUSTOM_COMPILE_COMMAND="make lock" quiet "$tmp/venv/bin/pip-compile" \
    --quiet --generate-hashes --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    --no-header --no-annotate \
    --constraint requirements-test.txt \
    --output-file "$tmp/build.lock" \
    "$tmp/build.in"
{
    cat <<HEADER
# requirements-build.lock: build-time tools of the Debian package (never in
# it): setuptools and wheel to build revproxy's wheel, and the unit tests'
# tools. Exact versions (requirements-test.txt's) with the sha256 of every
# file; debian/rules installs them with --require-hashes --no-deps into a
# directory of their own, next to the package's venv.
#
# Generated; do not edit. Regenerate with \`make lock\` (packaging/lock.sh):
#   pip-compile --generate-hashes --strip-extras --allow-unsafe \\
#       --constraint requirements-test.txt  (on: $BUILD_TOOLS)
#   keeping only those packages.
HEADER
    "$python" - "$tmp/build.lock" $BUILD_TOOLS <<'FILTER'
import re
import sys

path, *keep = sys.argv[1:]
keep = {re.sub(r"[-_.]+", "-", name).lower() for name in keep}
blocks, current = [], []
for line in open(path, encoding="utf-8"):
    if line[:1].isalnum() and current:
        blocks.append(current)
        current = []
    if line.strip() and not line.startswith("#"):
        current.append(line)
if current:
    blocks.append(current)
found = set()
for block in blocks:
    name = re.sub(r"[-_.]+", "-", block[0].split("==")[0]).lower()
    if name in keep:
        found.add(name)
        sys.stdout.write("".join(block))
missing = keep - found
if missing:
    sys.exit(f"not resolved: {sorted(missing)}")
FILTER
} > requirements-build.lock.new
mv requirements-build.lock.new requirements-build.lock
echo "requirements-build.lock: $(grep -c '^[A-Za-z0-9]' requirements-build.lock) packages, $(grep -c -- '--hash=sha256:' requirements-build.lock) hashes"
