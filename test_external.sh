#!/usr/bin/env bash
# The second test command (README: Development): the tests marked `external`, which drive
# programs this repository does not ship (KoboldAI Lite, SillyTavern, KoboldCpp) from
# checkouts you give, on SQLite and on PostgreSQL.
#
#   ./test_external.sh --lite DIR --sillytavern DIR --koboldcpp DIR [pytest arguments]
#
# A program whose path is missing or not usable is named with what to fetch or build; the
# tests of the others run. Nothing here fetches or builds them: SillyTavern's npm
# dependencies are installed in its folder as its own start.sh does.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/common.sh

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

# The folders may also come from the environment, under the names the tests read.
lite="${KOBOLDAI_LITE_DIR:-}" sillytavern="${SILLYTAVERN_DIR:-}" koboldcpp="${KOBOLDCPP_DIR:-}"
pytest_args=()
user_filter=""
while [ $# -gt 0 ]; do
    case "$1" in
        -k) user_filter="${2:?-k needs an expression}"; shift 2 ;;
        -k=*) user_filter="${1#*=}"; shift ;;
        --lite) lite="${2:?--lite needs a folder}"; shift 2 ;;
        --lite=*) lite="${1#*=}"; shift ;;
        --sillytavern) sillytavern="${2:?--sillytavern needs a folder}"; shift 2 ;;
        --sillytavern=*) sillytavern="${1#*=}"; shift ;;
        --koboldcpp) koboldcpp="${2:?--koboldcpp needs a folder}"; shift 2 ;;
        --koboldcpp=*) koboldcpp="${1#*=}"; shift ;;
        -h|--help) usage ;;
        *) pytest_args+=("$1"); shift ;;
    esac
done

missing=()
left_out=() # -k words that select a missing program's tests

absolute() { (cd "$1" && pwd); }

check_lite() {
    local fetch="fetch https://github.com/LostRuins/lite.koboldai.net (its index.html is Lite), or give a KoboldCpp checkout (its klite.embd is Lite)"
    if [ -z "$lite" ]; then
        missing+=("KoboldAI Lite: no --lite DIR given; $fetch")
    elif [ ! -d "$lite" ]; then
        missing+=("KoboldAI Lite: $lite is not a folder; $fetch")
    elif ! grep -qs "KoboldAI Lite" "$lite/index.html" "$lite/klite.embd"; then
        missing+=("KoboldAI Lite: neither $lite/index.html nor $lite/klite.embd is KoboldAI Lite; $fetch")
    else
        export KOBOLDAI_LITE_DIR
        KOBOLDAI_LITE_DIR="$(absolute "$lite")"
        return
    fi
    unset KOBOLDAI_LITE_DIR
    left_out+=("lite_external")
}

check_sillytavern() {
    local fetch="fetch https://github.com/SillyTavern/SillyTavern (release branch, e.g. tag 1.12.6)"
    if [ -z "$sillytavern" ]; then
        missing+=("SillyTavern: no --sillytavern DIR given; $fetch")
    elif [ ! -f "$sillytavern/server.js" ] || ! grep -qs '"name": "sillytavern"' "$sillytavern/package.json"; then
        missing+=("SillyTavern: $sillytavern has no server.js and package.json of SillyTavern; $fetch")
    elif ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        missing+=("SillyTavern: node and npm are not installed (SillyTavern needs Node.js 18 or newer: sudo apt install nodejs npm)")
    elif ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 18 ? 1 : 0)'; then
        missing+=("SillyTavern: needs Node.js 18 or newer, this is $(node --version)")
    else
        echo "== SillyTavern's npm dependencies (npm install in $sillytavern, as its start.sh does)"
        if ! (cd "$sillytavern" && NODE_ENV=production npm i --no-audit --no-fund \
            --loglevel=error --no-progress --omit=dev); then
            missing+=("SillyTavern: npm install failed in $sillytavern (see above; it needs the npm registry)")
        else
            export SILLYTAVERN_DIR
            SILLYTAVERN_DIR="$(absolute "$sillytavern")"
            return
        fi
    fi
    unset SILLYTAVERN_DIR
    left_out+=("sillytavern_external")
}

check_koboldcpp() {
    local fetch="fetch https://github.com/LostRuins/koboldcpp and build it there with its own make"
    if [ -z "$koboldcpp" ]; then
        missing+=("KoboldCpp: no --koboldcpp DIR given; $fetch")
    elif [ ! -f "$koboldcpp/koboldcpp.py" ]; then
        missing+=("KoboldCpp: $koboldcpp has no koboldcpp.py; $fetch")
    elif [ ! -f "$koboldcpp/koboldcpp_default.so" ]; then
        missing+=("KoboldCpp: $koboldcpp is not built (no koboldcpp_default.so): run make in $koboldcpp")
    else
        export KOBOLDCPP_DIR
        KOBOLDCPP_DIR="$(absolute "$koboldcpp")"
        return
    fi
    unset KOBOLDCPP_DIR
    left_out+=("koboldcpp") # the real backends' tests run it as their `koboldcpp` case
}

ensure_venv requirements-dev.txt
ensure_postgres
ensure_redis
ensure_chromium
check_lite
check_sillytavern
check_koboldcpp

say_missing() {
    [ "${#missing[@]}" -eq 0 ] && return
    echo "== not tested: the program is missing or not usable" >&2
    printf '   - %s\n' "${missing[@]}" >&2
}
say_missing
if [ -z "${KOBOLDAI_LITE_DIR:-}${SILLYTAVERN_DIR:-}${KOBOLDCPP_DIR:-}" ]; then
    echo "Nothing to test: give at least one of --lite, --sillytavern, --koboldcpp." >&2
    exit 2
fi

# The missing programs' tests are left out (KoboldCpp's would fail, saying what is missing).
filter="$user_filter"
for word in "${left_out[@]}"; do
    filter="${filter:+($filter) and }not $word"
done
[ -n "$filter" ] && pytest_args+=(-k "$filter")

# Browsers and outside servers are heavy: one test at a time unless PYTEST_WORKERS says more.
run_pytest() {
    local code=0
    .venv/bin/pytest -m external -n "${PYTEST_WORKERS:-0}" "$@" || code=$?
    if [ "$code" -eq 5 ]; then
        echo "pytest selected no tests." >&2
        return 5
    fi
    return "$code"
}

db="koboldcluster_ext_$(pwd | sha256sum | cut -c1-8)"
postgres_url="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/$db}"

# Ctrl-C stops the run (pytest stops its browsers and servers first), not just one database's.
trap 'echo "== interrupted" >&2; exit 130' INT TERM

# One database after the other: each run starts browsers and Node servers, too much at once
# for a small machine.
echo "== external tests on SQLite"
sqlite_code=0
DATABASE_URL= run_pytest "${pytest_args[@]}" || sqlite_code=$?
echo "== external tests on PostgreSQL"
postgres_code=0
DATABASE_URL="$postgres_url" run_pytest "${pytest_args[@]}" || postgres_code=$?

say_missing
[ "$sqlite_code" -eq 0 ] || { echo "== FAILED on SQLite" >&2; exit "$sqlite_code"; }
[ "$postgres_code" -eq 0 ] || { echo "== FAILED on PostgreSQL" >&2; exit "$postgres_code"; }
if [ "${#missing[@]}" -gt 0 ] && [ "${CI:-}" = "true" ]; then
    echo "== passed, but not every program was tested (CI requires all)" >&2
    exit 1
fi
echo "== external tests passed on SQLite and PostgreSQL"
