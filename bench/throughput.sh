#!/usr/bin/env bash
#
# bench/throughput.sh: lab throughput harness for meshgate.
#
# WHAT IT MEASURES
#   How fast one TCP flow (iperf3, -P 1) gets from one VPC host to another
#   through two gateways. It runs the same topology three ways in one go:
#
#     hostA 10.1.1.10/24 --veth-- gwA 10.1.1.1/24
#                                 gwA 198.18.0.1/24 --veth (underlay)-- gwB 198.18.0.2/24
#                                                                       gwB 10.2.1.1/24 --veth-- hostB 10.2.1.10/24
#
#     plain       the gateways only route (ip_forward) over the underlay veth,
#                 with no encryption. This is the ceiling.
#     strongswan  charon with the kernel-libipsec plugin in each gateway netns:
#                 IKEv2 PSK, ESP tunnel mode, aes128gcm16, encap=yes (ESP in
#                 UDP/4500), ipsec0 TUN device, routes in table 220. This is
#                 the userspace-ESP baseline (same design as meshgate).
#     meshgate    `$MESHGATE run --config FILE` in each gateway netns, with a
#                 config and fresh random keys written by this script (ESP in
#                 UDP/4500 over TUN "mg0", aes128gcm16, static SAs).
#
#   For each mode it reports the receiver-side throughput
#   (end.sum_received.bits_per_second) and the sender's TCP retransmits, then
#   prints the ratios meshgate/strongswan and meshgate/plain. The topology is
#   torn down and rebuilt between modes so nothing carries over from one mode
#   to the next. In every mode the gateways clamp the TCP MSS to the path MTU
#   (iptables TCPMSS --clamp-mss-to-pmtu). That makes no difference in plain
#   mode, and in the tunnel modes it spares the flow from starting with PMTU
#   discovery.
#
# HOW TO RUN (as root; from the repository root, or give MESHGATE as an absolute path)
#   sudo bench/throughput.sh
#   sudo DURATION=5 MODES="plain strongswan" bench/throughput.sh
#   sudo MESHGATE=/path/to/meshgate bench/throughput.sh
#
# ENVIRONMENT
#   DURATION   iperf3 test length in seconds (default 10)
#   MODES      a subset of "plain strongswan meshgate", run in the order
#              given (default: all three)
#   MESHGATE   path to the meshgate binary (default target/release/meshgate;
#              a relative path is taken from the repository root)
#   SMALL_SECS seconds of the small-packet test per mode (default 5; 0 = skip):
#              one UDP flow of 64-byte IP packets at full speed, reported as
#              packets per second received by hostB
#   KEEP_LOGS  1 = keep the work directory (configs, daemon logs, iperf3 JSON)
#              even when the run succeeds. It is always kept on failure.
#
# OUTPUT
#   A header (date, CPU model, nproc, kernel, load average), one line per mode
#   as it finishes, then a table and machine-readable lines:
#     RESULT mode=<m> gbps=<x> bits_per_second=<n> retransmits=<n> duration_s=<n>
#     RATIO meshgate_over_strongswan=<x> meshgate_over_plain=<x>
#
# NOTES
#   * The machine has 2 cores. iperf3 and both gateways share them, so the
#     numbers depend on what else is running. Look at the load average in the
#     header and compare modes only within one run.
#   * The kernel has no ESP/GCM (no XFRM crypto). That is why the strongSwan
#     baseline uses kernel-libipsec (userspace ESP) and not XFRM.
#   * Every name is prefixed with mgb-<pid>- so parallel runs don't collide.
#     On exit (including failure, Ctrl-C and TERM) a trap kills the daemons
#     this script started and deletes its namespaces.

set -euo pipefail

DURATION="${DURATION:-10}"
MODES="${MODES:-plain strongswan meshgate}"
MESHGATE="${MESHGATE:-target/release/meshgate}"
KEEP_LOGS="${KEEP_LOGS:-0}"
SMALL_SECS="${SMALL_SECS:-5}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

PFX="mgb-$$-"
NS_HA="${PFX}hostA"
NS_GA="${PFX}gwA"
NS_GB="${PFX}gwB"
NS_HB="${PFX}hostB"
ALL_NS=("$NS_HA" "$NS_GA" "$NS_GB" "$NS_HB")

CHARON=/usr/lib/ipsec/charon
LIBIPSEC_PLUGIN=/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so

WORK=""          # per-run work directory (set in main)
PIDS=()          # daemons started by this script (killed by pid on teardown)
MADE_NS=()       # namespaces created by this script
FAILED=1         # cleared at the very end of a successful run

# fds 3 and 4 keep the script's own stdout and stderr. A trap can run while a
# command's redirections are in effect (e.g. the iperf3 client's >JSON), so
# messages go to these and not to whatever fds 1 and 2 point at just then.
# Background daemons are started with 3>&- 4>&- so they don't hold them open
# (not foreground commands: a trap runs with their redirections in effect).
exec 3>&1 4>&2
log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&4; }
die()  { printf '\nERROR: %s\n' "$*" >&4; exit 1; }
nsx()  { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# ---------------------------------------------------------------- cleanup ---

kill_pids() {  # TERM the given pids, give them up to 3 s together, then KILL
    local pid i alive
    (( $# )) || return 0
    kill -TERM "$@" 2>/dev/null || true
    for i in $(seq 1 30); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

teardown() {
    # Kill what we started, by pid. Then kill anything still inside our own,
    # uniquely named namespaces (e.g. children of a daemon), also by pid, and
    # then delete the namespaces.
    set +e
    local ns
    local -a left=()
    kill_pids "${PIDS[@]}"
    PIDS=()
    for ns in "${MADE_NS[@]}"; do
        left+=($(ip netns pids "$ns" 2>/dev/null))
    done
    kill_pids "${left[@]}"
    for ns in "${MADE_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    MADE_NS=()
    set -e
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    teardown
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$FAILED" == 1 || "$KEEP_LOGS" == 1 ]]; then
            printf 'work directory (configs, logs) kept: %s\n' "$WORK" >&4
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$rc"
}

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# --------------------------------------------------------------- prechecks ---

[[ "$(id -u)" == 0 ]] || die "must run as root (sudo $0)"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || die "DURATION must be a positive integer (got '$DURATION')"
[[ "$SMALL_SECS" =~ ^[0-9]+$ ]] || die "SMALL_SECS must be a whole number of seconds (got '$SMALL_SECS')"

seen=" "
for m in $MODES; do
    case "$m" in plain|strongswan|meshgate) ;; *) die "unknown mode '$m' in MODES (allowed: plain strongswan meshgate)";; esac
    [[ "$seen" != *" $m "* ]] || die "mode '$m' given twice in MODES"
    seen+="$m "
done
[[ -n "${MODES// /}" ]] || die "MODES is empty"
want() { [[ " $MODES " == *" $1 "* ]]; }

need() { command -v "$1" >/dev/null 2>&1 || die "required tool '$1' not found (install: $2)"; }
need ip       iproute2
need ss       iproute2
need iperf3   iperf3
need awk      gawk/mawk
need unshare  util-linux
need mount    util-linux
need timeout  coreutils
need iptables iptables
command -v jq >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 \
    || die "need jq or python3 to parse the iperf3 JSON"
command -v xxd >/dev/null 2>&1 || command -v od >/dev/null 2>&1 \
    || die "need xxd or od to generate keys"
[[ -c /dev/net/tun ]] || die "/dev/net/tun missing (the TUN driver is needed by strongswan and meshgate modes)"

if want strongswan; then
    need swanctl strongswan-swanctl
    [[ -x "$CHARON" ]] || die "$CHARON not found (install strongswan-charon)"
    [[ -f "$LIBIPSEC_PLUGIN" ]] || die "kernel-libipsec plugin missing (install libcharon-extra-plugins)"
fi
if want meshgate; then
    [[ "$MESHGATE" == /* ]] || MESHGATE="$REPO_ROOT/$MESHGATE"
    [[ -x "$MESHGATE" ]] || die "meshgate binary '$MESHGATE' not found or not executable; build it (cargo build --release) or set MESHGATE=..., or leave meshgate out of MODES"
fi

# ------------------------------------------------------------------ helpers ---

hexkey() {  # $1 = bytes; prints lowercase hex, no trailing newline
    if command -v xxd >/dev/null 2>&1; then
        head -c "$1" /dev/urandom | xxd -p -c 256 | tr -d '\n'
    else
        od -An -v -tx1 -N "$1" /dev/urandom | tr -d ' \n'
    fi
}

json_get() {  # $1 = file, $2 = jq path (.a.b.c); prints value or empty
    if command -v jq >/dev/null 2>&1; then
        jq -r "$2 // empty" "$1" 2>/dev/null
    else
        python3 - "$1" "$2" <<'EOF' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].strip('.').split('.'):
    d = d.get(k) if isinstance(d, dict) else None
print('' if d is None else d)
EOF
    fi
}

wait_for() {  # $1 = timeout (s), $2 = description, rest = command; polls every 0.2 s
    local t="$1" what="$2"; shift 2
    local deadline=$(( $(date +%s) + t ))
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.2
    done
}

# Reachability probe hostA -> hostB: ICMP ping when `ping` is installed,
# otherwise a TCP connect to the iperf3 server on hostB (bash /dev/tcp; the
# iperf3 server logs "unable to receive parameters" and keeps listening).
if command -v ping >/dev/null 2>&1; then
    PROBE="ping"
else
    PROBE="tcp-connect 10.2.1.10:5201 (no ping installed)"
fi
ping_through() {
    if command -v ping >/dev/null 2>&1; then
        nsx "$NS_HA" ping -c 1 -W 1 -q 10.2.1.10
    else
        nsx "$NS_HA" timeout 2 bash -c 'exec 3<>/dev/tcp/10.2.1.10/5201 && exec 3>&-'
    fi
}

check_ping() {  # $1 = timeout (s)
    local i
    wait_for "$1" "probe" ping_through \
        || die "hostA cannot reach hostB (10.2.1.10) through the gateways after ${1}s (probe: $PROBE)"
    # the next three must pass too
    for i in 1 2 3; do
        ping_through >/dev/null 2>&1 \
            || die "hostA -> hostB unstable: first probe passed, a later one failed (probe: $PROBE)"
    done
}

# ----------------------------------------------------------------- topology ---

build_topology() {
    local ns
    for ns in "${ALL_NS[@]}"; do
        ip netns add "$ns" || die "cannot create network namespace $ns"
        MADE_NS+=("$ns")
        nsx "$ns" ip link set lo up
    done

    # veth pairs created straight inside the namespaces: no names in the root
    # namespace, so parallel runs can't collide.
    ip link add eth0 netns "$NS_HA" type veth peer name vpc0 netns "$NS_GA"
    ip link add ul0  netns "$NS_GA" type veth peer name ul0  netns "$NS_GB"
    ip link add vpc0 netns "$NS_GB" type veth peer name eth0 netns "$NS_HB"

    nsx "$NS_HA" ip addr add 10.1.1.10/24 dev eth0
    nsx "$NS_GA" ip addr add 10.1.1.1/24 dev vpc0
    nsx "$NS_GA" ip addr add 198.18.0.1/24 dev ul0
    nsx "$NS_GB" ip addr add 198.18.0.2/24 dev ul0
    nsx "$NS_GB" ip addr add 10.2.1.1/24 dev vpc0
    nsx "$NS_HB" ip addr add 10.2.1.10/24 dev eth0

    nsx "$NS_HA" ip link set eth0 up
    nsx "$NS_GA" ip link set vpc0 up
    nsx "$NS_GA" ip link set ul0 up
    nsx "$NS_GB" ip link set ul0 up
    nsx "$NS_GB" ip link set vpc0 up
    nsx "$NS_HB" ip link set eth0 up

    nsx "$NS_HA" ip route add default via 10.1.1.1
    nsx "$NS_HB" ip route add default via 10.2.1.1

    for ns in "$NS_GA" "$NS_GB"; do
        nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
        nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0
        nsx "$ns" sysctl -qw net.ipv4.conf.default.rp_filter=0
        # Same MSS clamping in every mode (a no-op when the path MTU is 1500).
        nsx "$ns" iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN \
            -j TCPMSS --clamp-mss-to-pmtu \
            || log "warning: MSS clamping not available in $ns (iptables TCPMSS); continuing without"
    done
}

# -------------------------------------------------------------------- iperf3 ---

start_iperf_server() {  # in hostB; started before the mode so the TCP probe has a target
    nsx "$NS_HB" iperf3 -s -B 10.2.1.10 >>"$WORK/iperf3-server.log" 2>&1 3>&- 4>&- &
    PIDS+=($!)
    wait_for 10 "iperf3 server" \
        bash -c "ip netns exec '$NS_HB' ss -Hltn 'sport = :5201' | grep -q ." \
        || die "iperf3 server in $NS_HB did not start listening on 5201 (see $WORK/iperf3-server.log)"
}

# run_iperf MODE -> sets GBPS, BPS, RETR; appends to results
declare -A R_GBPS R_RETR R_BPS
run_iperf() {
    local mode="$1" json="$WORK/iperf3-$1.json" bps retr cpid
    log "$mode: iperf3 -c 10.2.1.10 -t $DURATION -P 1"
    # In the background plus `wait`, so that INT/TERM run the trap at once
    # (bash defers traps until a foreground command ends).
    nsx "$NS_HA" timeout $(( DURATION + 30 )) \
        iperf3 -c 10.2.1.10 -t "$DURATION" -P 1 -J --connect-timeout 5000 \
        >"$json" 2>"$WORK/iperf3-$mode.err" 3>&- 4>&- &
    cpid=$!
    PIDS+=("$cpid")
    if ! wait "$cpid"; then
        die "$mode: iperf3 client failed: $(json_get "$json" .error) $(tail -n 3 "$WORK/iperf3-$mode.err" 2>/dev/null)"
    fi
    bps="$(json_get "$json" .end.sum_received.bits_per_second)"
    retr="$(json_get "$json" .end.sum_sent.retransmits)"
    [[ -n "$bps" ]] || die "$mode: no end.sum_received.bits_per_second in $json"
    R_BPS[$mode]="$bps"
    R_GBPS[$mode]="$(awk -v b="$bps" 'BEGIN { printf "%.3f", b / 1e9 }')"
    R_RETR[$mode]="${retr:-NA}"
    log "$mode: ${R_GBPS[$mode]} Gbit/s, ${R_RETR[$mode]} retransmits"
    printf 'RESULT mode=%s gbps=%s bits_per_second=%.0f retransmits=%s duration_s=%s\n' \
        "$mode" "${R_GBPS[$mode]}" "$bps" "${R_RETR[$mode]}" "$DURATION"
}

# run_small_udp MODE -> small-packet forwarding rate: one UDP flow of 64-byte
# IP packets (36-byte payload) at full speed, as received by hostB.
declare -A R_KPPS
run_small_udp() {
    local mode="$1" json="$WORK/iperf3-$1-udp64.json" pkts lost secs cpid
    log "$mode: iperf3 -u -b 0 -l 36 -t $SMALL_SECS (64-byte packets)"
    nsx "$NS_HA" timeout $(( SMALL_SECS + 30 )) \
        iperf3 -c 10.2.1.10 -u -b 0 -l 36 -t "$SMALL_SECS" -J --connect-timeout 5000 \
        >"$json" 2>"$WORK/iperf3-$mode-udp64.err" 3>&- 4>&- &
    cpid=$!
    PIDS+=("$cpid")
    if ! wait "$cpid"; then
        die "$mode: iperf3 UDP client failed: $(json_get "$json" .error) $(tail -n 3 "$WORK/iperf3-$mode-udp64.err" 2>/dev/null)"
    fi
    pkts="$(json_get "$json" .end.sum.packets)"
    lost="$(json_get "$json" .end.sum.lost_packets)"
    secs="$(json_get "$json" .end.sum.seconds)"
    [[ -n "$pkts" && -n "$lost" && -n "$secs" ]] || die "$mode: no UDP packet counts in $json"
    R_KPPS[$mode]="$(awk -v p="$pkts" -v l="$lost" -v s="$secs" 'BEGIN { printf "%.0f", (p - l) / s / 1e3 }')"
    log "$mode: 64-byte packets received: ${R_KPPS[$mode]} kpps (sent $pkts, lost $lost)"
    printf 'RESULT_UDP64 mode=%s kpps_received=%s sent=%s lost=%s seconds=%s\n' "$mode" "${R_KPPS[$mode]}" "$pkts" "$lost" "$secs"
}

# --------------------------------------------------------------------- plain ---

setup_plain() {
    nsx "$NS_GA" ip route add 10.2.0.0/16 via 198.18.0.2 dev ul0
    nsx "$NS_GB" ip route add 10.1.0.0/16 via 198.18.0.1 dev ul0
    check_ping 5
}

# ---------------------------------------------------------------- strongswan ---

# $1 = gw dir, $2 = local addr, $3 = remote addr, $4 = local id, $5 = remote id,
# $6 = local ts, $7 = remote ts, $8 = psk
write_strongswan_conf() {
    local d="$1"
    mkdir -p "$d/run"
    cat >"$d/strongswan.conf" <<EOF
# written by bench/throughput.sh
charon {
    # kernel-libipsec must come before kernel-netlink: the first IPsec
    # backend registered wins, and the kernel has no ESP (XFRM states fail).
    load = random nonce openssl pem pkcs1 x509 revocation constraints pubkey aes gcm sha1 sha2 hmac kdf kernel-libipsec kernel-netlink socket-default vici updown
    port = 500
    port_nat_t = 4500
    install_routes = yes
    routing_table = 220
    routing_table_prio = 220
    plugins {
        vici {
            socket = unix://$d/charon.vici
        }
    }
    filelog {
        charon {
            path = $d/charon.log
            time_format = %H:%M:%S
            default = 1
            ike = 1
            knl = 1
            append = no
            flush_line = yes
        }
        stderr {
            default = 0
        }
    }
    syslog {
        daemon {
            default = -1
        }
    }
}
swanctl {
    load = pem pkcs1 x509 revocation constraints pubkey openssl random
}
EOF
    cat >"$d/swanctl.conf" <<EOF
# written by bench/throughput.sh
connections {
    mgb {
        version = 2
        local_addrs = $2
        remote_addrs = $3
        encap = yes
        proposals = aes128gcm16-prfsha256-ecp256, aes128-sha256-modp2048
        dpd_delay = 0
        local {
            auth = psk
            id = $4
        }
        remote {
            auth = psk
            id = $5
        }
        children {
            net {
                mode = tunnel
                local_ts = $6
                remote_ts = $7
                esp_proposals = aes128gcm16
                start_action = none
                dpd_action = none
            }
        }
    }
}
secrets {
    ike-mgb {
        id-a = gw-a
        id-b = gw-b
        secret = "$8"
    }
}
EOF
    chmod 600 "$d/swanctl.conf"
}

start_charon() {  # $1 = ns, $2 = gw dir
    local ns="$1" d="$2"
    nsx "$ns" unshare -m --propagation private \
        sh -c "mount --bind '$d/run' /run && STRONGSWAN_CONF='$d/strongswan.conf' exec '$CHARON'" \
        >"$d/charon.stdout" 2>&1 3>&- 4>&- &
    PIDS+=($!)
}

swan() {  # $1 = gw dir, $2 = swanctl command (--stats, ...), rest = its options
    local d="$1" cmd="$2"; shift 2
    # swanctl only takes --uri after the command
    STRONGSWAN_CONF="$d/strongswan.conf" swanctl "$cmd" --uri "unix://$d/charon.vici" "$@"
}

child_installed() {  # $1 = gw dir
    swan "$1" --list-sas --ike mgb 2>/dev/null | grep -q 'INSTALLED'
}

setup_strongswan() {
    local da="$WORK/swan-gwA" db="$WORK/swan-gwB" psk d
    psk="$(hexkey 32)"
    write_strongswan_conf "$da" 198.18.0.1 198.18.0.2 gw-a gw-b 10.1.0.0/16 10.2.0.0/16 "$psk"
    write_strongswan_conf "$db" 198.18.0.2 198.18.0.1 gw-b gw-a 10.2.0.0/16 10.1.0.0/16 "$psk"

    start_charon "$NS_GA" "$da"
    start_charon "$NS_GB" "$db"
    for d in "$da" "$db"; do
        wait_for 15 "vici" swan "$d" --stats \
            || die "strongswan: charon did not come up (no vici socket $d/charon.vici); see $d/charon.log and $d/charon.stdout: $(tail -n 5 "$d/charon.stdout" "$d/charon.log" 2>/dev/null)"
        swan "$d" --load-all --noprompt --file "$d/swanctl.conf" >"$d/load.log" 2>&1 \
            || die "strongswan: swanctl --load-all failed for $d: $(cat "$d/load.log")"
    done

    log "strongswan: initiating CHILD_SA from gwA"
    swan "$da" --initiate --child net --timeout 20 >"$da/initiate.log" 2>&1 \
        || die "strongswan: initiate failed: $(tail -n 10 "$da/initiate.log"); see $da/charon.log"
    for d in "$da" "$db"; do
        wait_for 20 "child sa" child_installed "$d" \
            || die "strongswan: CHILD_SA not INSTALLED in $d after 20s; see $d/charon.log"
    done
    # libipsec's TUN device and its routes in table 220
    for ns in "$NS_GA" "$NS_GB"; do
        nsx "$ns" ip link show ipsec0 >/dev/null 2>&1 \
            || die "strongswan: no ipsec0 TUN device in $ns (kernel-libipsec not active?)"
        nsx "$ns" ip route show table 220 | grep -q 'dev ipsec0' \
            || die "strongswan: no route via ipsec0 in table 220 in $ns: $(nsx "$ns" ip route show table 220)"
    done
    log "strongswan: CHILD_SA up; gwA table 220: $(nsx "$NS_GA" ip route show table 220 | tr '\n' ';')"
    check_ping 15
}

after_strongswan() {  # record the SA counters: evidence the flow went through ESP
    local d
    for d in "$WORK/swan-gwA" "$WORK/swan-gwB"; do
        swan "$d" --list-sas >"$d/sas-after.txt" 2>&1 || true
    done
    log "strongswan: gwA CHILD_SA after the test: $(grep -Eo '(in|out) +[0-9a-f]{8}.*bytes, [0-9]+ packets' "$WORK/swan-gwA/sas-after.txt" | tr -s ' ' | tr '\n' ';')"
}

# ------------------------------------------------------------------ meshgate ---

# $1 = file, $2 = id, $3 = listen, $4 = peer id, $5 = peer endpoint, $6 = peer
# prefix, $7 = out spi, $8 = out key file, $9 = in spi, $10 = in key file
write_meshgate_conf() {
    cat >"$1" <<EOF
# written by bench/throughput.sh
[gateway]
id = "$2"
listen = "$3"
admin = "127.0.0.1:9100"
state_dir = "$(dirname "$1")"

[tun]
name = "mg0"
mtu = 1400

[sa]
cipher = "aes128gcm16"

[[peers]]
id = "$4"
endpoint = "$5"
prefixes = ["$6"]
outbound = { spi = $7, key_file = "$8" }
inbound  = { spi = $9, key_file = "${10}" }
EOF
}

meshgate_ready() {  # $1 = ns
    if command -v curl >/dev/null 2>&1; then
        nsx "$1" curl -sf --max-time 1 http://127.0.0.1:9100/metrics
    else
        ping_through
    fi
}

setup_meshgate() {
    local d="$WORK/meshgate" ns pid i dst deadline rc
    local -A MG_PID=()
    mkdir -p "$d"
    # key (16 bytes) + salt (4 bytes) = 40 hex chars for aes128gcm16
    hexkey 20 >"$d/a-to-b.key"
    hexkey 20 >"$d/b-to-a.key"
    chmod 600 "$d"/*.key
    write_meshgate_conf "$d/gwA.toml" gw-a 198.18.0.1:4500 gw-b 198.18.0.2:4500 10.2.0.0/16 \
        0x00001001 "$d/a-to-b.key" 0x00002001 "$d/b-to-a.key"
    write_meshgate_conf "$d/gwB.toml" gw-b 198.18.0.2:4500 gw-a 198.18.0.1:4500 10.1.0.0/16 \
        0x00002001 "$d/b-to-a.key" 0x00001001 "$d/a-to-b.key"

    for i in A B; do
        ns="${PFX}gw$i"
        nsx "$ns" "$MESHGATE" run --config "$d/gw$i.toml" >"$d/gw$i.log" 2>&1 3>&- 4>&- &
        MG_PID[$i]=$!
        PIDS+=($!)
    done
    # readiness: both admin listeners answer /metrics (a daemon that exits is
    # reported at once, with its exit status and log)
    for i in A B; do
        ns="${PFX}gw$i"
        pid="${MG_PID[$i]}"
        deadline=$(( $(date +%s) + 20 ))
        until meshgate_ready "$ns" >/dev/null 2>&1; do
            if ! kill -0 "$pid" 2>/dev/null; then
                rc=0; wait "$pid" || rc=$?
                die "meshgate in gw$i exited during startup (status $rc): $MESHGATE run --config $d/gw$i.toml; last log lines:
$(tail -n 20 "$d/gw$i.log")"
            fi
            (( $(date +%s) < deadline )) \
                || die "meshgate in gw$i not ready after 20s (http://127.0.0.1:9100/metrics in $ns did not answer); see $d/gw$i.log"
            sleep 0.2
        done
    done
    for i in A B; do
        ns="${PFX}gw$i"
        [[ $i == A ]] && dst=10.2.1.10 || dst=10.1.1.10
        nsx "$ns" ip route get "$dst" 2>/dev/null | grep -q 'dev mg0' \
            || log "warning: in gw$i the route to $dst does not go into mg0: $(nsx "$ns" ip route get "$dst" 2>&1 | head -n1)"
    done
    log "meshgate: both gateways ready; gwA routes into mg0: $(nsx "$NS_GA" ip -4 route show table all dev mg0 2>/dev/null | tr '\n' ';')"
    check_ping 15
}

after_meshgate() {  # keep a /metrics snapshot per gateway (in the work directory)
    local i
    if command -v curl >/dev/null 2>&1; then
        for i in A B; do
            nsx "${PFX}gw$i" curl -s --max-time 2 http://127.0.0.1:9100/metrics \
                >"$WORK/meshgate/gw$i.metrics" 2>&1 || true
        done
        log "meshgate: gwA SA counters after the test: $(grep -E '^meshgate_sa_(bytes|packets)_total' "$WORK/meshgate/gwA.metrics" | tr '\n' ';')"
    fi
}

# ---------------------------------------------------------------------- main ---

WORK="$(mktemp -d "/tmp/${PFX}XXXXXX")"
chmod 700 "$WORK"

cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)"
cpu_flags="none "
for f in aes vaes vpclmulqdq avx2 avx512f; do
    grep -qw "$f" /proc/cpuinfo 2>/dev/null && cpu_flags="${cpu_flags#none }$f "
done
echo "# meshgate throughput harness"
echo "# date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# commit:   $(git -C "$(dirname "$0")/.." describe --always --dirty 2>/dev/null || echo unknown)"
echo "# host:     $(uname -n), kernel $(uname -r)"
echo "# cpu:      ${cpu_model:-unknown} (flags: ${cpu_flags% }), nproc=$(nproc)"
echo "# load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
echo "# iperf3:   $(iperf3 --version 2>/dev/null | head -n1); reachability probe: $PROBE"
want strongswan && echo "# charon:   $(dpkg-query -W -f='strongswan-charon ${Version}' strongswan-charon 2>/dev/null || echo unknown)"
want meshgate   && echo "# meshgate: $MESHGATE (sha256 $(sha256sum "$MESHGATE" 2>/dev/null | cut -c1-16), modified $(date -r "$MESHGATE" -Is 2>/dev/null))"
echo "# test:     1 TCP flow, iperf3 -t $DURATION -P 1, hostA 10.1.1.10 -> hostB 10.2.1.10; modes: $MODES"
echo

for mode in $MODES; do
    log "=== $mode: building topology (${PFX}*)"
    build_topology
    start_iperf_server
    "setup_$mode"
    run_iperf "$mode"
    if (( SMALL_SECS > 0 )); then run_small_udp "$mode"; fi
    if declare -F "after_$mode" >/dev/null; then "after_$mode"; fi
    log "=== $mode: tearing down"
    teardown
done

ratio() {  # $1 = numerator mode, $2 = denominator mode
    if [[ -n "${R_BPS[$1]:-}" && -n "${R_BPS[$2]:-}" ]]; then
        awk -v a="${R_BPS[$1]}" -v b="${R_BPS[$2]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "NA" }'
    else
        echo NA
    fi
}

echo
printf '%-12s %10s %12s\n' mode Gbit/s retransmits
printf '%-12s %10s %12s\n' ------------ ---------- ------------
for mode in $MODES; do
    printf '%-12s %10s %12s\n' "$mode" "${R_GBPS[$mode]}" "${R_RETR[$mode]}"
done
echo
r_ms="$(ratio meshgate strongswan)"
r_mp="$(ratio meshgate plain)"
printf 'meshgate/strongswan: %s\n' "$r_ms"
printf 'meshgate/plain:      %s\n' "$r_mp"
printf 'RATIO meshgate_over_strongswan=%s meshgate_over_plain=%s\n' "$r_ms" "$r_mp"
if (( SMALL_SECS > 0 )); then
    echo
    printf '%-12s %14s\n' mode "64B kpps rx"
    for mode in $MODES; do printf '%-12s %14s\n' "$mode" "${R_KPPS[$mode]:-NA}"; done
fi

# The target this harness measures: meshgate at least 10x strongSwan's
# userspace ESP in the same run. Reported, and the exit status says it.
TARGET_MET=1
if [[ "$r_ms" != NA ]] && awk -v r="$r_ms" 'BEGIN { exit !(r < 10) }'; then
    TARGET_MET=0
    printf 'TARGET NOT MET: meshgate/strongswan %s, the target is at least 10\n' "$r_ms" >&4
fi

FAILED=0
(( TARGET_MET )) || exit 2
