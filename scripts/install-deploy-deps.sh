#!/usr/bin/env bash
# Installs what the deployment tests need: Debian `nginx` and `curl`, and a
# Python venv at target/pyenv with the official `openai` client and the
# `websockets` package (used by deploy/scale-test.sh). Idempotent: each
# piece is skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/pyenv
PY_PACKAGES=(openai websockets)

PYTHON="${PYTHON:-python3}"

apt_install() {
    bash scripts/apt-install.sh install-deploy-deps "$@"
}

need_apt=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip out of python3.
    need_apt+=(python3 python3-venv)
    PYTHON=python3
fi

if ((${#need_apt[@]})); then
    apt_install "${need_apt[@]}"
else
    echo "install-deploy-deps: nginx, curl and python venv support already present"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "install-deploy-deps: creating $VENV with $("$PYTHON" --version 2>&1)"
    mkdir -p target
    "$PYTHON" -m venv "$VENV"
fi
if "$VENV/bin/python" -c 'import openai, websockets' >/dev/null 2>&1; then
    echo "install-deploy-deps: $VENV already has ${PY_PACKAGES[*]}"
else
    echo "install-deploy-deps: pip installing ${PY_PACKAGES[*]} into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
"$VENV/bin/python" -c 'import openai, websockets; print("install-deploy-deps: openai", openai.__version__, "websockets", websockets.__version__)'
if [[ -x /usr/sbin/nginx ]]; then /usr/sbin/nginx -v 2>&1; else nginx -v 2>&1; fi
