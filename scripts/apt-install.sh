#!/usr/bin/env bash
# apt-install.sh WHO PACKAGE...: installs Debian packages non-interactively
# (apt-get update first), as root or through sudo. WHO prefixes the messages.
# Shared by the install-*.sh scripts of the test command.
set -euo pipefail

who="$1"
shift
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "$who: need root (or sudo) to apt-get install $*" >&2
        exit 1
    fi
fi
echo "$who: installing $*"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "$@"
