# Shared by run.sh and test.sh: a virtualenv that matches the requirements, and local services.

PYTHON="${PYTHON:-python3}"

ensure_venv() {
    # $1: the requirements file to install. Reinstalls only when a requirements file changed.
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "KoboldAI Cluster needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
        echo "Set PYTHON=/path/to/python3.11 and try again." >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "Creating the virtualenv in .venv ..."
        "$PYTHON" -m venv .venv || {
            echo "Could not create a virtualenv. On Debian/Ubuntu: sudo apt install python3-venv" >&2
            exit 1
        }
    fi
    local stamp=".venv/.installed-$(basename "$1")"
    local wanted
    wanted="$( (cat requirements*.txt bridge/requirements.txt 2>/dev/null || true) | sha256sum)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        echo "Installing $1 into .venv ..."
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$1"
        echo "$wanted" > "$stamp"
    fi
}

ensure_postgres() {
    # The test suite runs against PostgreSQL too; start the local server if it is down.
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        return
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "PostgreSQL is down; starting it ..."
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && return
            sleep 1
        done
    fi
    echo "PostgreSQL is not reachable at 127.0.0.1:5432 and could not be started." >&2
    exit 1
}

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        return
    fi
    if command -v redis-server >/dev/null 2>&1; then
        echo "Redis is down; starting it ..."
        mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
        for _ in $(seq 1 30); do
            redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return
            sleep 1
        done
    fi
    echo "Redis is not reachable at 127.0.0.1:6379 and could not be started." >&2
    exit 1
}

ensure_chromium() {
    # The status page's browser test drives Debian's chromium (Playwright never downloads one).
    if command -v chromium >/dev/null 2>&1; then
        return
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Installing chromium (Debian) for the browser test ..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq chromium >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || true
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        echo "chromium is not installed (sudo apt install chromium): the browser test is skipped." >&2
    fi
}

ensure_haproxy() {
    # deploy/'s balancer configuration is checked by HAProxy itself (haproxy -c) in the tests,
    # and run by benchmarks/scripts/bench_cluster.py: Debian's haproxy, never started as a service here.
    if command -v haproxy >/dev/null 2>&1; then
        return
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Installing haproxy (Debian) for the deployment's configuration test ..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq haproxy >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; } || true
    fi
    if ! command -v haproxy >/dev/null 2>&1; then
        echo "haproxy is not installed (sudo apt install haproxy): its configuration test will fail." >&2
    fi
}
