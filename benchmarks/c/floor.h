/* Shared by floor_single.c and floor_batch.c: options, sockets, the reply header, counters. */
#ifndef GENEVE_BENCH_FLOOR_H
#define GENEVE_BENCH_FLOOR_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Like the daemon: any UDP datagram fits behind the 28 bytes of outer header. */
#define FLOOR_BUFFER (65535 + 28)
#define FLOOR_CTRL 64

struct floor_config {
    int port;
    int batch;
    double seconds;
};

struct floor_sockets {
    int udp, raw;
};

struct floor_counters {
    uint64_t received, forwarded, own, send_errors;
};

static volatile sig_atomic_t floor_stop;

static void floor_on_signal(int sig) {
    (void)sig;
    floor_stop = 1;
}

static double floor_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void floor_parse_args(int argc, char **argv, struct floor_config *cfg) {
    cfg->port = 6081;
    cfg->batch = 64;
    cfg->seconds = 900;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            cfg->port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            cfg->batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            cfg->seconds = atof(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--port N] [--batch N] [--seconds S]\n", argv[0]);
            exit(2);
        }
    }
    if (cfg->port < 1 || cfg->port > 65535 || cfg->batch < 1 || cfg->seconds <= 0) {
        fprintf(stderr, "%s: bad option value\n", argv[0]);
        exit(2);
    }
}

static int floor_open(const struct floor_config *cfg, struct floor_sockets *s) {
    int one = 1, size = 4 << 20;
    s->udp = socket(AF_INET, SOCK_DGRAM, 0);
    s->raw = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (s->udp < 0 || s->raw < 0) {
        perror("floor: socket");
        return -1;
    }
    setsockopt(s->udp, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    setsockopt(s->udp, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    setsockopt(s->udp, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(s->raw, IPPROTO_IP, IP_HDRINCL, &one, sizeof one);
    setsockopt(s->raw, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    /* Wake up now and then to notice the deadline even when no traffic comes. */
    struct timeval tv = {0, 250000};
    setsockopt(s->udp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    if (bind(s->udp, (struct sockaddr *)&a, sizeof a)) {
        perror("floor: bind");
        return -1;
    }
    struct sigaction sa = {0};
    sa.sa_handler = floor_on_signal; /* no SA_RESTART: a blocked receive returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    return 0;
}

/* Write the reply's outer IPv4/UDP header in the 28 bytes before the Geneve bytes buf[28:].
 * Returns 0 for a datagram from one of our own addresses (a reply that came back). */
static int floor_reply_header(uint8_t *buf, size_t len, struct msghdr *m,
                              const struct sockaddr_in *gwlb, int port) {
    struct in_addr local = {0};
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof pi);
            local = pi.ipi_addr;
        }
    }
    if (local.s_addr == gwlb->sin_addr.s_addr)
        return 0;
    uint16_t total = htons((uint16_t)(len + 28)), ulen = htons((uint16_t)(len + 8));
    uint16_t dport = htons((uint16_t)port);
    memset(buf, 0, 28);
    buf[0] = 0x45;
    memcpy(buf + 2, &total, 2);
    buf[8] = 64;
    buf[9] = IPPROTO_UDP;
    memcpy(buf + 12, &local, 4);                /* from the appliance */
    memcpy(buf + 16, &gwlb->sin_addr, 4);       /* to GWLB */
    memcpy(buf + 20, &gwlb->sin_port, 2);       /* GWLB's source port, kept */
    memcpy(buf + 22, &dport, 2);
    memcpy(buf + 24, &ulen, 2);
    return 1;
}

/* Send the k replies of out with sendmmsg; a refused one is counted and the rest go on. */
static inline void floor_send(int fd, struct mmsghdr *out, int k, struct floor_counters *n) {
    int done = 0;
    while (done < k) {
        int r = sendmmsg(fd, out + done, (unsigned)(k - done), 0);
        if (r <= 0) { /* the one at out[done] failed: count it and go on with the rest */
            n->send_errors++;
            done++;
        } else {
            n->forwarded += (uint64_t)r;
            done += r;
        }
    }
}

static void floor_report(const char *name, const struct floor_counters *n) {
    fprintf(stderr, "%s: received %llu, forwarded %llu, own %llu, send errors %llu\n", name,
            (unsigned long long)n->received, (unsigned long long)n->forwarded,
            (unsigned long long)n->own, (unsigned long long)n->send_errors);
}

#endif
