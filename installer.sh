#!/bin/sh
# Join a dockercomp master as a volunteer:
#
#   curl -fsSL https://MASTER/install.sh | sh -s -- --enroll TOKEN --trust FINGERPRINT [--slots N] [--memory SIZE]
#   ./installer.sh --server URL [options]
#
# Plain http:// is refused unless the master is on loopback (or --insecure is given); a master
# with a private CA is trusted with --ca FILE (curl --cacert ... for the download itself).
# --trust pins the project's signing key by its fingerprint: the key is fetched from the
# master and kept only when it has that fingerprint, and the daemon runs only images it signed.
#
# It installs the client into a virtualenv under one directory (--prefix, default
# ~/.local/share/dockercomp), writes its config file, starts the daemon (a systemd user
# service when systemd runs, else a supervised background process with a pid file and a log),
# and waits until the daemon has registered. Everything it creates is listed in PREFIX/manifest,
# which `cleanup` (or `dockercomp client uninstall`) reads to remove it again.
# Running it again upgrades in place.
set -eu

DEFAULT_SERVER=''
SERVICE=dockercomp-client.service
REGISTER_WAIT="${DOCKERCOMP_REGISTER_WAIT:-60}"

usage() {
    cat <<'EOF'
usage: installer.sh [--server URL] [--enroll TOKEN] [--trust FINGERPRINT] [--slots N] [--memory SIZE]
                    [--name NAME] [--prefix DIR] [--ca FILE] [--insecure] [--allow-unsigned] [--yes]
                    [--docker-group] [--no-systemd] [--dry-run]

  --server URL     the master (default: the master this script was downloaded from)
  --ca FILE        PEM CA certificates to trust for the master instead of the system's
  --insecure       allow plain http:// to a master that is not on loopback (a lab network)
  --slots N        units run at once (default: the cores minus one)
  --memory SIZE    memory donated to containers, e.g. 4GiB (default: half of this machine's)
  --enroll TOKEN   the volunteer token the master's operator gave you (none: a master that enrolls openly)
  --trust FPR      the fingerprint of the project's signing key: only images it signed are run
  --allow-unsigned run images no trusted key signed (a lab only; instead of --trust)
  --name NAME      the name operators see (default: the host name)
  --prefix DIR     where everything goes (default ~/.local/share/dockercomp)
  --yes            install missing packages (Docker, Python's venv) without asking
  --docker-group   add this user to the docker group
  --no-systemd     run the daemon as a supervised background process even when systemd runs
  --dry-run        print the plan, change nothing
EOF
}

say() { printf 'installer: %s\n' "$*" >&2; }
die() {
    printf 'installer: error: %s\n' "$*" >&2
    exit 1
}

SERVER="$DEFAULT_SERVER"
SLOTS=''
MEMORY=''
ENROLL=''
TRUST=''
ALLOW_UNSIGNED=0
NAME=''
PREFIX=''
CA=''
INSECURE=0
YES=0
DOCKER_GROUP=0
NO_SYSTEMD=0
DRY_RUN=0

need_value() {
    [ "$#" -ge 2 ] || die "$1 needs a value"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --server) need_value "$@"; SERVER="$2"; shift 2 ;;
        --slots) need_value "$@"; SLOTS="$2"; shift 2 ;;
        --memory) need_value "$@"; MEMORY="$2"; shift 2 ;;
        --enroll) need_value "$@"; ENROLL="$2"; shift 2 ;;
        --trust) need_value "$@"; TRUST="$2"; shift 2 ;;
        --allow-unsigned) ALLOW_UNSIGNED=1; shift ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
        --ca) need_value "$@"; CA="$2"; shift 2 ;;
        --insecure) INSECURE=1; shift ;;
        --yes | -y) YES=1; shift ;;
        --docker-group) DOCKER_GROUP=1; shift ;;
        --no-systemd) NO_SYSTEMD=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# -- checking what was given -------------------------------------------------------------------

# Only characters a URL of a master needs: no quotes, spaces, $ or backticks.
valid_url() {
    case "$1" in
        http://?* | https://?*) ;;
        *) return 1 ;;
    esac
    case "$1" in
        *[!A-Za-z0-9:/._~%\[\]-]*) return 1 ;;
    esac
    return 0
}

# A printable value without characters that would need quoting in TOML.
valid_text() {
    case "$1" in
        *[!A-Za-z0-9\ ._:@+=,/-]*) return 1 ;;
    esac
    return 0
}

# The host of a URL: without its scheme, path, port or the brackets of an IPv6 address.
url_host() {
    rest="${1#*://}"
    rest="${rest%%/*}"
    case "$rest" in
        \[*) rest="${rest#\[}"; rest="${rest%%\]*}" ;;
        *) rest="${rest%%:*}" ;;
    esac
    printf '%s\n' "$rest" | tr '[:upper:]' '[:lower:]'
}

# localhost, 127.0.0.0/8 or ::1: addresses that never leave this machine.
is_loopback() {
    case "$1" in
        localhost | ::1) return 0 ;;
        *[!0-9.]*) return 1 ;;
        127.*) return 0 ;;
    esac
    return 1
}

[ -n "$SERVER" ] || die "give the master's address: --server http://HOST:PORT"
SERVER="${SERVER%/}"
valid_url "$SERVER" || die "--server must be a URL such as http://192.0.2.7:8080"
# TLS everywhere but loopback: the daemon's token and its results would cross the network in the clear
case "$SERVER" in
    http://*)
        host="$(url_host "$SERVER")"
        is_loopback "$host" || [ "$INSECURE" -eq 1 ] ||
            die "refusing plain HTTP to $host, which is not on loopback: use https:// (with --ca FILE for a private CA), or --insecure for a lab network"
        ;;
esac
if [ -n "$CA" ]; then
    case "$CA" in
        /*) ;;
        *) CA="$(pwd)/$CA" ;;
    esac
    { [ -f "$CA" ] && [ -r "$CA" ]; } || die "--ca $CA is not a readable file"
    grep -q -e '-----BEGIN CERTIFICATE-----' "$CA" || die "--ca $CA holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
fi
case "$SLOTS" in
    '' | [1-9] | [1-9][0-9] | [1-9][0-9][0-9] | [1-9][0-9][0-9][0-9]) ;;
    *) die "--slots must be a number from 1 to 9999" ;;
esac
case "$MEMORY" in
    *[!0-9A-Za-z.]*) die "--memory must be a size such as 4GiB" ;;
esac
valid_text "$ENROLL" || die "--enroll: the token may hold letters, digits and ._:@+=,/- only"
case "$TRUST" in
    '') [ "$ALLOW_UNSIGNED" -eq 1 ] ||
        die "give --trust FINGERPRINT, the project's signing key (its one-line install carries it), or --allow-unsigned for a lab" ;;
    *[!0-9a-f]*) die "--trust takes a key fingerprint: 64 lowercase hex digits (dockercomp sign fingerprint KEY.pub)" ;;
esac
[ -z "$TRUST" ] || [ "${#TRUST}" -eq 64 ] || die "--trust takes a key fingerprint: 64 lowercase hex digits"
valid_text "$NAME" || die "--name may hold letters, digits, spaces and ._:@+=,/- only"

[ -n "${HOME:-}" ] || die "HOME is not set"
if [ -z "$PREFIX" ]; then
    PREFIX="${XDG_DATA_HOME:-$HOME/.local/share}/dockercomp"
fi
case "$PREFIX" in
    /*) ;;
    *) PREFIX="$(pwd)/$PREFIX" ;;
esac
case "$PREFIX" in
    *[!A-Za-z0-9\ ._/+@-]*) die "--prefix may hold letters, digits, spaces and ._/+@- only" ;;
    / | "$HOME" | "$HOME/") die "--prefix must be a directory of its own, not $PREFIX" ;;
esac

VENV="$PREFIX/venv"
CONFIG="$PREFIX/client.toml"
CA_FILE="$PREFIX/ca.pem"
TRUST_FILE="$PREFIX/trusted-keys.pem"
WORK_DIR="$PREFIX/client"
RUN_DIR="$PREFIX/run"
LOG_DIR="$PREFIX/log"
MANIFEST="$PREFIX/manifest"
SUPERVISOR="$PREFIX/bin/supervise"
UNIT_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
UNIT_FILE="$UNIT_DIR/$SERVICE"
TMP_DIR=''

if [ "$(id -u)" -eq 0 ]; then
    SUDO=''
elif command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
else
    SUDO=''
fi

# -- steps -------------------------------------------------------------------------------------

plan() {
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would: $*"
    else
        say "$*"
    fi
}

# Runs a command, or in a dry run only says it would.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would run: $*"
    else
        say "run: $*"
        "$@"
    fi
}

as_root() {
    if [ -n "$SUDO" ]; then
        run "$SUDO" "$@"
    else
        run "$@"
    fi
}

# manifest KIND VALUE: record something created, once.
manifest() {
    [ "$DRY_RUN" -eq 0 ] || return 0
    if [ ! -f "$MANIFEST" ] || ! grep -qxF "$1 $2" "$MANIFEST"; then
        printf '%s %s\n' "$1" "$2" >>"$MANIFEST"
    fi
}

# make_dir DIR: create it and the parents it lacks, each recorded in the manifest.
make_dir() {
    [ ! -d "$1" ] || return 0
    parent="$(dirname "$1")"
    [ "$parent" = "$1" ] || make_dir "$parent"
    plan "create directory $1"
    [ "$DRY_RUN" -eq 1 ] || mkdir "$1"
    manifest dir "$1"
}

# confirm QUESTION: yes with --yes; otherwise ask on the terminal (stdin may be the script).
confirm() {
    [ "$YES" -eq 1 ] && return 0
    [ "$DRY_RUN" -eq 1 ] && return 0
    if [ -r /dev/tty ] && { : </dev/tty; } 2>/dev/null; then
        printf 'installer: %s [y/N] ' "$1" >/dev/tty
        read -r answer </dev/tty || answer=''
        case "$answer" in
            y | Y | yes | YES) return 0 ;;
        esac
    fi
    return 1
}

# The directories mkdir -p DIR would create, outermost first.
missing_dirs() {
    [ ! -d "$1" ] || return 0
    parent="$(dirname "$1")"
    [ "$parent" = "$1" ] || missing_dirs "$parent"
    printf '%s\n' "$1"
}

fetch() { # fetch URL FILE (from the master: with --ca, its certificate is checked against CA only)
    if command -v curl >/dev/null 2>&1; then
        if [ -n "$CA" ]; then
            curl -fsSL --max-time 300 --cacert "$CA" -o "$2" "$1"
        else
            curl -fsSL --max-time 300 -o "$2" "$1"
        fi
    elif command -v wget >/dev/null 2>&1; then
        if [ -n "$CA" ]; then
            wget -q -T 300 --ca-certificate="$CA" -O "$2" "$1"
        else
            wget -q -T 300 -O "$2" "$1"
        fi
    else
        die "neither curl nor wget is installed"
    fi
}

cleanup_tmp() {
    if [ -n "$TMP_DIR" ]; then
        rm -rf "$TMP_DIR"
    fi
}
trap cleanup_tmp EXIT
trap 'cleanup_tmp; exit 130' INT TERM

detect_os() {
    OS_NAME="$(uname -s)"
    DISTRO=unknown
    if [ -r /etc/os-release ]; then
        DISTRO="$(sed -n 's/^ID=//p' /etc/os-release | tr -cd 'A-Za-z0-9._-')"
    fi
    PKG=''
    for manager in apt-get dnf yum zypper pacman; do
        if command -v "$manager" >/dev/null 2>&1; then
            PKG="$manager"
            break
        fi
    done
    say "system: $OS_NAME ${DISTRO:-unknown}, package manager: ${PKG:-none found}"
    [ "$OS_NAME" = Linux ] || die "only Linux is supported, this is $OS_NAME"
}

# pkg_install PACKAGE...: install with the distribution's package manager.
pkg_install() {
    case "$PKG" in
        apt-get)
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" ||
                { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; } ;;
        dnf) as_root dnf install -y "$@" ;;
        yum) as_root yum install -y "$@" ;;
        zypper) as_root zypper --non-interactive install "$@" ;;
        pacman) as_root pacman -S --noconfirm --needed "$@" ;;
        *) die "no package manager found to install $*; install it yourself and run this again" ;;
    esac
}

docker_package() {
    case "$PKG" in
        apt-get) echo docker.io ;;
        dnf) if [ "$DISTRO" = fedora ]; then echo moby-engine; else echo docker; fi ;;
        *) echo docker ;;
    esac
}

systemd_runs() {
    [ -d /run/systemd/system ]
}

ensure_docker() {
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        say "Docker engine answers: nothing to install"
    else
        if ! command -v docker >/dev/null 2>&1; then
            package="$(docker_package)"
            plan "install Docker's engine from the distribution: package $package"
            confirm "Docker is missing; install the package $package?" ||
                die "Docker is needed: run again with --yes, or install it yourself"
            pkg_install "$package"
            manifest package "$package"
            manifest docker-installed yes
        fi
        plan "start Docker's engine"
        if systemd_runs; then
            as_root systemctl enable --now docker
        elif command -v service >/dev/null 2>&1; then
            as_root service docker start
        else
            die "cannot start Docker's engine here: start dockerd and run this again"
        fi
        if [ "$DRY_RUN" -eq 0 ]; then
            tries=0
            until docker info >/dev/null 2>&1 || [ -n "$SUDO" ]; do
                tries=$((tries + 1))
                [ "$tries" -le 30 ] || die "Docker's engine does not answer (is this user allowed to use it? see --docker-group)"
                sleep 1
            done
        fi
    fi
    if [ "$DOCKER_GROUP" -eq 1 ]; then
        user="$(id -un)"
        if id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
            say "$user is in the docker group already"
        else
            plan "add $user to the docker group (takes effect at the next login)"
            as_root usermod -aG docker "$user"
            manifest group "$user docker"
        fi
    fi
}

ensure_python() {
    PYTHON="$(command -v python3 || true)"
    [ -n "$PYTHON" ] || {
        plan "install Python 3"
        confirm "Python 3 is missing; install it?" || die "Python 3.11 or newer is needed"
        pkg_install python3
        manifest package python3
        PYTHON="$(command -v python3 || echo python3)"
    }
    if [ "$DRY_RUN" -eq 0 ] && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        die "Python 3.11 or newer is needed, $PYTHON is older"
    fi
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        plan "install Python's venv module (package python3-venv)"
        confirm "Python's venv module is missing; install python3-venv?" || die "Python's venv module is needed"
        pkg_install python3-venv
        manifest package python3-venv
    fi
}

# The master: reachable, and what it serves. Every value is checked before use.
check_master() {
    say "checking the master at $SERVER"
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would fetch $SERVER/api/v1/install and the client's wheel it names${CA:+, trusting the CA certificates in $CA}"
        WHEEL=dockercomp-VERSION-py3-none-any.whl
        return 0
    fi
    TMP_DIR="$(mktemp -d)"
    fetch "$SERVER/api/v1/install" "$TMP_DIR/info" ||
        die "cannot reach the master at $SERVER (is the address right, and is it running?); nothing was installed"
    VERSION="$(sed -n 's/^version=//p' "$TMP_DIR/info" | head -n 1)"
    WHEEL="$(sed -n 's/^wheel=//p' "$TMP_DIR/info" | head -n 1)"
    SHA256="$(sed -n 's/^sha256=//p' "$TMP_DIR/info" | head -n 1)"
    case "$VERSION" in
        '' | *[!0-9A-Za-z.+]*) die "the master sent an invalid version; nothing was installed" ;;
    esac
    case "$WHEEL" in
        "dockercomp-$VERSION-py3-none-any.whl") ;;
        *) die "the master sent an invalid wheel name; nothing was installed" ;;
    esac
    case "$SHA256" in
        *[!0-9a-f]*) die "the master sent an invalid checksum; nothing was installed" ;;
    esac
    [ "${#SHA256}" -eq 64 ] || die "the master sent an invalid checksum; nothing was installed"
    say "the master serves dockercomp $VERSION; downloading $WHEEL"
    fetch "$SERVER/dist/$WHEEL" "$TMP_DIR/$WHEEL" || die "cannot download $WHEEL from the master; nothing was installed"
    got="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$TMP_DIR/$WHEEL")"
    [ "$got" = "$SHA256" ] || die "$WHEEL does not match its checksum; nothing was installed"
}

install_client() {
    first_install=0
    [ -f "$MANIFEST" ] || first_install=1
    if [ "$first_install" -eq 1 ] && [ -e "$PREFIX" ] && [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ]; then
        die "$PREFIX exists and holds no dockercomp manifest: choose another --prefix"
    fi
    if [ ! -f "$MANIFEST" ]; then
        created="$(missing_dirs "$PREFIX")"
        plan "create directory $PREFIX and the manifest $MANIFEST"
        if [ "$DRY_RUN" -eq 0 ]; then
            mkdir -p "$PREFIX"
            : >"$MANIFEST"
            printf '%s\n' "$created" | while IFS= read -r dir; do
                [ -z "$dir" ] || manifest dir "$dir"
            done
            manifest file "$MANIFEST"
        fi
    fi
    if [ "$first_install" -eq 1 ] && [ "$DRY_RUN" -eq 0 ] && command -v docker >/dev/null 2>&1; then
        # images of ours that were here before: cleanup leaves those alone
        for image in $(docker images -q --no-trunc --filter label=dockercomp.image 2>/dev/null | sort -u); do
            manifest image-before "$image"
        done
    fi
    for dir in "$PREFIX/bin" "$WORK_DIR" "$RUN_DIR" "$LOG_DIR"; do
        make_dir "$dir"
    done
    if [ -x "$VENV/bin/python" ]; then
        say "the virtualenv $VENV exists: upgrading in place"
    else
        plan "create the virtualenv $VENV"
        run "$PYTHON" -m venv "$VENV"
        manifest dir "$VENV"
    fi
    plan "install the client $WHEEL and its dependencies (from PyPI) into $VENV"
    if [ "$DRY_RUN" -eq 0 ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade --force-reinstall \
            --no-deps "$TMP_DIR/$WHEEL" ||
            die "installing $WHEEL failed"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$TMP_DIR/${WHEEL}[client]" ||
            die "installing the client's dependencies failed"
    fi
    if [ -n "$CA" ]; then
        plan "copy the CA certificates $CA to $CA_FILE (the daemon trusts them for the master)"
        if [ "$DRY_RUN" -eq 0 ]; then
            cp "$CA" "$CA_FILE.tmp"
            chmod 644 "$CA_FILE.tmp"
            mv "$CA_FILE.tmp" "$CA_FILE"
            manifest file "$CA_FILE"
        fi
    fi
    pin_key
    write_config
    write_supervisor
    if [ "$DRY_RUN" -eq 0 ] && [ -f "$TMP_DIR/cleanup" ]; then
        cp "$TMP_DIR/cleanup" "$PREFIX/cleanup"
        chmod 755 "$PREFIX/cleanup"
        manifest file "$PREFIX/cleanup"
    fi
}

# The project's public key, from the master, kept only if it has the fingerprint given: a master
# cannot hand out another key, and the daemon then runs only images that key signed.
pin_key() {
    [ -n "$TRUST" ] || return 0
    plan "fetch the project's signing key $TRUST from the master, check its fingerprint, keep it as $TRUST_FILE"
    [ "$DRY_RUN" -eq 0 ] || return 0
    fetch "$SERVER/api/v1/signers/$TRUST" "$TMP_DIR/signer.pem" ||
        die "the master has no signing key $TRUST (has the project signed its images there?)"
    got="$("$VENV/bin/dockercomp" sign fingerprint "$TMP_DIR/signer.pem" 2>/dev/null | head -n 1)"
    [ "$got" = "$TRUST" ] || die "the master sent a signing key whose fingerprint is not $TRUST; it is not trusted"
    cp "$TMP_DIR/signer.pem" "$TRUST_FILE.tmp"
    chmod 644 "$TRUST_FILE.tmp"
    mv "$TRUST_FILE.tmp" "$TRUST_FILE"
    manifest file "$TRUST_FILE"
}

write_config() {
    plan "write the config file $CONFIG"
    [ "$DRY_RUN" -eq 0 ] || return 0
    {
        printf '# written by installer.sh; running it again rewrites it\n[client]\n'
        printf 'server = "%s"\n' "$SERVER"
        printf 'work_dir = "%s"\n' "$WORK_DIR"
        [ -z "$SLOTS" ] || printf 'slots = %s\n' "$SLOTS"
        [ -z "$MEMORY" ] || printf 'memory = "%s"\n' "$MEMORY"
        [ -z "$ENROLL" ] || printf 'enroll = "%s"\n' "$ENROLL"
        [ -z "$TRUST" ] || printf 'trust = "%s"\n' "$TRUST_FILE"
        [ "$ALLOW_UNSIGNED" -eq 0 ] || printf 'allow_unsigned = true\n'
        [ -z "$NAME" ] || printf 'name = "%s"\n' "$NAME"
        [ -z "$CA" ] || printf 'ca = "%s"\n' "$CA_FILE"
        [ "$INSECURE" -eq 0 ] || printf 'insecure = true\n'
    } >"$CONFIG.tmp"
    chmod 600 "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
    manifest file "$CONFIG"
}

# The supervisor of the background process: it restarts the daemon when it fails, and passes
# SIGTERM on to it. It takes the prefix as its argument; nothing is written into it.
write_supervisor() {
    plan "write the supervisor $SUPERVISOR"
    [ "$DRY_RUN" -eq 0 ] || return 0
    cat >"$SUPERVISOR.tmp" <<'EOF'
#!/bin/sh
# Runs the dockercomp client daemon; restarts it when it fails; SIGTERM stops both.
set -u
prefix="$1"
child=''
stopping=0
stop() {
    stopping=1
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
    fi
}
trap stop TERM INT HUP
cd "$prefix" || exit 1
printf '%s\n' "$$" >"$prefix/run/supervisor.pid"
while [ "$stopping" -eq 0 ]; do
    "$prefix/venv/bin/dockercomp" client --config "$prefix/client.toml" \
        </dev/null >>"$prefix/log/daemon.log" 2>&1 &
    child=$!
    printf '%s\n' "$child" >"$prefix/run/daemon.pid"
    code=0
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"
        code=$?
    done
    child=''
    rm -f "$prefix/run/daemon.pid"
    [ "$stopping" -eq 0 ] || break
    [ "$code" -ne 0 ] || break
    printf 'supervise: the daemon exited with %s; restarting in 5s\n' "$code" >>"$prefix/log/daemon.log"
    sleep 5 &
    wait "$!" || true
done
rm -f "$prefix/run/supervisor.pid"
EOF
    chmod 755 "$SUPERVISOR.tmp"
    mv "$SUPERVISOR.tmp" "$SUPERVISOR"
    manifest file "$SUPERVISOR"
}

# The pid in FILE, when that process still runs our supervisor or daemon.
running_pid() {
    [ -f "$1" ] || return 1
    pid="$(tr -cd '0-9' <"$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$PREFIX/" || return 1
    printf '%s\n' "$pid"
}

stop_background() {
    if pid="$(running_pid "$RUN_DIR/supervisor.pid")"; then
        plan "stop the running daemon (supervisor pid $pid) to upgrade it"
        if [ "$DRY_RUN" -eq 0 ]; then
            kill -TERM "$pid"
            tries=0
            while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 900 ]; do
                tries=$((tries + 1))
                sleep 0.1
            done
        fi
    fi
}

start_daemon() {
    if [ "$NO_SYSTEMD" -eq 0 ] && systemd_runs && command -v systemctl >/dev/null 2>&1; then
        make_dir "$UNIT_DIR"
        plan "write the systemd user unit $UNIT_FILE and (re)start it"
        if [ "$DRY_RUN" -eq 0 ]; then
            cat >"$UNIT_FILE" <<EOF
[Unit]
Description=dockercomp volunteer client
After=network-online.target

[Service]
WorkingDirectory=$PREFIX
ExecStart="$VENV/bin/dockercomp" client --config "$CONFIG"
Restart=on-failure
RestartSec=5
TimeoutStopSec=90

[Install]
WantedBy=default.target
EOF
            manifest file "$UNIT_FILE"
            manifest service "$SERVICE"
        fi
        run systemctl --user daemon-reload
        run systemctl --user enable "$SERVICE"
        run systemctl --user restart "$SERVICE"
    else
        stop_background
        plan "start the daemon in the background: $SUPERVISOR, pid files in $RUN_DIR, log $LOG_DIR/daemon.log"
        if [ "$DRY_RUN" -eq 0 ]; then
            manifest pidfile "$RUN_DIR/supervisor.pid"
            manifest pidfile "$RUN_DIR/daemon.pid"
            manifest file "$LOG_DIR/daemon.log"
            if command -v setsid >/dev/null 2>&1; then
                setsid "$SUPERVISOR" "$PREFIX" </dev/null >/dev/null 2>&1 &
            else
                "$SUPERVISOR" "$PREFIX" </dev/null >/dev/null 2>&1 &
            fi
        fi
    fi
}

wait_registered() {
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would wait until the daemon has registered ($WORK_DIR/identity.json)"
        return 0
    fi
    say "waiting for the daemon to register with $SERVER"
    tries=0
    while [ ! -s "$WORK_DIR/identity.json" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt $((REGISTER_WAIT * 5)) ]; then
            say "the daemon did not register within ${REGISTER_WAIT}s; the end of its log:"
            tail -n 20 "$LOG_DIR/daemon.log" >&2 2>/dev/null || true
            die "the daemon did not register; remove this install with: $PREFIX/cleanup --prefix '$PREFIX'"
        fi
        sleep 0.2
    done
    client="$("$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["client"])' \
        "$WORK_DIR/identity.json" 2>/dev/null | tr -cd 'A-Za-z0-9_.-' || true)"
    say "registered as client ${client:-?}; status: $VENV/bin/dockercomp client status --work-dir '$WORK_DIR'"
}

# -- the plan ----------------------------------------------------------------------------------

[ "$DRY_RUN" -eq 0 ] || say "dry run: nothing is changed"
say "master $SERVER, install directory $PREFIX"
detect_os
ensure_python
check_master
if [ "$DRY_RUN" -eq 0 ]; then
    fetch "$SERVER/cleanup" "$TMP_DIR/cleanup" || die "cannot download the cleanup script; nothing was installed"
    head -n 1 "$TMP_DIR/cleanup" | grep -qx '#!/bin/sh' || die "the master sent no cleanup script; nothing was installed"
fi
ensure_docker
install_client
start_daemon
wait_registered
say "done; to leave: $PREFIX/cleanup --prefix '$PREFIX' (or: dockercomp client uninstall)"
