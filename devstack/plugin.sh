# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
# devstack/plugin.sh: the guestha devstack plugin.
#
# stack.sh sources this file with a mode and a phase ("stack install",
# "stack post-config", "stack extra", "unstack", "clean"); the defaults are
# in devstack/settings and the set-up is described in devstack/README.rst.
#
# Services (enable them in local.conf):
#   guestha-server   the controller: systemd unit devstack@guestha-server
#   guestha-agent    the compute agent: systemd unit devstack@guestha-agent
#   guestha-api      the REST API (a controller node, with guestha-server
#                    or where its database is): devstack@guestha-api, in
#                    Keystone's catalog as service type guestha

_XTRACE_GUESTHA=$(set +o | grep xtrace)
set -o xtrace

# The directory of guestha's console scripts (devstack's global venv, or
# /usr/local/bin without one).
function _guestha_bin_dir {
    get_python_exec_prefix
}

# The fault sinks to enable: GUESTHA_SINKS, or log plus the sinks whose
# service this devstack runs.
function guestha_sinks {
    if [[ -n "$GUESTHA_SINKS" ]]; then
        echo "$GUESTHA_SINKS"
        return
    fi
    local sinks="log"
    if is_service_enabled vitrage vitrage-api vitrage-graph; then
        sinks+=",vitrage"
    fi
    if is_service_enabled masakari masakari-api masakari-engine; then
        sinks+=",masakari"
    fi
    echo "$sinks"
}

# _guestha_iniset_keystone_auth <section>: keystoneauth password options
# of the guestha service user in a client section ([nova], [vitrage],
# [masakari]).
function _guestha_iniset_keystone_auth {
    local section=$1
    iniset "$GUESTHA_CONF" "$section" auth_type password
    iniset "$GUESTHA_CONF" "$section" auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$GUESTHA_CONF" "$section" username "$GUESTHA_SERVICE_USER"
    iniset "$GUESTHA_CONF" "$section" password "$SERVICE_PASSWORD"
    iniset "$GUESTHA_CONF" "$section" user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$GUESTHA_CONF" "$section" project_name "$SERVICE_PROJECT_NAME"
    iniset "$GUESTHA_CONF" "$section" project_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$GUESTHA_CONF" "$section" region_name "$REGION_NAME"
}

# install_guestha: guestha and what libvirt-python builds against.
function install_guestha {
    if is_ubuntu; then
        install_package libvirt-dev pkg-config gcc
    elif is_fedora; then
        install_package libvirt-devel pkgconf-pkg-config gcc
    fi
    setup_develop "$GUESTHA_DIR"
}

# configure_guestha: writes $GUESTHA_CONF from scratch and makes the
# state directory.
function configure_guestha {
    sudo install -d -m 0755 "$GUESTHA_CONF_DIR"
    sudo chown "$STACK_USER" "$GUESTHA_CONF_DIR"
    sudo install -d -m 0755 "$GUESTHA_STATE_DIR"
    sudo chown "$GUESTHA_SERVER_USER" "$GUESTHA_STATE_DIR"
    rm -f "$GUESTHA_CONF"
    touch "$GUESTHA_CONF"

    iniset "$GUESTHA_CONF" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    # [DEFAULT] transport_url: devstack's RabbitMQ
    iniset_rpc_backend guestha "$GUESTHA_CONF" DEFAULT

    iniset "$GUESTHA_CONF" agent state_dir "$GUESTHA_STATE_DIR/agent"
    iniset "$GUESTHA_CONF" agent socket_dir "$GUESTHA_STATE_DIR/channels"
    iniset "$GUESTHA_CONF" agent status_socket "$GUESTHA_STATE_DIR/agent.sock"

    iniset "$GUESTHA_CONF" server ledger_path "$GUESTHA_STATE_DIR/server-ledger.sqlite"
    iniset "$GUESTHA_CONF" actions allowed_max "$GUESTHA_ACTIONS_ALLOWED_MAX"

    local sinks
    sinks=$(guestha_sinks)
    iniset "$GUESTHA_CONF" sinks enabled "$sinks"
    iniset "$GUESTHA_CONF" sinks log_path "$GUESTHA_EVENTS_LOG"

    # Only the controller asks Nova (server groups, reboots): the agent
    # reads the guestha:* extra specs from the domain XML Nova writes, so
    # a compute-only node holds no Nova credentials.
    if is_service_enabled guestha-server; then
        iniset "$GUESTHA_CONF" server notification_topic \
            "$GUESTHA_NOTIFICATION_TOPIC"
        _guestha_iniset_keystone_auth nova
    fi
    if [[ ",$sinks," == *,vitrage,* ]]; then
        _guestha_iniset_keystone_auth vitrage
    fi
    if [[ ",$sinks," == *,masakari,* ]]; then
        _guestha_iniset_keystone_auth masakari
    fi
    # guestha-api checks tokens with keystonemiddleware as the service user
    if is_service_enabled guestha-api; then
        iniset "$GUESTHA_CONF" api auth_strategy keystone
        iniset "$GUESTHA_CONF" api host "$GUESTHA_API_LISTEN_ADDRESS"
        iniset "$GUESTHA_CONF" api port "$GUESTHA_API_PORT"
        configure_keystone_authtoken_middleware "$GUESTHA_CONF" \
            "$GUESTHA_SERVICE_USER"
    fi
}

# create_guestha_accounts: the Keystone user of $GUESTHA_CONF's client
# sections (only where Keystone runs).
function create_guestha_accounts {
    if is_service_enabled key; then
        create_service_user "$GUESTHA_SERVICE_USER" "$GUESTHA_SERVICE_ROLE"
        if is_service_enabled guestha-api; then
            get_or_create_service guestha guestha \
                "guestha: instances monitored from the inside"
            get_or_create_endpoint guestha "$REGION_NAME" "$GUESTHA_API_URL"
        fi
    fi
}

# configure_nova_for_guestha: Nova's versioned notifications on guestha's
# topic, on every node where Nova runs (the instance state changes come
# from nova-compute, so compute-only nodes too).  Nova sends only
# unversioned ones by default, and declares a queue for every topic of
# versioned_notifications_topics: the list keeps what was there (default
# versioned_notifications) and gains guestha's, which its controller
# reads.  On a compute node nova-cpu.conf is a copy of nova.conf made when
# nova-compute starts, after this phase: both are set where they exist.
function configure_nova_for_guestha {
    if [[ "$GUESTHA_NOVA_VERSIONED_NOTIFICATIONS" != "True" ]]; then
        return
    fi
    local conf format topics driver
    for conf in "${NOVA_CONF:-}" "${NOVA_CPU_CONF:-}"; do
        [[ -n "$conf" && -f "$conf" ]] || continue
        format=$(iniget "$conf" notifications notification_format)
        # "both" means something else reads the unversioned ones: keep it
        if [[ "$format" != "both" ]]; then
            iniset "$conf" notifications notification_format versioned
        fi
        # the task state tells a reboot in progress from a finished one
        iniset "$conf" notifications notify_on_state_change vm_and_task_state
        topics=$(iniget "$conf" notifications versioned_notifications_topics)
        topics=${topics:-versioned_notifications}
        if [[ ",$topics," != *,"$GUESTHA_NOTIFICATION_TOPIC",* ]]; then
            iniset "$conf" notifications versioned_notifications_topics \
                "$topics,$GUESTHA_NOTIFICATION_TOPIC"
        fi
        driver=$(iniget "$conf" oslo_messaging_notifications driver)
        if [[ "$driver" != "messagingv2" && "$driver" != "messaging" ]]; then
            iniset "$conf" oslo_messaging_notifications driver messagingv2
        fi
    done
}

# configure_vitrage_for_guestha: loads guestha's datasource plugin in a
# Vitrage of this devstack (enable_plugin guestha after vitrage, so that
# vitrage.conf exists).
function configure_vitrage_for_guestha {
    local conf=${VITRAGE_CONF:-/etc/vitrage/vitrage.conf}
    if [[ ",$(guestha_sinks)," != *,vitrage,* || ! -f "$conf" ]]; then
        return
    fi
    local types path values_dir
    types=$(iniget "$conf" datasources types)
    types=${types:-nova.host,nova.instance,nova.zone,static}
    if [[ ",$types," != *,guestha,* ]]; then
        iniset "$conf" datasources types "$types,guestha"
    fi
    path=$(iniget "$conf" datasources path)
    path=${path:-vitrage.datasources}
    if [[ ",$path," != *,guestha.vitrage_datasource,* ]]; then
        iniset "$conf" datasources path "$path,guestha.vitrage_datasource"
    fi
    values_dir=$(iniget "$conf" entity_graph datasources_values_dir)
    values_dir=${values_dir:-/etc/vitrage/datasources_values}
    sudo install -d -m 0755 "$values_dir"
    sudo install -m 0644 "$GUESTHA_DIR/etc/vitrage/datasources_values/guestha.yaml" \
        "$values_dir/guestha.yaml"
}

# _guestha_write_unit <service> <user> <command> [Section:Key=Value ...]:
# devstack's unit file for a plain daemon, with extra settings, enabled.
function _guestha_write_unit {
    local service=$1 user=$2 command=$3
    shift 3
    local unit="devstack@$service.service"
    write_user_unit_file "$unit" "$command" "" "$user"
    local setting section key
    for setting in "$@"; do
        section=${setting%%:*}
        key=${setting#*:}
        iniset -sudo "$SYSTEMD_DIR/$unit" "$section" "${key%%=*}" "${key#*=}"
    done
    $SYSTEMCTL daemon-reload
    $SYSTEMCTL enable "$unit"
}

# install_guestha_units: the systemd units of the enabled services.
function install_guestha_units {
    local bin_dir
    bin_dir=$(_guestha_bin_dir)
    if is_service_enabled guestha-server; then
        _guestha_write_unit guestha-server "$GUESTHA_SERVER_USER" \
            "$bin_dir/guestha-server --config-file $GUESTHA_CONF" \
            "Service:Restart=on-failure"
    fi
    if is_service_enabled guestha-agent; then
        # one descriptor per monitored channel; after libvirt, monolithic
        # (libvirtd) or modular (virtqemud), whichever the host runs
        _guestha_write_unit guestha-agent "$GUESTHA_AGENT_USER" \
            "$bin_dir/guestha-agent --config-file $GUESTHA_CONF" \
            "Service:Restart=on-failure" "Service:LimitNOFILE=65536" \
            "Unit:After=libvirtd.service virtqemud.service"
    fi
    if is_service_enabled guestha-api; then
        _guestha_write_unit guestha-api "$GUESTHA_SERVER_USER" \
            "$bin_dir/guestha-api --config-file $GUESTHA_CONF" \
            "Service:Restart=on-failure"
    fi
}

function start_guestha {
    local service
    for service in guestha-server guestha-agent guestha-api; do
        if is_service_enabled "$service"; then
            $SYSTEMCTL start "devstack@$service.service"
        fi
    done
}

function stop_guestha {
    stop_process guestha-api
    stop_process guestha-agent
    stop_process guestha-server
}

# create_guestha_flavor: an example flavor with guestha:heartbeat=true
# (where Nova's API runs).  Its extra specs are set at compute API
# microversion 2.86, from which Nova validates them (with guestha's
# validators, guestha/nova_extra_specs.py, where nova-api has them): a typo
# in GUESTHA_FLAVOR_EXTRA_PROPERTIES stops stack.sh, and leaves no flavor
# without its settings behind (which a second run would keep).  Below
# 2.86 Nova takes any value, and "flavor create --property" reports a
# refused property without failing.
function create_guestha_flavor {
    if [[ "$GUESTHA_CREATE_FLAVOR" != "True" ]] || ! is_service_enabled n-api; then
        return
    fi
    local os=(openstack --os-cloud devstack-admin)
    if "${os[@]}" flavor show "$GUESTHA_FLAVOR_NAME" >/dev/null 2>&1; then
        return
    fi
    local properties=(--property guestha:heartbeat=true)
    local property
    for property in $GUESTHA_FLAVOR_EXTRA_PROPERTIES; do
        properties+=(--property "$property")
    done
    "${os[@]}" flavor create --ram "$GUESTHA_FLAVOR_RAM" \
        --disk "$GUESTHA_FLAVOR_DISK" --vcpus "$GUESTHA_FLAVOR_VCPUS" \
        "$GUESTHA_FLAVOR_NAME"
    if ! "${os[@]}" --os-compute-api-version 2.86 flavor set \
            "${properties[@]}" "$GUESTHA_FLAVOR_NAME"; then
        "${os[@]}" flavor delete "$GUESTHA_FLAVOR_NAME"
        die $LINENO "Nova refused the extra specs of flavor" \
            "$GUESTHA_FLAVOR_NAME (${properties[*]})"
    fi
}

# create_guestha_masakari_segment: a Masakari failover segment holding
# every compute host Nova knows (where masakari-api runs, with the
# masakari sink).  Without one masakari-api refuses guestha's
# notifications (HTTP 400).  Idempotent: an existing segment or host is
# left alone.  Masakari checks a host's name against Nova's compute
# services, hence the names nova-compute reports; and a host belongs to
# one segment at most (a second "segment host create" is HTTP 409), so a
# host already in another segment stays there.
function create_guestha_masakari_segment {
    local segment=$GUESTHA_MASAKARI_SEGMENT
    if [[ -z "$segment" || ",$(guestha_sinks)," != *,masakari,* ]] ||
            ! is_service_enabled masakari-api; then
        return
    fi
    local os=(openstack --os-cloud devstack-admin)
    local existing hosts host segments uuid
    # captured, not piped into grep -q: with pipefail an early grep exit
    # could fail the pipeline and create a second segment
    existing=$("${os[@]}" segment list -f value -c name)
    if ! grep -Fxq -- "$segment" <<<"$existing"; then
        "${os[@]}" segment create --description \
            "guestha: compute hosts of this devstack" "$segment" auto COMPUTE
    fi
    hosts=$("${os[@]}" compute service list --service nova-compute \
        -f value -c Host)
    # the hosts of every segment, ours included
    existing=""
    segments=$("${os[@]}" segment list -f value -c uuid)
    for uuid in $segments; do
        existing+=$("${os[@]}" segment host list "$uuid" -f value -c name)
        existing+=$'\n'
    done
    for host in $hosts; do
        if grep -Fxq -- "$host" <<<"$existing"; then
            continue
        fi
        "${os[@]}" segment host create "$host" COMPUTE SSH "$segment"
    done
}

# cleanup_guestha: what stack.sh made, for clean.sh.
function cleanup_guestha {
    local service
    for service in guestha-api guestha-agent guestha-server; do
        sudo rm -f "$SYSTEMD_DIR/devstack@$service.service"
    done
    $SYSTEMCTL daemon-reload
    local dir
    for dir in "${GUESTHA_STATE_DIR:-}" "${GUESTHA_CONF_DIR:-}"; do
        if [[ -n "$dir" && "$dir" != / ]]; then
            sudo rm -rf "$dir"
        fi
    done
}

if is_service_enabled guestha-agent guestha-server guestha-api; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        echo_summary "Installing guestha"
        install_guestha
    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        echo_summary "Configuring guestha"
        configure_guestha
        create_guestha_accounts
        configure_nova_for_guestha
        if is_service_enabled guestha-server; then
            configure_vitrage_for_guestha
        fi
        install_guestha_units
    elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
        echo_summary "Starting guestha"
        start_guestha
        create_guestha_flavor
        create_guestha_masakari_segment
    fi

    if [[ "${1:-}" == "unstack" ]]; then
        stop_guestha
    fi

    if [[ "${1:-}" == "clean" ]]; then
        cleanup_guestha
    fi
fi

$_XTRACE_GUESTHA
