# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
# Stand-ins for the devstack helpers devstack/plugin.sh uses, so that
# tests/unit/test_devstack.py can source the plugin outside a devstack.
#
# Everything happens under $STUB_ROOT (a temporary directory the test
# makes).  Each stubbed call is appended to $STUB_ROOT/calls.log as one
# line: the function name and its arguments, separated by tabs.
# iniset/iniget really read and write ini files (with awk);
# write_user_unit_file writes a unit as devstack's does (keys set with
# iniset); sudo runs its command (chown is only recorded,
# the users need not exist here); systemctl and openstack are recorded
# (openstack's lists answer from STUB_* variables, see below).
# The variables devstack would define point into $STUB_ROOT, and only
# default: a test may set them first.

: "${STUB_ROOT:?STUB_ROOT must name a scratch directory}"
STUB_CALLS=$STUB_ROOT/calls.log

DEST=${DEST:-$STUB_ROOT/opt/stack}
DATA_DIR=${DATA_DIR:-$DEST/data}
STACK_USER=${STACK_USER:-stack}
SYSTEMD_DIR=${SYSTEMD_DIR:-$STUB_ROOT/etc/systemd/system}
SYSTEMCTL=${SYSTEMCTL:-stub_systemctl}
ENABLED_SERVICES=${ENABLED_SERVICES:-}
ENABLE_DEBUG_LOG_LEVEL=${ENABLE_DEBUG_LOG_LEVEL:-True}
KEYSTONE_SERVICE_URI=${KEYSTONE_SERVICE_URI:-http://10.0.0.5/identity}
SERVICE_PASSWORD=${SERVICE_PASSWORD:-secretservice}
SERVICE_DOMAIN_NAME=${SERVICE_DOMAIN_NAME:-Default}
SERVICE_PROJECT_NAME=${SERVICE_PROJECT_NAME:-service}
REGION_NAME=${REGION_NAME:-RegionOne}
SERVICE_PROTOCOL=${SERVICE_PROTOCOL:-http}
SERVICE_HOST=${SERVICE_HOST:-10.0.0.5}
RABBIT_USERID=${RABBIT_USERID:-stackrabbit}
RABBIT_PASSWORD=${RABBIT_PASSWORD:-secretrabbit}
RABBIT_HOST=${RABBIT_HOST:-10.0.0.5}
STUB_BIN_DIR=${STUB_BIN_DIR:-$DATA_DIR/venv/bin}

function stub_record {
    local IFS=$'\t'
    echo "$*" >>"$STUB_CALLS"
}

function echo_summary {
    echo "summary: $*"
}

function die {
    local line=$1
    shift
    echo "die at line $line: $*" >&2
    exit 1
}

function define_plugin {
    stub_record define_plugin "$@"
}

# devstack's semantics: trueorfalse <default> <variable name>
function trueorfalse {
    local default=$1
    local value=${!2:-}
    case "$value" in
        1 | [yY]es | YES | [tT]rue | TRUE) echo True ;;
        0 | [nN]o | NO | [fF]alse | FALSE) echo False ;;
        *) echo "$default" ;;
    esac
}

# True if any argument is in ENABLED_SERVICES; "nova" stands for any n-*
# service and "key" for keystone, as in devstack.
function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$service,"* ]] && return 0
        [[ $service == nova && ",$ENABLED_SERVICES," == *",n-"* ]] && return 0
    done
    return 1
}

function enable_service {
    local service
    for service in "$@"; do
        is_service_enabled "$service" || ENABLED_SERVICES+=",$service"
    done
}

function is_ubuntu {
    return 0
}

function is_fedora {
    return 1
}

function install_package {
    stub_record install_package "$@"
}

function setup_develop {
    stub_record setup_develop "$@"
}

function get_python_exec_prefix {
    echo "$STUB_BIN_DIR"
}

function sudo {
    stub_record sudo "$@"
    if [[ "$1" == chown ]]; then
        return 0
    fi
    "$@"
}

function stub_systemctl {
    stub_record systemctl "$@"
}

# openstack: recorded; "flavor show" succeeds if STUB_FLAVOR_EXISTS=1;
# the lists print the space-separated names of STUB_SEGMENTS (segment
# list), STUB_SEGMENT_HOSTS (segment host list) and STUB_COMPUTE_HOSTS
# (compute service list), one a line.
function openstack {
    stub_record openstack "$@"
    local words=" $* " names=""
    case "$words" in
        *" flavor show "*)
            [[ "${STUB_FLAVOR_EXISTS:-0}" == 1 ]]
            return ;;
        *" segment host list "*) names=${STUB_SEGMENT_HOSTS:-} ;;
        *" segment list "*) names=${STUB_SEGMENTS:-} ;;
        *" compute service list "*) names=${STUB_COMPUTE_HOSTS:-} ;;
    esac
    local name
    for name in $names; do
        echo "$name"
    done
}

function stop_process {
    stub_record stop_process "$@"
}

function get_or_create_user {
    stub_record get_or_create_user "$@"
    echo "user-id-of-$1"
}

function get_or_add_user_project_role {
    stub_record get_or_add_user_project_role "$@"
}

# devstack's create_service_user <name> [role]
function create_service_user {
    stub_record create_service_user "$@"
    local user
    user=$(get_or_create_user "$1" "$SERVICE_PASSWORD" default)
    get_or_add_user_project_role "${2:-service}" "$user" "$SERVICE_PROJECT_NAME"
}

# devstack's configure_keystone_authtoken_middleware <conf> <user> [section]
function configure_keystone_authtoken_middleware {
    stub_record configure_keystone_authtoken_middleware "$@"
}

# devstack's get_or_create_service <name> <type> <description>
function get_or_create_service {
    stub_record get_or_create_service "$@"
    echo "service-id-of-$1"
}

# devstack's get_or_create_endpoint <service> <region> <public url> ...
function get_or_create_endpoint {
    stub_record get_or_create_endpoint "$@"
    echo "endpoint-id-of-$1"
}

function get_transport_url {
    echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:5672/${1:-}"
}

# iniset_rpc_backend <package> <file> [section] [virtual host]
function iniset_rpc_backend {
    stub_record iniset_rpc_backend "$@"
    iniset "$2" "${3:-DEFAULT}" transport_url "$(get_transport_url "${4:-}")"
}

# iniset [-sudo] <file> <section> <option> <value>, as devstack's: a new
# option goes right under its section's header, a new section at the end.
function iniset {
    [[ "$1" == -sudo ]] && shift
    local file=$1
    mkdir -p "$(dirname "$file")"
    touch "$file"
    INI_S=$2 INI_K=$3 INI_V=$4 awk '
        { line[NR] = $0 }
        END {
            s = ENVIRON["INI_S"]; k = ENVIRON["INI_K"]; v = ENVIRON["INI_V"]
            sec = ""; hdr = 0; found = 0
            for (i = 1; i <= NR; i++) {
                if (line[i] ~ /^\[[^]]*\][ \t]*$/) {
                    sec = line[i]
                    sub(/^\[/, "", sec); sub(/\][ \t]*$/, "", sec)
                    if (sec == s && !hdr) hdr = i
                } else if (sec == s && !found && index(line[i], k) == 1 &&
                           substr(line[i], length(k) + 1) ~ /^[ \t]*=/) {
                    line[i] = k " = " v; found = 1
                }
            }
            for (i = 1; i <= NR; i++) {
                print line[i]
                if (i == hdr && !found) print k " = " v
            }
            if (!hdr) {
                if (NR) print ""
                print "[" s "]"; print k " = " v
            }
        }' "$file" >"$file.stub-tmp"
    mv "$file.stub-tmp" "$file"
}

# iniget <file> <section> <option>: the value, or nothing
function iniget {
    [[ -f "$1" ]] || return 0
    INI_S=$2 INI_K=$3 awk '
        BEGIN { s = ENVIRON["INI_S"]; k = ENVIRON["INI_K"] }
        /^\[[^]]*\][ \t]*$/ {
            sec = $0; sub(/^\[/, "", sec); sub(/\][ \t]*$/, "", sec)
            next
        }
        sec == s && index($0, k) == 1 {
            rest = substr($0, length(k) + 1)
            if (rest ~ /^[ \t]*=/) {
                sub(/^[ \t]*=[ \t]*/, "", rest); print rest; exit
            }
        }' "$1"
}

# write_user_unit_file <unit> <command> <group> <user>, as devstack's
function write_user_unit_file {
    stub_record write_user_unit_file "$@"
    local unitfile="$SYSTEMD_DIR/$1"
    mkdir -p "$SYSTEMD_DIR"
    iniset -sudo "$unitfile" Unit Description "Devstack $1"
    iniset -sudo "$unitfile" Service User "$4"
    iniset -sudo "$unitfile" Service ExecStart "$2"
    iniset -sudo "$unitfile" Service KillMode process
    iniset -sudo "$unitfile" Service TimeoutStopSec 300
    if [[ -n "$3" ]]; then
        iniset -sudo "$unitfile" Service Group "$3"
    fi
    iniset -sudo "$unitfile" Install WantedBy multi-user.target
    $SYSTEMCTL daemon-reload
}
