# The real node: a kubelet, kube-proxy, containerd + runc, CNI and CoreDNS on this machine,
# next to the kwok nodes. Sourced by scripts/control-plane (`run --real-node`, `node-clean`,
# `node-snapshot`); docs/dev-cluster.md, "The real node".
#
# Layout (only one real node per machine: it owns host networking state, so it holds the lock
# $NODE_LOCK for its whole life):
#   node name teal-node, label teal.dev/node=real, taint teal.dev/node=real:NoSchedule
#     (existing tests and the simulated examples place pods without a selector; the taint
#     keeps them on the kwok nodes)
#   bridge teal0 with 10.85.0.1/24: pod addresses, the node's InternalIP, the kubelet's
#     serving address, cluster DNS (CoreDNS on 10.85.0.1:53) and a relay to the apiserver
#     (10.85.0.1:<apiserver port> -> 127.0.0.1:<apiserver port>), so that the `kubernetes`
#     Service (10.96.0.1:443) has an endpoint pods can reach
#   route 10.96.0.0/16 dev teal0: service addresses never leave through another interface
#   filter FORWARD -> TEAL-NODE-FORWARD: nothing is forwarded between teal0 and any other
#     interface (pods reach the node and each other, nothing else); raw PREROUTING ->
#     TEAL-NODE-PREROUTING: packets for pod or service addresses that arrive on another
#     interface than teal0 or lo are dropped
#   kube-proxy in iptables mode (see docs/dev-cluster.md for why)
#   containerd runs with HTTP(S)_PROXY pointing at a closed loopback port: an image that is
#     not loaded is never pulled from anywhere (ErrImagePull), no traffic leaves the machine
#   state: $NODE_RUN (sockets, configs, containerd state), DIR/node (containerd images,
#     kubelet root, pod logs)
# shellcheck shell=bash

NODE_NAME=teal-node
NODE_LABEL_KEY=teal.dev/node
NODE_LABEL_VALUE=real
NODE_BRIDGE=teal0
NODE_CIDR=10.85.0.0/24
NODE_IP=10.85.0.1
SERVICE_CIDR=10.96.0.0/16
CNI_NETWORK=teal-pods
CNI_BIN_DIR=${TEAL_CNI_BIN_DIR:-/usr/lib/cni}
NODE_RUN=/run/teal-node
NODE_LOCK=/run/teal-node.lock
# Chains the kubelet, kube-proxy, the CNI plugins and this script add (iptables and ip6tables).
NODE_CHAINS='KUBE-|CNI-|TEAL-NODE'
# Kernel settings the node changes (the kubelet sets the first six itself); restored by
# node_clean from the values saved before.
NODE_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables"
# Host directories the node's components create if missing; removed again if they did not exist.
# The kubelet's device-plugin socket is always in /var/lib/kubelet/device-plugins.
NODE_HOST_DIRS="/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /run/netns"

node_dir() { echo "$CACHE/kube-node-$KUBERNETES_VERSION"; }
coredns_dir() { echo "$CACHE/coredns-$COREDNS_VERSION"; }
# The pause program's cache key follows its source, so a change to it is a new image.
pause_tag() { sha256sum "$CP_DIR/pause/main.go" | cut -c1-12; }
pause_dir() { echo "$CACHE/pause-$(pause_tag)"; }
sandbox_image() { echo "teal.local/pause:$(pause_tag)"; }

build_node() {
  check_pin "$CP_DIR/kubernetes" "k8s.io/kubernetes $KUBERNETES_VERSION"
  go_build "kube-node-$KUBERNETES_VERSION" "$(node_dir)" "$CP_DIR/kubernetes" "-s -w$(kube_version_ldflags)" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

build_coredns() {
  check_pin "$CP_DIR/coredns" "github.com/coredns/coredns $COREDNS_VERSION"
  go_build "coredns-$COREDNS_VERSION" "$(coredns_dir)" "$CP_DIR/coredns" "-s -w" .
  [ -x "$(coredns_dir)/bin/coredns" ] || die "coredns binary missing in $(coredns_dir)/bin"
}

build_pause() {
  go_build "pause-$(pause_tag)" "$(pause_dir)" "$CP_DIR/pause" "-s -w" .
  [ -x "$(pause_dir)/bin/pause" ] || die "pause binary missing in $(pause_dir)/bin"
}

# --- checks ------------------------------------------------------------------

node_check_host() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (it runs containerd and the kubelet, and owns a bridge and iptables chains)"
  local c
  for c in containerd containerd-shim-runc-v2 runc ctr iptables iptables-save iptables-restore ip socat python3 flock sysctl; do
    command -v "$c" >/dev/null || die "$c is missing for the real node (scripts/setup-deps installs it)"
  done
  for c in bridge host-local loopback portmap; do
    [ -x "$CNI_BIN_DIR/$c" ] || die "CNI plugin $CNI_BIN_DIR/$c is missing (Debian: containernetworking-plugins; scripts/setup-deps installs it)"
  done
  need_bin "$(node_dir)/bin/kubelet"
  need_bin "$(node_dir)/bin/kube-proxy"
  need_bin "$(coredns_dir)/bin/coredns"
  need_bin "$(pause_dir)/bin/pause"
  [ -d /sys/fs/cgroup/cpu ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "no cgroup hierarchy under /sys/fs/cgroup"
}

# node_lock WAIT: takes the machine-wide lock on file descriptor 8; WAIT seconds, 0 = do not wait.
node_lock() {
  exec 8>"$NODE_LOCK"
  if flock -n 8; then
    return 0
  fi
  [ "$1" -gt 0 ] || die "a real node is running on this machine (it holds $NODE_LOCK; owner: $(cat "$NODE_RUN/owner" 2>/dev/null || echo unknown))"
  log "another real node runs on this machine (owner: $(cat "$NODE_RUN/owner" 2>/dev/null || echo unknown)); waiting up to $1s for it to go"
  flock -w "$1" 8 || die "the real node of $(cat "$NODE_RUN/owner" 2>/dev/null || echo another control plane) was still running after ${1}s ($NODE_LOCK)"
}

# --- up --------------------------------------------------------------------

# Set once node_up has changed the machine: stop_all in scripts/control-plane then cleans up.
export NODE_STARTED=0

# node_up API_PORT IMAGE...: starts the real node against the running control plane and loads
# IMAGE archives into its containerd. Fails (exits) if any part does not come up.
node_up() {
  local api_port=$1
  shift
  local kc=$STATE/kubeconfig pki=$STATE/pki node=$STATE/node kubectl
  kubectl="$(bin_kube TEAL_KUBECTL kubectl)"
  node_check_host
  node_lock "${TEAL_REAL_NODE_WAIT:-900}"
  # Whatever a real node that was killed left behind goes first.
  node_clean
  NODE_STARTED=1
  mkdir -p "$NODE_RUN/etc" "$node/kubelet" "$node/pod-logs" "$node/volume-plugins" "$node/cni/ipam" \
    "$node/cni/net.d" "$node/containerd"
  echo "$STATE" >"$NODE_RUN/owner"
  echo "$node" >"$NODE_RUN/node-dir"
  local d s
  for d in $NODE_HOST_DIRS; do
    [ -e "$d" ] || echo "$d" >>"$NODE_RUN/created-dirs"
  done
  for s in $NODE_SYSCTLS; do
    if v="$(sysctl -n "$s" 2>/dev/null)"; then echo "$s $v" >>"$NODE_RUN/sysctl.orig"; fi
  done
  # Pod to ClusterIP to pod crosses the host: it routes, and bridged replies pass iptables so
  # that their service address is restored.
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "net.bridge.bridge-nf-call-iptables cannot be set (br_netfilter)"

  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/${NODE_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  iptables -w -N TEAL-NODE-FORWARD
  iptables -w -A TEAL-NODE-FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -w -A TEAL-NODE-FORWARD -o "$NODE_BRIDGE" ! -i "$NODE_BRIDGE" -j DROP
  iptables -w -I FORWARD 1 -j TEAL-NODE-FORWARD
  # Pod and service addresses are reachable from this machine and its pods only: a packet for
  # them arriving on any other interface (someone routing to this machine) is dropped before
  # NAT, so neither NodePorts nor the relay, DNS or pods answer it.
  iptables -w -t raw -N TEAL-NODE-PREROUTING
  iptables -w -t raw -A TEAL-NODE-PREROUTING -i "$NODE_BRIDGE" -j RETURN
  iptables -w -t raw -A TEAL-NODE-PREROUTING -i lo -j RETURN
  iptables -w -t raw -A TEAL-NODE-PREROUTING -d "$NODE_CIDR" -j DROP
  iptables -w -t raw -A TEAL-NODE-PREROUTING -d "$SERVICE_CIDR" -j DROP
  iptables -w -t raw -I PREROUTING 1 -j TEAL-NODE-PREROUTING

  cat >"$node/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_CIDR", "rangeStart": "${NODE_IP%.*}.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$node/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  printf 'nameserver %s\n' "$NODE_IP" >"$NODE_RUN/etc/resolv.conf"

  cat >"$NODE_RUN/etc/containerd.toml" <<EOF
version = 2
root = "$node/containerd"
state = "$NODE_RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$NODE_RUN/containerd.sock"
[ttrpc]
  address = "$NODE_RUN/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$(sandbox_image)"
  # runc cannot give the sandbox a negative oom_score_adj without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$node/cni/net.d"
    max_conf_num = 1
EOF
  # A closed port as the proxy: registries are never reached, from here or anywhere.
  spawn containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$NODE_RUN/etc/containerd.toml"
  wait_until "containerd" 60 ctr -a "$NODE_RUN/containerd.sock" version
  "$CP_DIR/../image" pause "$(pause_dir)/bin/pause" "$NODE_RUN/pause.tar" "$(sandbox_image)" ||
    die "writing the pause image failed"
  ctr -a "$NODE_RUN/containerd.sock" -n k8s.io images import "$NODE_RUN/pause.tar" >>"$STATE/logs/containerd.log" 2>&1 ||
    die "importing the pause image failed (log: $STATE/logs/containerd.log)"
  local image
  for image in "$@"; do
    ctr -a "$NODE_RUN/containerd.sock" -n k8s.io images import "$image" >>"$STATE/logs/containerd.log" 2>&1 ||
      die "importing $image failed (log: $STATE/logs/containerd.log)"
    log "loaded $image into the real node"
  done

  local kubelet_port kubelet_healthz proxy_healthz proxy_metrics dns_health dns_ready
  read -r kubelet_port kubelet_healthz proxy_healthz proxy_metrics dns_health dns_ready <<<"$(free_ports 6)"
  echo "kubelet=$kubelet_port kubelet-healthz=$kubelet_healthz kube-proxy-healthz=$proxy_healthz coredns-health=$dns_health coredns-ready=$dns_ready" \
    >>"$STATE/ports"
  cat >"$NODE_RUN/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_RUN/containerd.sock
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $NODE_RUN/etc/resolv.conf
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
registerWithTaints:
- {key: $NODE_LABEL_KEY, value: $NODE_LABEL_VALUE, effect: NoSchedule}
# Loaded images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 50
EOF
  spawn kubelet "$(node_dir)/bin/kubelet" --config="$NODE_RUN/etc/kubelet.yaml" --kubeconfig="$kc" \
    --root-dir="$node/kubelet" --cert-dir="$node/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="$NODE_LABEL_KEY=$NODE_LABEL_VALUE" --v=1

  # The apiserver listens on 127.0.0.1, which inside a pod is the pod's own loopback.
  spawn apiserver-relay socat "TCP-LISTEN:$api_port,bind=$NODE_IP,reuseaddr,fork" "TCP:127.0.0.1:$api_port"
  cat >"$NODE_RUN/etc/kubernetes-endpoints.yaml" <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-real-node
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: control-plane.teal.dev
addressType: IPv4
endpoints:
- addresses: [$NODE_IP]
  conditions: {ready: true}
ports:
- {name: https, port: $api_port, protocol: TCP}
EOF
  wait_until "the kubernetes EndpointSlice" 30 "$kubectl" --kubeconfig="$kc" apply -f "$NODE_RUN/etc/kubernetes-endpoints.yaml"

  cat >"$NODE_RUN/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $kc
hostnameOverride: $NODE_NAME
clusterCIDR: $NODE_CIDR
healthzBindAddress: 127.0.0.1:$proxy_healthz
metricsBindAddress: 127.0.0.1:$proxy_metrics
# NodePorts answer on the bridge address only, never on the machine's other interfaces. Pods
# are IPv4 only; the IPv6 prefix is on no interface, so no IPv6 address takes NodePorts (with
# no IPv6 entry kube-proxy would take every local IPv6 address).
nodePortAddresses: ["$NODE_IP/32", "fd85::1/128"]
iptables:
  localhostNodePorts: false
# Leave the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  spawn kube-proxy "$(node_dir)/bin/kube-proxy" --config="$NODE_RUN/etc/kube-proxy.yaml" --v=1

  cat >"$NODE_RUN/etc/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$dns_health
    ready 127.0.0.1:$dns_ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kc teal
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  spawn coredns "$(coredns_dir)/bin/coredns" -conf "$NODE_RUN/etc/Corefile"

  wait_until "the real node $NODE_NAME to be Ready" 120 "$kubectl" --kubeconfig="$kc" wait \
    --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  wait_until "kube-proxy" 60 curl -sf "http://127.0.0.1:$proxy_healthz/healthz"
  wait_until "CoreDNS" 60 curl -sf "http://127.0.0.1:$dns_ready/ready"
  echo "$NODE_NAME $NODE_IP" >"$STATE/real-node"
  log "real node $NODE_NAME is Ready (pods on $NODE_CIDR, DNS at $NODE_IP)"
}

# --- down ------------------------------------------------------------------

# node_pids: processes of a real node, found by the paths and addresses only it uses.
node_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    if [ "${p#/proc/}" = "$$" ] || [ "${p#/proc/}" = "$BASHPID" ]; then continue; fi
    cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
    case $cmd in
      *"$NODE_RUN/"* | *"bind=$NODE_IP,"*) echo "${p#/proc/}" ;;
    esac
  done
}

# kubepods_cgroups: the kubelet's pod cgroups, deepest first.
kubepods_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d
  done
  return 0
}

# node_mounts: mount points of a real node, deepest first.
node_mounts() {
  local node_dir=$1
  awk '{print $5}' /proc/self/mountinfo | while read -r m; do
    case $m in
      "$NODE_RUN"/* | /run/netns/cni-*) echo "$m" ;;
      *) if [ -n "$node_dir" ] && [[ $m == "$node_dir"/* ]]; then echo "$m"; fi ;;
    esac
  done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}

# clean_iptables TOOL: removes every chain matching NODE_CHAINS and every rule that jumps to
# one, table by table, with one atomic restore each.
clean_iptables() {
  local tool=$1 t dump
  command -v "$tool-save" >/dev/null || return 0
  for t in filter nat mangle raw; do
    dump="$("$tool-save" -t "$t" 2>/dev/null)" || continue
    grep -qE "^:($NODE_CHAINS)| -[jg] ($NODE_CHAINS)" <<<"$dump" || continue
    grep -vE "^:($NODE_CHAINS)|^-A ($NODE_CHAINS)| -[jg] ($NODE_CHAINS)" <<<"$dump" | "$tool-restore" -w -T "$t" ||
      log "warning: removing the real node's $tool chains from table $t failed"
  done
}

# node_clean: stops and removes everything a real node puts on this machine, whether its
# supervisor stopped it or was killed. Needs the lock (the caller holds it).
node_clean() {
  local node_dir="" pids c m
  [ -f "$NODE_RUN/node-dir" ] && node_dir="$(cat "$NODE_RUN/node-dir")"
  # Daemons first (so nothing restarts pods), then the pods' processes, then the shims.
  pids="$(node_pids)"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 30); do
      pids="$(node_pids)"
      [ -n "$pids" ] || break
      sleep 0.1
    done
  fi
  for _ in $(seq 50); do
    pids="$(kubepods_cgroups | while read -r c; do cat "$c/cgroup.procs" 2>/dev/null; done | sort -u)"
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  pids="$(node_pids)"
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [ -n "$(node_pids)" ] || break
    sleep 0.1
  done

  node_mounts "$node_dir" | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
  done
  rm -f /run/netns/cni-*
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link del "$NODE_BRIDGE" || log "warning: cannot delete the bridge $NODE_BRIDGE"
  fi
  clean_iptables iptables
  clean_iptables ip6tables
  kubepods_cgroups | while read -r c; do rmdir "$c" 2>/dev/null || true; done

  if [ -f "$NODE_RUN/sysctl.orig" ]; then
    local key value
    while read -r key value; do
      sysctl -qw "$key=$value" 2>/dev/null || log "warning: cannot restore $key=$value"
    done <"$NODE_RUN/sysctl.orig"
  fi
  # Files the kubelet and the CNI plugins keep outside the directories they were given.
  if [ -n "$node_dir" ] && [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$node_dir/*" -delete 2>/dev/null || true
  fi
  # libcni caches each attachment's result (cni-loopback-* are the loopback ones); only a real
  # node runs CNI on this machine.
  rm -rf "/var/lib/cni/results/$CNI_NETWORK-"* /var/lib/cni/results/cni-loopback-* "/var/lib/cni/networks/$CNI_NETWORK"
  if [ -f "$NODE_RUN/created-dirs" ]; then
    local d
    while read -r d; do
      case $d in
        # containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state directory is.
        /run/containerd) rm -rf /run/containerd ;;
        /var/lib/cni) rmdir /var/lib/cni/results /var/lib/cni/networks /var/lib/cni 2>/dev/null || true ;;
        /var/lib/kubelet) rm -rf /var/lib/kubelet ;;
        *) rmdir "$d" 2>/dev/null || true ;;
      esac
    done <"$NODE_RUN/created-dirs"
  fi
  if [ -n "$node_dir" ] && [ -d "$node_dir" ]; then
    rm -rf "$node_dir" 2>/dev/null || log "warning: cannot remove $node_dir: $(find "$node_dir" -maxdepth 3 | head -n 5)"
  fi
  rm -rf "$NODE_RUN"
}

# node_snapshot: the host state a real node touches, one line per item, for comparing before
# `up` and after `down` (a test does). Only what belongs to a real node is listed (its chains,
# links, mounts, processes), so that other work on the machine does not show.
node_snapshot() {
  local tool t s
  echo "# processes"
  node_pids | while read -r p; do echo "process $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"; done
  echo "# pod cgroups"
  kubepods_cgroups
  echo "# mounts"
  awk '{print $5}' /proc/self/mountinfo | grep -E "^$NODE_RUN|^/run/netns/cni-|/kubelet/pods/|/io.containerd" || true
  echo "# network namespaces"
  find /run/netns -maxdepth 1 -name 'cni-*' 2>/dev/null || true
  echo "# links"
  ip -o link show dev "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' || true
  ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' || true
  echo "# routes"
  ip route show | grep -E "${SERVICE_CIDR%/*}|${NODE_CIDR%/*}" || true
  echo "# iptables"
  for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null || continue
    for t in filter nat mangle raw; do
      "$tool-save" -t "$t" 2>/dev/null | grep -E "^:($NODE_CHAINS)|^-A ($NODE_CHAINS)| -[jg] ($NODE_CHAINS)" |
        sed -e "s/^/$tool $t /" -e 's/ \[[0-9]*:[0-9]*\]$//' || true
    done
  done
  echo "# sysctls"
  for s in $NODE_SYSCTLS; do echo "$s $(sysctl -n "$s" 2>/dev/null || echo -)"; done
  echo "# files"
  for t in $NODE_RUN /run/containerd /var/lib/cni /var/log/containers /var/lib/kubelet /var/log/pods; do
    [ -e "$t" ] && find "$t" -maxdepth 2
  done
  return 0
}
