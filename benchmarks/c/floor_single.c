/* floor_single: the least a GWLB appliance can do with the geneve daemon's default sockets.
 *
 * Same sockets as the daemon's default receive path: a UDP socket bound to port 6081 with
 * SO_REUSEPORT and IP_PKTINFO (4 MiB receive buffer) to receive, a raw IP_HDRINCL socket
 * (4 MiB send buffer) to send. One recvmsg and one sendto per packet, no rules: the reply is the
 * received Geneve bytes behind a fresh 28-byte outer IPv4/UDP header with the addresses swapped,
 * GWLB's source port kept and destination port 6081 (the kernel fills in the IPv4 total
 * length, ID and header checksum; the outer UDP checksum is 0).
 *
 * Runs until SIGTERM/SIGINT or --seconds (default 900) pass; prints its counters to stderr.
 * Build: gcc -O2 -o floor_single floor_single.c
 */
#define _GNU_SOURCE
#include "floor.h"

int main(int argc, char **argv) {
    struct floor_config cfg;
    floor_parse_args(argc, argv, &cfg);
    struct floor_sockets s;
    if (floor_open(&cfg, &s))
        return 1;
    static uint8_t buf[FLOOR_BUFFER];
    char ctrl[FLOOR_CTRL];
    struct sockaddr_in gwlb;
    struct iovec iov = {buf + 28, sizeof buf - 28};
    struct floor_counters n = {0};
    double deadline = floor_now() + cfg.seconds;
    while (!floor_stop) {
        struct msghdr m = {.msg_name = &gwlb, .msg_namelen = sizeof gwlb, .msg_iov = &iov,
                           .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof ctrl};
        ssize_t len = recvmsg(s.udp, &m, 0);
        if (len < 0) {
            if (floor_now() > deadline)
                break;
            continue; /* EINTR or the receive timeout */
        }
        n.received++;
        if (!floor_reply_header(buf, (size_t)len, &m, &gwlb, cfg.port)) {
            n.own++;
            continue;
        }
        gwlb.sin_port = 0;
        if (sendto(s.raw, buf, (size_t)len + 28, 0, (struct sockaddr *)&gwlb, sizeof gwlb) < 0)
            n.send_errors++;
        else
            n.forwarded++;
    }
    floor_report("floor_single", &n);
    return 0;
}
