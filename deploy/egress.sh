#!/usr/bin/env bash
# Enforce notebook egress on the single-machine hub with nftables (run as root).
#
# Developers' processes (their system users: the members of the group SANDBOX_EGRESS_GROUP,
# as a supplementary or primary group) may open TCP connections only to the hub's proxy
# and the gate service on this machine (SANDBOX_EGRESS_PORTS, on the loopback interface);
# every other packet they send is rejected: the internet, the LAN, DNS, other ports on this
# machine (the hub API, the proxy API, other users' servers). Their servers still answer
# the proxy and the hub (replies on loopback). Everyone else (root, the gate service's
# user, the hub) is untouched. Everything lives in one table of its own, `inet
# SANDBOX_EGRESS_TABLE`, replaced atomically by `apply` and deleted by `remove`.
#
#   bash deploy/egress.sh apply                  create or refresh the table (idempotent)
#   bash deploy/egress.sh add-developer NAME     add one user now (the hub calls this before
#                                                starting a developer's server; fails when
#                                                the rules are not applied)
#   bash deploy/egress.sh status                 show the rules (exit 3 when not applied)
#   bash deploy/egress.sh remove                 delete the table
#
#   SANDBOX_EGRESS_TABLE   nftables table (family inet), default sandbox_egress
#   SANDBOX_EGRESS_GROUP   Unix group of the developers, default sandbox-devs (made by apply)
#   SANDBOX_EGRESS_PORTS   loopback TCP ports they may reach, default
#                          "$SANDBOX_HUB_PORT,$SANDBOX_SERVICE_PORT" (8000,10101)
set -euo pipefail

TABLE="${SANDBOX_EGRESS_TABLE:-sandbox_egress}"
GROUP="${SANDBOX_EGRESS_GROUP:-sandbox-devs}"
PORTS="${SANDBOX_EGRESS_PORTS:-${SANDBOX_HUB_PORT:-8000},${SANDBOX_SERVICE_PORT:-10101}}"

die() {
    echo "error: $1" >&2
    if [ -n "${2:-}" ]; then echo "hint: $2" >&2; fi
    exit "${3:-1}"
}

usage() {
    echo "usage: bash deploy/egress.sh apply|remove|status|add-developer NAME" >&2
    exit 2
}

check_settings() {
    [[ "$TABLE" =~ ^[A-Za-z][A-Za-z0-9_]{0,30}$ ]] ||
        die "SANDBOX_EGRESS_TABLE=$TABLE is not a table name" "use letters, digits and _"
    [[ "$GROUP" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] ||
        die "SANDBOX_EGRESS_GROUP=$GROUP is not a group name" "use lower-case letters, digits, - and _"
    local p
    for p in ${PORTS//,/ }; do
        [[ "$p" =~ ^[0-9]{1,5}$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] ||
            die "SANDBOX_EGRESS_PORTS=$PORTS has an invalid port '$p'" \
                "give TCP port numbers separated by commas, e.g. 8000,10101"
    done
    [ -n "${PORTS//,/}" ] || die "SANDBOX_EGRESS_PORTS is empty" "name the proxy's and the gate's ports"
}

check_nft() {
    [ "$(id -u)" = 0 ] || die "egress rules can only be changed by root" "run it with sudo"
    command -v nft >/dev/null 2>&1 ||
        die "nft is not installed" "apt-get install nftables (deploy/install-hub.sh does it)"
    nft list tables >/dev/null 2>&1 ||
        die "nftables does not work in this kernel (nft list tables failed)" \
            "run on a kernel with nf_tables, or start the demo with DEMO_EGRESS=0 (no egress rules)"
}

applied() { nft list table inet "$TABLE" >/dev/null 2>&1; }

# The UIDs of the group's members: supplementary members and users whose primary group it is.
developer_uids() {
    local entry gid names name
    entry="$(getent group "$GROUP")" || return 0
    gid="$(cut -d: -f3 <<<"$entry")"
    names="$(cut -d: -f4 <<<"$entry" | tr ',' '\n'
             getent passwd | awk -F: -v g="$gid" '$4 == g {print $1}')"
    for name in $names; do
        id -u "$name" 2>/dev/null || echo "warning: no user $name (member of $GROUP)" >&2
    done | sort -nu
}

apply() {
    getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
    local gid uids elements=""
    gid="$(getent group "$GROUP" | cut -d: -f3)"
    uids="$(developer_uids | paste -sd, -)"
    if [ -n "$uids" ]; then elements="elements = { ${uids//,/, } }"; fi
    # `table` then `delete table` then the new table, in one transaction: an atomic replace.
    nft -f - <<NFT
table inet $TABLE
delete table inet $TABLE
table inet $TABLE {
    set developers {
        type uid
        $elements
    }
    chain output {
        type filter hook output priority filter; policy accept;
        meta skuid @developers jump developer
        meta skgid $gid jump developer
    }
    chain developer {
        oif "lo" ct state established,related accept
        oif "lo" tcp dport { ${PORTS//,/, } } accept
        counter reject with icmpx admin-prohibited
    }
}
NFT
    echo "egress: developers (group $GROUP: ${uids:-no members yet}) may reach only" \
         "TCP ports ${PORTS} on this machine (nftables table inet $TABLE)"
}

add_developer() {
    local name="$1" uid
    uid="$(id -u "$name" 2>/dev/null)" || die "no system user $name" "create it first (useradd)"
    [ "$uid" != 0 ] || die "root cannot be a developer" "name the developer's own user"
    applied || die "the egress rules are not applied (no table inet $TABLE)" \
        "run: bash deploy/egress.sh apply"
    getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
    id -nG "$name" | tr ' ' '\n' | grep -qx "$GROUP" || usermod -aG "$GROUP" "$name"
    nft add element inet "$TABLE" developers "{ $uid }"
    echo "egress: $name (uid $uid) restricted"
}

status() {
    if ! applied; then
        echo "egress: not applied (no nftables table inet $TABLE)"
        exit 3
    fi
    echo "egress: applied (nftables table inet $TABLE, group $GROUP)"
    nft list table inet "$TABLE"
}

remove() {
    if applied; then
        nft delete table inet "$TABLE"
        echo "egress: removed (table inet $TABLE)"
    else
        echo "egress: nothing to remove (no table inet $TABLE)"
    fi
}

[ $# -ge 1 ] || usage
check_settings
case "$1" in
    apply) [ $# = 1 ] || usage; check_nft; apply ;;
    remove) [ $# = 1 ] || usage; check_nft; remove ;;
    status) [ $# = 1 ] || usage; check_nft; status ;;
    add-developer) [ $# = 2 ] || usage; check_nft; add_developer "$2" ;;
    *) usage ;;
esac
