#!/usr/bin/env bash
# packaging/deb-test.sh DEB: the Debian package, installed and run on this
# machine as an operator would (`make deb-test` builds it first).
#
#  1. apt-get install ./revproxy_*.deb, then check what it installed: the
#     unit (systemd-analyze verify), commands, conffiles, man pages, logrotate
#     file, system user, directories and their modes, the venv.
#     Then reinstall it over itself (prerm upgrade, postinst configure again).
#  2. Run the service by hand as systemd would (systemd is not PID 1 here):
#     the runtime, state and log directories made with the unit's owners and
#     modes, then the unit's own ExecStartPre and ExecStart lines (read from
#     the installed unit, with a test config on loopback high ports) as user
#     revproxy (with a soft descriptor limit under the unit's hard
#     LimitNOFILE, which revproxy must raise and log); prove a proxied
#     request, its access log line and the log's rotation (as user
#     revproxy), the admin socket, a reload that
#     changes something, a reload of a broken config that changes nothing,
#     and exit status 0 on SIGTERM.
#  3. apt-get purge, then check that nothing is left.
#
# Prints PASS or FAIL per step with the time it took; exits 1 if any step
# failed. Needs root. Every wait is bounded; every process it starts it stops,
# by its PID. Network traffic: 127.0.0.1 only.
set -uo pipefail

if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 dist/revproxy_VERSION_ARCH.deb" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "$0: must run as root (it installs and purges the package)" >&2
    exit 2
fi
DEB=$(realpath "$1")
# The lock the venv must match: the checkout's.
LOCK=$(realpath "$(dirname "$0")/../requirements.lock")

# Nothing of the caller's Python setup (pyenv first on PATH, the Makefile's
# PYTHONPATH pointing at the checkout) may reach dpkg's scripts or revproxy,
# nor anything that makes revproxy think it runs under systemd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV PYENV_VERSION \
    NOTIFY_SOCKET JOURNAL_STREAM LISTEN_FDS LISTEN_PID REVPROXY_ADMIN_SOCKET
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
cd /    # systemd's default WorkingDirectory

VENV=/opt/venvs/revproxy
UNIT=/lib/systemd/system/revproxy.service
SOCKET=/run/revproxy/admin.sock
HTTP_PORT=18480
OPS_PORT=18481
UPSTREAM_PORT=18482

TMP=$(mktemp -d /tmp/revproxy-deb-test.XXXXXX)
chmod 0755 "$TMP"               # user revproxy reads the test config here
CONFIG=$TMP/config.toml
UPSTREAM_PID=""
RUNUSER_PID=""
PROXY_PID=""

cleanup() {
    # Only what this script started, by PID.
    local pid
    for pid in "$PROXY_PID" "$RUNUSER_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    if [ -n "$UPSTREAM_PID" ] && kill -0 "$UPSTREAM_PID" 2>/dev/null; then
        kill "$UPSTREAM_PID" 2>/dev/null
        wait "$UPSTREAM_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# ---- reporting ----------------------------------------------------------------
START=$(date +%s%N)
MARK=$START
PASSED=0
FAILED=0
FAILURES=()

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
secs_since() { awk -v ms="$(ms_since "$1")" 'BEGIN { printf "%.1f", ms / 1000 }'; }

pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS  %-66s %6ss\n' "$1" "$(secs_since "$MARK")"
    MARK=$(date +%s%N)
}

fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$1")
    printf 'FAIL  %-66s %6ss\n' "$1" "$(secs_since "$MARK")"
    if [ -n "${2:-}" ]; then
        printf '%s\n' "$2" | tail -n 40 | sed 's/^/      | /'
    fi
    MARK=$(date +%s%N)
}

# check NAME COMMAND...: PASS when COMMAND exits 0; its output shown on FAIL.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

section() {
    printf '\n== %s\n' "$1"
    MARK=$(date +%s%N)
}

note() { printf '      %s\n' "$*"; }

# wait_until SECONDS COMMAND...: COMMAND succeeds within SECONDS.
wait_until() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_closed() { ! port_open "$1"; }

# json_get EXPRESSION < JSON: print a Python expression on the parsed `a`.
json_get() {
    /usr/bin/python3 -c 'import json, sys; a = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# The value of KEY in the installed unit ("" if absent; the last one wins).
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }

# The unit's command line KEY (ExecStartPre, ExecStart) as NUL-separated
# argv, systemd's prefixes (-@:+!) dropped, the config path replaced by ours.
unit_command() {
    unit_value "$1" | /usr/bin/python3 -c '
import shlex, sys
line = sys.stdin.read().strip().lstrip("-@:+!")
if not line:
    sys.exit("no such line in the unit")
args = [a.replace("/etc/revproxy/config.toml", sys.argv[1]) for a in shlex.split(line)]
sys.stdout.write("\0".join(args) + "\0")' "$CONFIG"
}

# write_config EXTRA-TOML: the test config: loopback high ports, the unit's
# directories, one default site "app" on the test upstream.
write_config() {
    cat >"$CONFIG.new" <<EOF
# revproxy deb-test config
[server]
listen_http = ["tcp:$HTTP_PORT:interface=127.0.0.1"]
listen_https = []
admin_socket_path = "$SOCKET"
ops_listen = "tcp:$OPS_PORT:interface=127.0.0.1"
state_dir = "/var/lib/revproxy"
shutdown_timeout_secs = 5

[logging]
access_log = "/var/log/revproxy/access.log"
access_log_format = "json"

[[sites]]
name = "app"
hosts = ["app.test"]
default = true
upstreams = ["http://127.0.0.1:$UPSTREAM_PORT"]
$1
EOF
    chmod 0644 "$CONFIG.new"
    mv "$CONFIG.new" "$CONFIG"
}

as_revproxy() { runuser -u revproxy -- "$@"; }

apt_get() { apt-get -q -y -o Dpkg::Use-Pty=0 "$@"; }

# The path exists (within 5 s) with MODE OWNER:GROUP.
has_mode() {
    wait_until 5 test -e "$1" || { echo "no $1"; return 1; }
    local got
    got=$(stat -c '%a %U:%G' "$1")
    [ "$got" = "$2" ] || { echo "$1 is $got"; return 1; }
}

# GET http://HOST/hello.txt through the proxy gives the upstream's file.
proxied() {
    local body
    body=$(curl -sS --max-time 10 -H "Host: $1" "http://127.0.0.1:$HTTP_PORT/hello.txt") || return 1
    [ "$body" = "hello from the upstream" ] || { echo "got: $body"; return 1; }
}

exits_1() {
    "$@"
    [ $? = 1 ]
}

# A conffile of the installed package.
is_conffile() { dpkg-query -W -f='${Conffiles}\n' revproxy | grep -q "^ $1 "; }

links_into_venv() {
    [ "$(readlink -f /usr/bin/revproxy)" = "$VENV/bin/revproxy" ] &&
        [ "$(readlink -f /usr/bin/revproxy-admin)" = "$VENV/bin/revproxy-admin" ]
}

system_user() {
    local name uid gid home shell
    IFS=: read -r name _ uid gid _ home shell < <(getent passwd revproxy) || return 1
    echo "$name uid=$uid gid=$gid home=$home shell=$shell"
    [ "$uid" -lt 1000 ] && [ "$home" = /var/lib/revproxy ] &&
        [ "$shell" = /usr/sbin/nologin ] &&
        [ "$(getent group revproxy | cut -d: -f3)" = "$gid" ]
}

nothing_generated_shipped() {
    ! dpkg -L revproxy | grep -E 'dropin\.cache|__pycache__|\.pyc$'
}

postinst_generated() {
    ls "$VENV"/lib/python3*/site-packages/twisted/plugins/dropin.cache &&
        ls "$VENV"/lib/python3*/site-packages/revproxy/__pycache__/service.cpython-3*.pyc
}

# Every distribution in the venv at its requirements.lock version, nothing
# else but pip, setuptools and revproxy itself; and pip check is happy.
venv_matches_lock() {
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -B -m pip check || return 1
    "$VENV/bin/python" -B - "$LOCK" <<'PYTHON'
import importlib.metadata
import re
import sys


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


pins = {}
for line in open(sys.argv[1], encoding="utf-8"):
    match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
    if match:
        pins[canonical(match.group(1))] = match.group(2)
installed = {
    canonical(dist.metadata["Name"]): dist.version
    for dist in importlib.metadata.distributions()
}
wrong = {
    name: (version, installed.get(name))
    for name, version in pins.items()
    if installed.get(name) != version
}
extra = sorted(set(installed) - set(pins) - {"pip", "setuptools", "revproxy"})
if wrong or extra or not pins:
    sys.exit(f"locked vs installed: {wrong}; not in the lock: {extra}")
print(f"{len(pins)} packages at their locked versions")
PYTHON
}

# The proxied request's line is in the access log within 10 s (written at
# least once a second); if not, what there is to see.
access_logged() {
    wait_until 10 grep -q '"/hello.txt"' /var/log/revproxy/access.log && return 0
    ls -l /var/log/revproxy
    cat /var/log/revproxy/access.log
    uptime
    tail -n 20 "$TMP/revproxy.log"
    return 1
}

# logrotate, forced, with the package's file (its own state file here):
# the log is renamed as user revproxy (su), a new one created 0640
# revproxy:revproxy, revproxy told to reopen it (postrotate, run as root),
# and the next request's line lands in the new file.
logrotate_reopens() {
    local out
    out=$(logrotate -v -f -s "$TMP/logrotate.state" /etc/logrotate.d/revproxy 2>&1) ||
        { echo "$out"; return 1; }
    grep -q "switching euid from 0 to $(id -u revproxy) and egid from 0 to $(id -g revproxy)" <<<"$out" ||
        { echo "$out"; echo "(logrotate did not rotate as revproxy:revproxy)"; return 1; }
    [ -s /var/log/revproxy/access.log.1 ] || { ls -l /var/log/revproxy; return 1; }
    has_mode /var/log/revproxy/access.log "640 revproxy:revproxy" || return 1
    proxied app.test || return 1
    wait_until 10 grep -q '"/hello.txt"' /var/log/revproxy/access.log ||
        { ls -l /var/log/revproxy; return 1; }
}

proxy_child() {
    PROXY_PID=$(pgrep -P "$RUNUSER_PID" | head -n 1)
    [ -n "$PROXY_PID" ]
}

runs_as_revproxy() { [ "$(ps -o user= -p "$PROXY_PID")" = revproxy ]; }

clean_log() { ! grep -E -i 'Traceback|plugin cache|dropin' "$TMP/revproxy.log"; }

gone() { [ ! -e "$1" ] && [ ! -L "$1" ]; }

echo "revproxy deb-test: $DEB ($(du -h "$DEB" | cut -f1))"

# ---- 0. a clean slate -----------------------------------------------------------
section "preparation"
need=()
command -v curl >/dev/null || need+=(curl)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v man >/dev/null || need+=(man-db)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v logrotate >/dev/null || need+=(logrotate)
if ((${#need[@]})); then
    check "apt-get install ${need[*]}" bash -c "apt-get -q update && apt-get -q -y install ${need[*]}"
fi
if dpkg-query -W -f='${Status}' revproxy 2>/dev/null | grep -q ' installed'; then
    check "purge the revproxy package left from before" apt_get purge revproxy
fi
for port in $HTTP_PORT $OPS_PORT $UPSTREAM_PORT; do
    if port_open "$port"; then
        fail "127.0.0.1:$port is free" "something listens on 127.0.0.1:$port already"
    fi
done
pass "ready"

# ---- 1. install ---------------------------------------------------------------
section "install and installed files"
check "apt-get install ./$(basename "$DEB")" apt_get install "$DEB"
check "dpkg: revproxy install ok installed" \
    bash -c "dpkg-query -W -f='\${Status}' revproxy | grep -qx 'install ok installed'"
check "systemd-analyze verify $UNIT" systemd-analyze verify "$UNIT"
exposure=$(systemd-analyze security --offline=true "$UNIT" 2>/dev/null | grep -i 'overall exposure' || true)
[ -n "$exposure" ] && note "systemd-analyze security --offline: $exposure"
check "unit enabled (multi-user.target.wants symlink)" \
    test -L /etc/systemd/system/multi-user.target.wants/revproxy.service
check "/usr/bin/revproxy --help" /usr/bin/revproxy --help
check "/usr/bin/revproxy-admin --help" /usr/bin/revproxy-admin --help
check "/usr/bin/revproxy{,-admin} -> $VENV/bin" links_into_venv
check "venv's python3 -> /usr/bin/python3" test "$(readlink "$VENV/bin/python3")" = /usr/bin/python3
check "conffile /etc/revproxy/config.toml" is_conffile /etc/revproxy/config.toml
check "conffile /etc/logrotate.d/revproxy" is_conffile /etc/logrotate.d/revproxy
check "logrotate -d /etc/logrotate.d/revproxy" logrotate -d /etc/logrotate.d/revproxy
check "man -w revproxy" man -w revproxy
check "man -w revproxy-admin" man -w revproxy-admin
check "system user and group revproxy, nologin, home /var/lib/revproxy" system_user
check "/var/lib/revproxy 700 revproxy:revproxy" has_mode /var/lib/revproxy "700 revproxy:revproxy"
check "/var/log/revproxy 750 revproxy:revproxy" has_mode /var/log/revproxy "750 revproxy:revproxy"
check "the shipped config passes revproxy --check (as revproxy)" \
    as_revproxy /usr/bin/revproxy --check --config /etc/revproxy/config.toml
check "no plugin cache, no bytecode in the package" nothing_generated_shipped
check "postinst made the plugin cache and the bytecode" postinst_generated
check "venv = requirements.lock's versions (+ pip check)" venv_matches_lock
# The Redis client of #19 and its C parser (txredisapi picks HiredisProtocol
# when hiredis imports). A python of its own: import txredisapi installs
# Twisted's global reactor.
check "venv imports hiredis and txredisapi (with hiredis)" \
    "$VENV/bin/python" -B -c 'import hiredis, txredisapi; assert txredisapi.hiredis is hiredis'

# ---- 1b. reinstall: prerm upgrade + postinst configure once more ------------------
section "reinstall over itself (the upgrade path of the maintainer scripts)"
echo "# edited by the operator" >>/etc/revproxy/config.toml
check "apt-get install --reinstall ./$(basename "$DEB")" apt_get install --reinstall "$DEB"
check "the operator's edit of the conffile is kept" \
    grep -q '^# edited by the operator$' /etc/revproxy/config.toml
check "plugin cache and bytecode made again" postinst_generated
check "system user kept, directories still right" bash -c \
    "$(declare -f system_user wait_until has_mode); system_user &&
     has_mode /var/lib/revproxy '700 revproxy:revproxy' &&
     has_mode /var/log/revproxy '750 revproxy:revproxy'"

# ---- 2. the service, run by hand as systemd would -------------------------------
section "the unit's ExecStartPre and ExecStart, run by hand as user revproxy"
if [ -d /run/systemd/system ]; then
    # systemd runs here after all: the package started the real service (on
    # port 80, with the admin socket this test uses). Stop it first.
    check "systemctl stop revproxy (the one the package started)" systemctl stop revproxy
fi
user=$(unit_value User)
group=$(unit_value Group)
check "unit: User=revproxy Group=revproxy" test "$user:$group" = revproxy:revproxy
# RuntimeDirectory=, StateDirectory=, LogsDirectory=: owned by User:Group,
# with the unit's modes (systemd's default 0755).
for kind in Runtime:/run State:/var/lib Logs:/var/log; do
    key=${kind%%:*}
    name=$(unit_value "${key}Directory")
    mode=$(unit_value "${key}DirectoryMode")
    mode=${mode:-0755}
    if [ -z "$name" ]; then
        fail "unit: ${key}Directory=" "no ${key}Directory= in $UNIT"
        continue
    fi
    check "${kind#*:}/$name made $mode $user:$group (${key}Directory=)" \
        install -d -o "$user" -g "$group" -m "$mode" "${kind#*:}/$name"
done

mkdir -p "$TMP/www"
echo "hello from the upstream" >"$TMP/www/hello.txt"
/usr/bin/python3 -m http.server "$UPSTREAM_PORT" --bind 127.0.0.1 --directory "$TMP/www" \
    >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
check "upstream: python3 -m http.server on 127.0.0.1:$UPSTREAM_PORT" \
    wait_until 10 port_open "$UPSTREAM_PORT"

# ---- the shipped config answers, and proxies nothing -----------------------
# /etc/revproxy/config.toml as installed, on the test port (its own port 80,
# admin socket and ops listener off), run as the unit runs it: every Host
# gets its page; nothing is forwarded anywhere (a fresh install must not
# publish whatever local service listens on some port).
SHIPPED=$TMP/shipped.toml
/usr/bin/python3 - /etc/revproxy/config.toml "$SHIPPED" "$HTTP_PORT" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'(?m)^listen_http = .*$', f'listen_http = ["tcp:{sys.argv[3]}:interface=127.0.0.1"]', text)
text = re.sub(r'(?m)^admin_socket_path = .*$', 'admin_socket_path = ""', text)
text = re.sub(r'(?m)^ops_listen = .*$', 'ops_listen = ""', text)
text = re.sub(r'(?m)^access_log = .*$', 'access_log = "/var/log/revproxy/shipped.log"', text)
open(sys.argv[2], "w").write(text)
PY
chmod 0644 "$SHIPPED"
# The shipped config's access-log line: answered 200 by revproxy itself.
shipped_logged() {
    local line
    line=$(tail -n 1 /var/log/revproxy/shipped.log 2>/dev/null) || return 1
    [ -n "$line" ] || return 1
    [ "$(echo "$line" | json_get 'a["status"], a["upstream"], a["upstream_status"]')" = "(200, '', None)" ]
}
shipped_page() {
    local body
    body=$(curl -sS -f --max-time 10 -H "Host: anything-$RANDOM.test" "http://127.0.0.1:$HTTP_PORT/some/path") || return 1
    case "$body" in
        *"revproxy is running"*"edit /etc/revproxy/config.toml"*) return 0 ;;
        *) echo "got: $body"; return 1 ;;
    esac
}
CONFIG_TEST=$CONFIG
CONFIG=$SHIPPED
mapfile -d '' SHIPPED_CMD < <(unit_command ExecStart)
CONFIG=$CONFIG_TEST
runuser -u revproxy -- "${SHIPPED_CMD[@]}" >"$TMP/shipped.log" 2>&1 &
SHIPPED_PID=$!
if wait_until 30 port_open "$HTTP_PORT"; then
    check "the shipped config answers every Host with its page" shipped_page
    check "the shipped config forwarded nothing (access log: no upstream)" \
        wait_until 10 shipped_logged
else
    fail "the shipped config listens" "$(cat "$TMP/shipped.log")"
fi
pkill -TERM -P "$SHIPPED_PID" 2>/dev/null
kill -TERM "$SHIPPED_PID" 2>/dev/null
wait "$SHIPPED_PID" 2>/dev/null
rm -f /var/log/revproxy/shipped.log
wait_until 10 port_closed "$HTTP_PORT" || true

write_config ""
mapfile -d '' PRE < <(unit_command ExecStartPre)
mapfile -d '' START_CMD < <(unit_command ExecStart)
note "ExecStartPre: ${PRE[*]:-(none)}"
note "ExecStart:    ${START_CMD[*]:-(none)}"
if ((${#PRE[@]})); then
    check "ExecStartPre (config check) exits 0" as_revproxy "${PRE[@]}"
else
    fail "unit: ExecStartPre=" "no ExecStartPre= in $UNIT"
fi

# LimitNOFILE=: systemd would set it; here prlimit does, with the unit's
# hard limit but a soft limit of 1024 (as a drop-in LimitNOFILE=1024:N
# would), so that revproxy's own raise to the hard limit shows in its log.
# Without CAP_SYS_RESOURCE (in a container) root cannot raise its own hard
# limit: then the hard limit stays what it is here.
nofile=$(unit_value LimitNOFILE)
check "unit: LimitNOFILE=65536" test "$nofile" = 65536
nofile_hard=${nofile##*:}
nofile_hard=${nofile_hard:-65536}
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$nofile_hard" ] &&
    ! prlimit --nofile="$nofile_hard" true 2>/dev/null; then
    note "cannot raise the hard descriptor limit to $nofile_hard here: keeping $(ulimit -Hn)"
    nofile_hard=$(ulimit -Hn)
fi
# runuser forks and waits: $! is runuser (started directly, not through a
# shell function, which would put a subshell in $!; prlimit execs it), the
# proxy is its child. Signals go to the proxy itself: runuser, sent a
# SIGTERM, would SIGKILL its child 2 s later and die of the signal.
t0=$(date +%s%N)
prlimit --nofile="1024:$nofile_hard" \
    runuser -u revproxy -- "${START_CMD[@]}" >"$TMP/revproxy.log" 2>&1 &
RUNUSER_PID=$!
if wait_until 10 proxy_child; then
    pass "ExecStart started: runuser $RUNUSER_PID, revproxy $PROXY_PID"
else
    fail "ExecStart started" "$(cat "$TMP/revproxy.log")"
fi
check "revproxy runs as user revproxy" runs_as_revproxy
check "it raised its soft descriptor limit to the hard one (log line)" \
    wait_until 10 grep -F "File descriptor limit (RLIMIT_NOFILE): soft 1024 -> $nofile_hard, hard $nofile_hard" "$TMP/revproxy.log"
if wait_until 30 port_open "$HTTP_PORT"; then
    pass "listening on 127.0.0.1:$HTTP_PORT ($(ms_since "$t0") ms after start)"
else
    fail "listening on 127.0.0.1:$HTTP_PORT within 30 s" "$(cat "$TMP/revproxy.log")"
fi
check "admin socket $SOCKET 660 revproxy:revproxy" has_mode "$SOCKET" "660 revproxy:revproxy"
check "proxied: curl -H 'Host: app.test' http://127.0.0.1:$HTTP_PORT/hello.txt" proxied app.test
check "ops listener: /healthz 200" curl -sS -f --max-time 10 "http://127.0.0.1:$OPS_PORT/healthz"
check "its line in /var/log/revproxy/access.log" access_logged

check "logrotate -f: rotated as revproxy, reopened, next line in the new log" logrotate_reopens

status=$(echo status | timeout 10 nc -U "$SOCKET" 2>&1)
if [ "$(printf '%s' "$status" | json_get '(a["status"], a["sites"], a["pid"])' 2>/dev/null)" = "('ok', 1, $PROXY_PID)" ]; then
    pass "echo status | nc -U $SOCKET: ok, 1 site, pid $PROXY_PID"
else
    fail "echo status | nc -U $SOCKET" "$status"
fi
note "$status"

write_config '
[[sites]]
name = "app2"
hosts = ["app2.test"]
upstreams = ["http://127.0.0.1:'"$UPSTREAM_PORT"'"]'
answer=$(as_revproxy /usr/bin/revproxy-admin --socket "$SOCKET" reload 2>&1)
rc=$?
if [ $rc = 0 ] &&
    [ "$(printf '%s' "$answer" | json_get '(a["status"], a["sites"]["added"])' 2>/dev/null)" = "('ok', ['app2'])" ]; then
    pass "revproxy-admin reload (site app2 added): ok, app2 added"
else
    fail "revproxy-admin reload (site app2 added): ok, app2 added (exit $rc)" "$answer"
fi
note "$answer"
check "the new config serves app2.test" proxied app2.test

printf '\nnot_a_key = 1\n' >>"$CONFIG"
answer=$(as_revproxy /usr/bin/revproxy-admin --socket "$SOCKET" reload 2>&1)
rc=$?
if [ $rc = 1 ] && [ "$(printf '%s' "$answer" | json_get 'a["status"]' 2>/dev/null)" = error ]; then
    pass "revproxy-admin reload (broken config): exit 1, status error"
else
    fail "revproxy-admin reload (broken config): exit 1, status error (exit $rc)" "$answer"
fi
note "$answer"
check "the config before still serves app.test" proxied app.test
check "the config before still serves app2.test" proxied app2.test
check "ExecStartPre rejects the broken config: exit 1" exits_1 as_revproxy "${PRE[@]}"

if [ -n "$PROXY_PID" ] && kill -TERM "$PROXY_PID" 2>/dev/null; then
    t0=$(date +%s%N)
    if wait_until 30 bash -c "! kill -0 $RUNUSER_PID"; then
        wait "$RUNUSER_PID"
        rc=$?
        RUNUSER_PID=""
        PROXY_PID=""
        if [ $rc = 0 ]; then
            pass "SIGTERM: exit status 0 ($(ms_since "$t0") ms)"
        else
            fail "SIGTERM: exit status 0 (got $rc)" "$(tail -n 20 "$TMP/revproxy.log")"
        fi
    else
        fail "SIGTERM: exited within 30 s" "$(tail -n 20 "$TMP/revproxy.log")"
    fi
else
    fail "SIGTERM sent to the proxy" "no proxy process"
fi
check "admin socket removed at shutdown" gone "$SOCKET"
check "its log: no traceback, no plugin cache complaint" clean_log
# systemd removes the RuntimeDirectory= when the service stops.
rm -rf /run/revproxy

section "workers = 2: a supervisor and two worker processes from the package's venv"
write_config ''
sed -i 's/^shutdown_timeout_secs = 5$/shutdown_timeout_secs = 5\nworkers = 2/' "$CONFIG"
check "ExecStartPre says 2 worker processes" \
    bash -c "runuser -u revproxy -- ${PRE[*]} | grep -F 'revproxy: 2 worker processes'"
mkdir -p /run/revproxy && chown revproxy:revproxy /run/revproxy && chmod 0750 /run/revproxy
: >"$TMP/revproxy.log"
prlimit --nofile="1024:$nofile_hard" \
    runuser -u revproxy -- "${START_CMD[@]}" >"$TMP/revproxy.log" 2>&1 &
RUNUSER_PID=$!
if wait_until 10 proxy_child && wait_until 30 port_open "$HTTP_PORT"; then
    pass "supervisor $PROXY_PID listening on 127.0.0.1:$HTTP_PORT"
else
    fail "supervisor listening" "$(cat "$TMP/revproxy.log")"
fi
two_workers() {
    local status
    status=$(echo status | timeout 10 nc -U "$SOCKET" 2>/dev/null) || return 1
    [ "$(printf '%s' "$status" | json_get '[w["state"] for w in a["workers"]]' 2>/dev/null)" = "['serving', 'serving']" ]
}
check "status: two workers serving" wait_until 20 two_workers
# (check runs its command in a subshell: the pids are read here.)
WORKER_PIDS=$(echo status | timeout 10 nc -U "$SOCKET" 2>/dev/null |
    json_get '" ".join(str(w["pid"]) for w in a["workers"])' 2>/dev/null || true)
note "worker pids: ${WORKER_PIDS:-(none)}"
workers_are_children() {
    local pid
    [ -n "$WORKER_PIDS" ] || return 1
    for pid in $WORKER_PIDS; do
        [ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = "$PROXY_PID" ] || return 1
        [ "$(ps -o user= -p "$pid")" = revproxy ] || return 1
    done
}
check "the workers are the supervisor's children, as user revproxy" workers_are_children
check "proxied through a worker" proxied app.test
check "ops listener: /metrics counts 2 workers serving" bash -c \
    "curl -sS -f --max-time 10 http://127.0.0.1:$OPS_PORT/metrics | grep -F 'revproxy_workers{state=\"serving\"} 2.0'"
if [ -n "$PROXY_PID" ] && kill -TERM "$PROXY_PID" 2>/dev/null; then
    if wait_until 30 bash -c "! kill -0 $RUNUSER_PID"; then
        wait "$RUNUSER_PID"
        rc=$?
        RUNUSER_PID=""
        PROXY_PID=""
        check "SIGTERM: the supervisor exits 0" test "$rc" = 0
    else
        fail "SIGTERM: exited within 30 s" "$(tail -n 20 "$TMP/revproxy.log")"
    fi
fi
workers_gone() {
    local pid
    for pid in $WORKER_PIDS; do ! kill -0 "$pid" 2>/dev/null || return 1; done
}
check "no worker process left" workers_gone
check "its log: no traceback, no plugin cache complaint" clean_log
rm -rf /run/revproxy
kill "$UPSTREAM_PID" 2>/dev/null
wait "$UPSTREAM_PID" 2>/dev/null
UPSTREAM_PID=""

# ---- 3. purge -----------------------------------------------------------------
section "purge"
check "apt-get purge revproxy" apt_get purge revproxy
check "dpkg: revproxy not installed" \
    bash -c "! dpkg-query -W -f='\${Status}' revproxy 2>/dev/null | grep -q ' installed'"
for path in "$VENV" /opt/venvs /etc/revproxy /var/lib/revproxy /var/log/revproxy \
    /run/revproxy /usr/bin/revproxy /usr/bin/revproxy-admin "$UNIT" \
    /etc/logrotate.d/revproxy /etc/systemd/system/multi-user.target.wants/revproxy.service \
    /usr/share/man/man8/revproxy.8.gz /usr/share/man/man8/revproxy-admin.8.gz \
    /usr/share/doc/revproxy; do
    check "gone: $path" gone "$path"
done
check "user revproxy gone" bash -c "! getent passwd revproxy"
check "group revproxy gone" bash -c "! getent group revproxy"

# ---- summary ------------------------------------------------------------------
printf '\n%d passed, %d failed\n' "$PASSED" "$FAILED"
printf 'deb-test took %ss\n' "$(secs_since "$START")"
if ((FAILED)); then
    printf 'FAILED: %s\n' "${FAILURES[@]}"
    exit 1
fi
