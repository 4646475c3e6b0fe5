#!/bin/sh
# Two-arm NAT hook for `python -m geneve.appliance --tun` (docs/tun.md), after gwlbtun's
# create-nat.sh: what comes in on an endpoint's ingress interface leaves through NAT_OUT (by
# default the interface of the default route) with the appliance's address (MASQUERADE); the
# answers, turned back by conntrack, are routed out of the endpoint's egress interface to GWLB.
#   $1 CREATE or DESTROY, $2 ingress (gwi-...), $3 egress (gwo-...), $4 endpoint id (hex)
set -eu
out=${NAT_OUT:-$(ip route show default | awk '{print $5; exit}')}
table=$((0x$(printf %s "$4" | tail -c 4) + 1000))
mark=$table
if [ "$1" = CREATE ]; then
  op=-A; rule=add
  sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  sysctl -qw net.ipv4.conf.all.rp_filter=0 "net.ipv4.conf.$2.rp_filter=0"
else
  op=-D; rule=del
fi
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  "$ipt" -t nat $op POSTROUTING -o "$out" -j MASQUERADE
  "$ipt" $op FORWARD -i "$2" -o "$out" -j ACCEPT
  "$ipt" $op FORWARD -i "$out" -o "$3" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  # Connections that came from GWLB carry a mark; their answers get it, and go out of $3.
  "$ipt" -t mangle $op PREROUTING -i "$2" -j CONNMARK --set-mark "$mark"
  "$ipt" -t mangle $op PREROUTING ! -i "$2" -m connmark --mark "$mark" -j MARK --set-mark "$mark"
done
for family in -4 -6; do
  ip $family rule $rule fwmark "$mark" table "$table" 2>/dev/null || [ "$1" = DESTROY ]
  [ "$1" = CREATE ] && ip $family route replace default dev "$3" table "$table"
done
exit 0
