# shellcheck shell=bash
# Sourced by bin/run, bin/test and .ci/run: install what a fresh Debian machine lacks.
# Expects the current directory to be the repository root.

_me=$(basename "$0")

say() { echo "$_me: $*" >&2; }
die() { say "$*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "root is needed to run: $*"
    fi
}

_apt_updated=""
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
    say "installing $* with apt-get"
    if [ -z "$_apt_updated" ]; then
        as_root apt-get update -qq
        _apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# .venv with requirements-dev.txt; pip runs again only when a requirements file changed.
ensure_venv() {
    command -v python3 >/dev/null || apt_install python3 python3-venv
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python 3.11 or newer is needed, python3 is $(python3 --version 2>&1)"
    if [ ! -x .venv/bin/python ]; then
        rm -rf .venv
        if ! python3 -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            apt_install python3-venv
            python3 -m venv .venv
        fi
    fi
    local stamp=.venv/.requirements.sha256 sum
    sum=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
        say "installing requirements-dev.txt into .venv"
        .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
        echo "$sum" >"$stamp"
    fi
}

# redis-server on PATH. A service that apt starts by itself is stopped: bin/run starts its own
# on 6379 and the tests start theirs.
ensure_redis() {
    command -v redis-server >/dev/null && return
    apt_install redis-server
    if [ -d /run/systemd/system ] && systemctl is-active --quiet redis-server 2>/dev/null; then
        say "stopping the redis-server service that apt started (bin/run runs its own)"
        as_root systemctl disable --now redis-server
    fi
}
