#!/bin/sh
# One-arm hook for `python -m geneve.appliance --tun` (docs/tun.md): packets that come in on an
# endpoint's ingress interface are forwarded by the kernel (through nftables or iptables) and
# routed out of its egress interface, back to GWLB. Arguments as gwlbtun passes them:
#   $1 CREATE or DESTROY, $2 ingress (gwi-...), $3 egress (gwo-...), $4 endpoint id (hex)
set -eu
# A routing table per endpoint, numbered from the id's last 4 hex digits.
table=$((0x$(printf %s "$4" | tail -c 4) + 1000))
if [ "$1" = CREATE ]; then
  sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  # Strict reverse-path filtering drops what enters an address-less tun; the stricter of
  # "all" and the interface's own setting applies, so both.
  sysctl -qw net.ipv4.conf.all.rp_filter=0 "net.ipv4.conf.$2.rp_filter=0"
  ip -4 rule add iif "$2" table "$table"
  ip -4 route replace default dev "$3" table "$table"
  ip -6 rule add iif "$2" table "$table"
  ip -6 route replace default dev "$3" table "$table"
else
  # The routes went with the interfaces; the rules stay unless deleted.
  ip -4 rule del iif "$2" table "$table" 2>/dev/null || true
  ip -6 rule del iif "$2" table "$table" 2>/dev/null || true
fi
