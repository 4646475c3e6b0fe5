/* floor_batch: floor_single's twin that moves packets in batches (recvmmsg/sendmmsg).
 *
 * Same sockets and the same per-packet work as floor_single; up to --batch (default 64) packets
 * per system call. recvmmsg waits for the first packet only (MSG_WAITFORONE), so a lone packet
 * is answered at once.
 *
 * Runs until SIGTERM/SIGINT or --seconds (default 900) pass; prints its counters to stderr.
 * Build: gcc -O2 -o floor_batch floor_batch.c
 */
#define _GNU_SOURCE
#include "floor.h"

#define MAX_BATCH 256

int main(int argc, char **argv) {
    struct floor_config cfg;
    floor_parse_args(argc, argv, &cfg);
    struct floor_sockets s;
    if (floor_open(&cfg, &s))
        return 1;
    static uint8_t bufs[MAX_BATCH][FLOOR_BUFFER];
    static char ctrl[MAX_BATCH][FLOOR_CTRL];
    static struct sockaddr_in gwlb[MAX_BATCH];
    static struct iovec in_iov[MAX_BATCH], out_iov[MAX_BATCH];
    static struct mmsghdr in[MAX_BATCH], out[MAX_BATCH];
    int batch = cfg.batch > MAX_BATCH ? MAX_BATCH : cfg.batch;
    for (int i = 0; i < batch; i++) {
        in_iov[i] = (struct iovec){bufs[i] + 28, FLOOR_BUFFER - 28};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    struct floor_counters n = {0};
    double deadline = floor_now() + cfg.seconds;
    while (!floor_stop) {
        for (int i = 0; i < batch; i++) {
            in[i].msg_hdr.msg_name = &gwlb[i];
            in[i].msg_hdr.msg_namelen = sizeof gwlb[i];
            in[i].msg_hdr.msg_control = ctrl[i];
            in[i].msg_hdr.msg_controllen = sizeof ctrl[i];
        }
        int got = recvmmsg(s.udp, in, (unsigned)batch, MSG_WAITFORONE, NULL);
        if (got <= 0) {
            if (floor_now() > deadline)
                break;
            continue; /* EINTR or the receive timeout */
        }
        n.received += (uint64_t)got;
        int k = 0;
        for (int i = 0; i < got; i++) {
            size_t len = in[i].msg_len;
            if (!floor_reply_header(bufs[i], len, &in[i].msg_hdr, &gwlb[i], cfg.port)) {
                n.own++;
                continue;
            }
            gwlb[i].sin_port = 0;
            out_iov[k] = (struct iovec){bufs[i], len + 28};
            out[k].msg_hdr = (struct msghdr){.msg_name = &gwlb[i], .msg_namelen = sizeof gwlb[i],
                                             .msg_iov = &out_iov[k], .msg_iovlen = 1};
            k++;
        }
        floor_send(s.raw, out, k, &n);
    }
    floor_report("floor_batch", &n);
    return 0;
}
