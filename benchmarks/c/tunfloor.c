/* tunfloor: the least a one-arm C tun bridge can do, the floor of `geneve --tun`
 * (benchmarks/tun.py, docs/performance.md "The tun bridge").
 *
 * One thread, one GWLB endpoint, the usual GWLB layout (68 bytes of encapsulation) and IPv4
 * inner packets only. The daemon's sockets (floor.h: UDP 6081 with IP_PKTINFO, a raw
 * IP_HDRINCL socket for replies) and two tun interfaces, made here with MTU 8500. A frame from
 * GWLB: its reply header (outer IPv4 + UDP, then its 40 Geneve bytes) is kept under its inner
 * 5-tuple (both orientations) in a fixed table, and the inner packet is written into the
 * ingress tun. A packet read from the egress tun: its flow is looked up, the kept header put in
 * front, and it goes back with sendmmsg; a packet of no flow is dropped. recvmmsg and sendmmsg
 * in batches of --batch, poll over the UDP socket and the egress tun.
 *
 * --hook CMD runs CMD CREATE INGRESS EGRESS 0 once the interfaces exist (as the daemon's
 * create hook: the benchmark's passthrough). Runs until SIGTERM/SIGINT or --seconds.
 * Build: gcc -O2 -o tunfloor tunfloor.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sys/ioctl.h>

#include "floor.h"

#define MAX_BATCH 256
#define OUTER 68         /* outer IPv4 20 + UDP 8 + Geneve 8 + GWLB options 32 */
#define TABLE (1 << 16)  /* flows kept at once (a fixed table: entries are overwritten) */
#define READ_SIZE 9000

struct entry {
    uint8_t key[13]; /* lower address, higher address, lower port, higher port, protocol */
    uint8_t used;
    uint8_t header[OUTER];
};

static struct entry table[TABLE];

static int key_of(const uint8_t *ip, size_t len, uint8_t *key) {
    if (len < 20 || ip[0] >> 4 != 4)
        return -1;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    uint8_t ports[4] = {0};
    if ((ip[9] == 6 || ip[9] == 17) && len >= ihl + 4)
        memcpy(ports, ip + ihl, 4);
    int swap = memcmp(ip + 12, ip + 16, 4) > 0;
    memcpy(key, ip + (swap ? 16 : 12), 4);
    memcpy(key + 4, ip + (swap ? 12 : 16), 4);
    memcpy(key + 8, ports + (swap ? 2 : 0), 2);
    memcpy(key + 10, ports + (swap ? 0 : 2), 2);
    key[12] = ip[9];
    return 0;
}

static struct entry *slot_of(const uint8_t *key) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 13; i++)
        h = (h ^ key[i]) * 16777619u;
    return &table[h & (TABLE - 1)];
}

static int open_tun(const char *name) {
    struct ifreq ifr = {0};
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK), s = socket(AF_INET, SOCK_DGRAM, 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    if (fd < 0 || s < 0 || ioctl(fd, TUNSETIFF, &ifr)) {
        perror("tunfloor: tun");
        exit(1);
    }
    ifr.ifr_mtu = 8500;
    if (ioctl(s, SIOCSIFMTU, &ifr)) {
        perror("tunfloor: mtu");
        exit(1);
    }
    ifr.ifr_qlen = 4096; /* as geneve's tuns: the default 500 overflows in bursts */
    if (ioctl(s, SIOCSIFTXQLEN, &ifr) || ioctl(s, SIOCGIFFLAGS, &ifr)) {
        perror("tunfloor: mtu");
        exit(1);
    }
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) {
        perror("tunfloor: up");
        exit(1);
    }
    close(s);
    return fd;
}

int main(int argc, char **argv) {
    const char *hook = NULL, *in_name = "gwi-floor", *out_name = "gwo-floor";
    char *rest[8] = {argv[0]};
    int n_rest = 1;
    for (int i = 1; i + 1 < argc && n_rest < 7; i += 2) { /* our flags; floor.h takes the rest */
        if (!strcmp(argv[i], "--hook"))
            hook = argv[i + 1];
        else if (!strcmp(argv[i], "--ingress"))
            in_name = argv[i + 1];
        else if (!strcmp(argv[i], "--egress"))
            out_name = argv[i + 1];
        else {
            rest[n_rest++] = argv[i];
            rest[n_rest++] = argv[i + 1];
        }
    }
    struct floor_config cfg;
    floor_parse_args(n_rest, rest, &cfg);
    struct floor_sockets s;
    if (floor_open(&cfg, &s))
        return 1;
    int fd_in = open_tun(in_name), fd_out = open_tun(out_name);
    if (hook) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s CREATE %s %s 0", hook, in_name, out_name);
        if (system(cmd) != 0)
            fprintf(stderr, "tunfloor: the hook failed\n");
    }
    static uint8_t bufs[MAX_BATCH][FLOOR_BUFFER], back[MAX_BATCH][OUTER + READ_SIZE];
    static char ctrl[MAX_BATCH][FLOOR_CTRL];
    static struct sockaddr_in gwlb[MAX_BATCH], dst[MAX_BATCH];
    static struct iovec in_iov[MAX_BATCH], out_iov[MAX_BATCH];
    static struct mmsghdr in[MAX_BATCH], out[MAX_BATCH];
    int batch = cfg.batch > MAX_BATCH ? MAX_BATCH : cfg.batch;
    for (int i = 0; i < batch; i++) {
        in_iov[i] = (struct iovec){bufs[i] + 28, FLOOR_BUFFER - 28};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    struct floor_counters n = {0};
    uint64_t written = 0, misses = 0;
    double deadline = floor_now() + cfg.seconds;
    struct pollfd pfd[2] = {{.fd = s.udp, .events = POLLIN}, {.fd = fd_out, .events = POLLIN}};
    uint8_t key[13];
    while (!floor_stop && floor_now() < deadline) {
        if (poll(pfd, 2, 250) <= 0)
            continue;
        if (pfd[0].revents & POLLIN) { /* the way in */
            for (int i = 0; i < batch; i++) {
                in[i].msg_hdr.msg_name = &gwlb[i];
                in[i].msg_hdr.msg_namelen = sizeof gwlb[i];
                in[i].msg_hdr.msg_control = ctrl[i];
                in[i].msg_hdr.msg_controllen = sizeof ctrl[i];
            }
            int got = recvmmsg(s.udp, in, (unsigned)batch, MSG_DONTWAIT, NULL);
            for (int i = 0; i < got; i++) {
                size_t len = in[i].msg_len;
                n.received++;
                if (len < OUTER - 28 + 20 ||
                    !floor_reply_header(bufs[i], len, &in[i].msg_hdr, &gwlb[i], cfg.port)) {
                    n.own++;
                    continue;
                }
                uint8_t *ip = bufs[i] + OUTER;
                size_t ilen = len + 28 - OUTER;
                if (key_of(ip, ilen, key) == 0) {
                    struct entry *e = slot_of(key);
                    memcpy(e->key, key, sizeof key);
                    memcpy(e->header, bufs[i], OUTER);
                    e->used = 1;
                }
                if (write(fd_in, ip, ilen) == (ssize_t)ilen)
                    written++;
            }
        }
        if (pfd[1].revents & POLLIN) { /* the way back */
            int k = 0;
            while (k < batch) {
                ssize_t len = read(fd_out, back[k] + OUTER, READ_SIZE);
                if (len <= 0)
                    break;
                struct entry *e = NULL;
                if (key_of(back[k] + OUTER, (size_t)len, key) == 0) {
                    e = slot_of(key);
                    if (!e->used || memcmp(e->key, key, sizeof key))
                        e = NULL;
                }
                if (e == NULL) {
                    misses++;
                    continue;
                }
                uint8_t *f = back[k];
                memcpy(f, e->header, OUTER);
                uint16_t total = htons((uint16_t)(len + OUTER)), ulen = htons((uint16_t)(len + 48));
                memcpy(f + 2, &total, 2);
                memcpy(f + 24, &ulen, 2);
                dst[k] = (struct sockaddr_in){.sin_family = AF_INET};
                memcpy(&dst[k].sin_addr, f + 16, 4);
                out_iov[k] = (struct iovec){f, (size_t)len + OUTER};
                out[k].msg_hdr = (struct msghdr){.msg_name = &dst[k], .msg_namelen = sizeof dst[k],
                                                 .msg_iov = &out_iov[k], .msg_iovlen = 1};
                k++;
            }
            floor_send(s.raw, out, k, &n);
        }
    }
    floor_report("tunfloor", &n);
    fprintf(stderr, "tunfloor: written into the tun %llu, misses %llu\n",
            (unsigned long long)written, (unsigned long long)misses);
    return 0;
}
