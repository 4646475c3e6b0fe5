/* loadgen: a GWLB traffic generator for the appliance benchmark (benchmarks/appliance.py).
 *
 * Sends GWLB frames (IPv4 | UDP 6081 | Geneve with the three AWS options | inner IPv4/UDP,
 * every checksum valid, outer UDP checksum 0) in sendmmsg batches and reads the replies with
 * recvmmsg on a raw IPPROTO_UDP socket, in one loop. A UDP socket bound to 6081 with a
 * drop-everything filter keeps the kernel from answering the replies with ICMP port-unreachable.
 *
 * Frames leave through an AF_PACKET socket with PACKET_QDISC_BYPASS (--tx packet, the default)
 * or through a raw IP_HDRINCL socket like the appliances' (--tx raw). The raw socket pays the
 * IPv4 output path per frame (for an on-link destination the kernel does not even cache the
 * route of an IP_HDRINCL send); with it the generator is no faster than the C floors it is
 * meant to saturate, while the packet socket sends about 1.6x as many frames per second.
 *
 * Every inner payload starts with a 20-byte stamp: a run id (a late reply to an earlier run is
 * not counted), a sequence number and the send time (CLOCK_REALTIME ns, the clock of
 * SO_TIMESTAMPNS, which stamps the replies). The sequence number decides the flow and whether
 * the payload carries "weakly typed", so the generator knows what each reply must look like
 * without remembering what it sent. A bitmap of sequence numbers gives loss and duplicates.
 *
 * The egress mix (--mix egress) is TCP instead: flows opened by a TLS ClientHello, then data
 * both ways. Frame seq's place in it is computed from seq, as above; see egress_frame().
 *
 * The rewrite mixes (--mix rewrite, --mix rewrite-same) are TCP data from clients to port 8080
 * whose payloads hold "http://" (once at 156 bytes, 4 times at 1500) for an appliance that
 * replaces it by "https://" (rewrite: each reply one byte longer per match, its sequence number
 * shifted by what the connection's earlier frames grew) or by "HTTP://" (rewrite-same: the
 * same length, the baseline); see rewrite_frame().
 *
 * Modes: --rate R paces R frames/s for --duration seconds; --rate 0 sends as fast as it can
 * (saturation). Every run stops by itself: duration at most 120 s and at most --max-packets
 * frames, then at most --drain seconds waiting for late replies. Prints one JSON line.
 *
 * Build: gcc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GENEVE_PORT 6081
#define OUTER_LEN 68 /* outer IPv4 20 + UDP 8 + Geneve 8 + GWLB options 32 */
#define INNER_HDR 28 /* inner IPv4 20 + UDP 8 */
#define INNER_TCP_HDR 40 /* inner IPv4 20 + TCP 20 (no options) */
#define STAMP_LEN 20 /* run id (4) + sequence (8) + send time (8) */
#define MIN_FRAME (OUTER_LEN + INNER_HDR + STAMP_LEN + 16)
#define MAX_FRAME 8900
#define RX_BUF 9216
#define MAX_BATCH 256
#define MAX_DURATION 120.0
#define HIST_STEP_NS 100              /* latency histogram resolution */
#define HIST_BINS (1000 * 1000)       /* 100 ms at 100 ns */
#define PORT_FORWARD 4000             /* a port no reference rule looks at */
#define PORT_RULES 3000               /* the reference rules' port */
#define PORT_HTTPS 443                /* the egress mix's server port */
#define HELLO_LEN 517                 /* curl's ClientHello: one 512-byte record */
#define HELLO_RANDOM 11               /* record header 5 + handshake header 4 + version 2 */
#define HELLO_SNI "allowed.example"
#define TCP_ACK_PSH 0x18
#define PORT_REWRITE 8080             /* the rewrite mixes' server port */
#define NEEDLE "http://"

static const char WEAK[] = "weakly typed";
static const char STRONG[] = "strongly typed";
static const char FILLER[] = "the quick brown fox jumps over a lazy dog 0123456789 ";

enum reason {
    R_LENGTH, R_OUTER_IP, R_OUTER_UDP, R_GENEVE, R_INNER_IP, R_INNER_UDP, R_PAYLOAD,
    R_UNPARSABLE, R_SEQ, R_TRUNCATED, R_INNER_TCP, R_COUNT
};
static const char *REASON_NAMES[R_COUNT] = {
    "length", "outer_ip", "outer_udp", "geneve", "inner_ip", "inner_udp", "payload",
    "unparsable", "sequence", "truncated", "inner_tcp"
};

struct config {
    struct in_addr src, dst; /* outer: generator, appliance */
    int tx_packet;           /* send through AF_PACKET (default) rather than a raw IP socket */
    const char *ifname;      /* AF_PACKET: the generator's interface */
    uint8_t dst_mac[6];      /* AF_PACKET: the appliance's MAC address */
    int rules;
    int egress;       /* --mix egress: TCP flows, each opened by a ClientHello */
    int flow_packets; /* egress: data frames per flow (both directions), then a new flow;
                       * rewrite: data frames per connection */
    int rewrite;      /* --mix rewrite: 1 ("https://", one byte longer); rewrite-same: 2 */
    int dump_frames;  /* print the mix's first N frames in hex and exit */
    int dump_replies; /* rewrite mixes: print the replies they must get instead */
    int size;
    double rate;
    double duration;
    double warmup;
    double drain;
    uint64_t max_packets;
    int flows;
    int distinct; /* every frame its own inner 5-tuple (a new-flow flood) */
    int batch;
    int validate_every;
};

struct tmpl {
    uint8_t *frame;
    uint64_t udp_sum; /* inner UDP checksum sum without the sequence and time */
};

static struct config cfg;
static struct tmpl *templates; /* [flow * 2 + weak] */
static uint8_t *body_plain, *body_weak_reply;
static size_t body_len;
static int frame_len;

static uint8_t *seen;
static uint64_t n_sent, n_unique, n_dups, n_invalid, n_validated, n_own, n_other, n_stale;
static uint8_t run_id[4];
static uint64_t reasons[R_COUNT];
static uint64_t n_weak_ok;
static uint32_t *hist;
static uint64_t hist_over, lat_count;
static double lat_sum_ns, lat_max_ns;
static uint32_t rx_drops;
static volatile sig_atomic_t interrupted;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* RFC 1071 sum in host order over pieces that start at even offsets; fold + complement later. */
static uint64_t csum_add(uint64_t acc, const void *data, size_t n) {
    const uint8_t *p = data;
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        acc += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t b[2] = {p[0], 0};
        uint16_t w;
        memcpy(&w, b, 2);
        acc += w;
    }
    return acc;
}

static uint16_t csum_fold(uint64_t acc) {
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}

static uint64_t pseudo_sum(const uint8_t *ip, uint16_t l4_len) {
    uint8_t ph[12];
    memcpy(ph, ip + 12, 8);
    ph[8] = 0;
    ph[9] = ip[9];
    ph[10] = (uint8_t)(l4_len >> 8);
    ph[11] = (uint8_t)l4_len;
    return csum_add(0, ph, 12);
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void write_ipv4(uint8_t *ip, uint16_t total, uint16_t id, uint32_t src, uint32_t dst,
                       uint8_t protocol) {
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, total);
    put16(ip + 4, id);
    ip[8] = 64;
    ip[9] = protocol;
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst, 4);
    uint16_t c = (uint16_t)~csum_fold(csum_add(0, ip, 20));
    memcpy(ip + 10, &c, 2);
}

static int is_weak(uint64_t seq) {
    /* About one frame in ten, spread over the flows (a hash, not seq % 10). */
    return cfg.rules && ((seq * 0x9E3779B97F4A7C15ull) >> 32) % 10 == 0;
}

static unsigned flow_of(uint64_t seq) { return (unsigned)(seq % (uint64_t)cfg.flows); }

/* Flow f's outer IPv4, UDP and Geneve header with GWLB's options, for a frame of len bytes. */
static void write_outer(uint8_t *b, int f, int len) {
    write_ipv4(b, (uint16_t)len, 0, cfg.src.s_addr, cfg.dst.s_addr, IPPROTO_UDP);
    put16(b + 20, (uint16_t)(20000 + f)); /* GWLB picks a source port per flow */
    put16(b + 22, GENEVE_PORT);
    put16(b + 24, (uint16_t)(len - 20));
    memset(b + 26, 0, OUTER_LEN - 26); /* outer UDP checksum 0, as GWLB usually sends */
    uint8_t *g = b + 28;
    g[0] = 32 / 4; /* version 0, Opt Len 8 words */
    g[1] = 0;
    put16(g + 2, 0x0800);
    /* VNI 0 */
    uint8_t *o = g + 8;
    uint64_t endpoint = 0x0a1b2c3d00000000ull | (uint64_t)(f % 4);
    uint64_t attachment = 0x1122334455667700ull | (uint64_t)(f % 2);
    uint32_t cookie = (uint32_t)f * 2654435761u;
    put16(o, 0x0108); o[2] = 1; o[3] = 2;
    for (int i = 0; i < 8; i++) o[4 + i] = (uint8_t)(endpoint >> (56 - 8 * i));
    o += 12;
    put16(o, 0x0108); o[2] = 2; o[3] = 2;
    for (int i = 0; i < 8; i++) o[4 + i] = (uint8_t)(attachment >> (56 - 8 * i));
    o += 12;
    put16(o, 0x0108); o[2] = 3; o[3] = 1;
    for (int i = 0; i < 4; i++) o[4 + i] = (uint8_t)(cookie >> (24 - 8 * i));
}

/* Flow f's inner client (198.18.x.y) and server (198.19.0.z) addresses. */
static uint32_t client_addr(int f) { return htonl(0xC6120000u | (uint32_t)(f + 1)); }
static uint32_t server_addr(int f) { return htonl(0xC6130000u | (uint32_t)(f % 200 + 1)); }

static void build_templates(void) {
    body_len = (size_t)frame_len - OUTER_LEN - INNER_HDR - STAMP_LEN;
    body_plain = malloc(body_len);
    body_weak_reply = malloc(body_len + 2);
    for (size_t i = 0; i < body_len; i++)
        body_plain[i] = (uint8_t)FILLER[i % (sizeof FILLER - 1)];
    memcpy(body_weak_reply, STRONG, 14);
    memcpy(body_weak_reply + 14, body_plain + 12, body_len - 12);

    templates = calloc((size_t)cfg.flows * 2, sizeof *templates);
    for (int f = 0; f < cfg.flows; f++) {
        for (int weak = 0; weak < 2; weak++) {
            uint8_t *b = calloc(1, (size_t)frame_len);
            write_outer(b, f, frame_len);
            uint8_t *ip = b + OUTER_LEN;
            uint16_t inner_total = (uint16_t)(frame_len - OUTER_LEN);
            write_ipv4(ip, inner_total, (uint16_t)f, client_addr(f), server_addr(f), IPPROTO_UDP);
            uint8_t *udp = ip + 20;
            put16(udp, (uint16_t)(10000 + f));
            put16(udp + 2, cfg.rules ? PORT_RULES : PORT_FORWARD);
            put16(udp + 4, (uint16_t)(inner_total - 20));
            uint8_t *pl = udp + 8;
            memcpy(pl, run_id, 4);
            memcpy(pl + STAMP_LEN, body_plain, body_len);
            if (weak)
                memcpy(pl + STAMP_LEN, WEAK, 12);
            uint64_t s = pseudo_sum(ip, (uint16_t)(inner_total - 20));
            s = csum_add(s, udp, (size_t)(inner_total - 20));
            templates[f * 2 + weak].frame = b;
            templates[f * 2 + weak].udp_sum = s;
        }
    }
}

/* -- the egress mix ----------------------------------------------------------------------------
 *
 * Flow slot f (--flows of them) carries one TCP connection at a time from its client
 * 198.18.x.y to 198.19.0.z port 443, under slot f's GWLB header. A connection opens with a
 * TLS ClientHello to allowed.example (HELLO_LEN bytes, in one segment), then --flow-packets
 * data frames of --size bytes, client->server and server->client in turn (inner addresses and
 * ports swapped, the GWLB header the same); then the slot starts its next connection (the
 * next generation: the client's port moves on). Within a generation the frames go: every
 * slot's hello, then data frame 0 of every slot, data frame 1 of every slot, ... So each
 * connection's hello leaves before its data. Sequence and acknowledgment numbers follow the
 * bytes each side sent. The stamp is the data's first bytes, or the first 20 bytes of the
 * hello's random (which a ClientHello fills with any bytes it likes).
 */
static uint8_t hello[HELLO_LEN];
static uint8_t *egress_outer;  /* [flow * 2 + is hello]: the outer header, OUTER_LEN bytes */
static uint32_t port_base;     /* where this run's client ports start */
static int hello_frame_len;    /* OUTER_LEN + INNER_TCP_HDR + HELLO_LEN */

static uint8_t *put_ext(uint8_t *p, uint16_t type, const uint8_t *data, size_t n) {
    put16(p, type);
    put16(p + 2, (uint16_t)n);
    memcpy(p + 4, data, n);
    return p + 4 + n;
}

/* A TLS 1.3 ClientHello as browsers and curl send it (RFC 8446 4.1.2), padded (RFC 7685) to
 * curl's 517 bytes. Its random and session id are fixed filler: the random carries the stamp. */
static void build_hello(void) {
    static const uint8_t suites[] = {0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2c, 0xc0, 0x2b,
                                     0xc0, 0x30, 0xc0, 0x2f, 0xcc, 0xa9, 0xcc, 0xa8};
    static const uint8_t groups[] = {0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18};
    static const uint8_t points[] = {0x01, 0x00};
    static const uint8_t alpn[] = {0x00, 0x0c, 2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    static const uint8_t sigalgs[] = {0x00, 0x08, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x01};
    static const uint8_t versions[] = {0x04, 0x03, 0x04, 0x03, 0x03}; /* TLS 1.3, 1.2 */
    static const uint8_t psk_modes[] = {0x01, 0x01};                   /* psk_dhe_ke */
    uint8_t sni[5 + sizeof HELLO_SNI - 1], share[2 + 4 + 32], pad[HELLO_LEN];
    size_t name = sizeof HELLO_SNI - 1;
    put16(sni, (uint16_t)(name + 3)); /* server_name_list */
    sni[2] = 0;                       /* host_name */
    put16(sni + 3, (uint16_t)name);
    memcpy(sni + 5, HELLO_SNI, name);
    put16(share, 36); /* client_shares: x25519 and a 32-byte key */
    put16(share + 2, 0x001d);
    put16(share + 4, 32);
    for (int i = 0; i < 32; i++)
        share[6 + i] = (uint8_t)(0x40 + i);

    uint8_t *p = hello;
    p[0] = 0x16; /* handshake record, legacy version 0x0301 */
    put16(p + 1, 0x0301);
    p[5] = 0x01; /* client_hello; record and handshake lengths below */
    put16(p + 9, 0x0303);
    for (int i = 0; i < 32; i++)
        p[HELLO_RANDOM + i] = (uint8_t)(0xa0 + i);
    p += HELLO_RANDOM + 32;
    *p++ = 32; /* legacy_session_id */
    for (int i = 0; i < 32; i++)
        *p++ = (uint8_t)(0x60 + i);
    put16(p, sizeof suites);
    memcpy(p + 2, suites, sizeof suites);
    p += 2 + sizeof suites;
    *p++ = 1; /* legacy_compression_methods: null */
    *p++ = 0;
    uint8_t *ext_len = p;
    p += 2;
    p = put_ext(p, 0x0000, sni, sizeof sni);
    p = put_ext(p, 0x000b, points, sizeof points);
    p = put_ext(p, 0x000a, groups, sizeof groups);
    p = put_ext(p, 0x0010, alpn, sizeof alpn);
    p = put_ext(p, 0x000d, sigalgs, sizeof sigalgs);
    p = put_ext(p, 0x002b, versions, sizeof versions);
    p = put_ext(p, 0x002d, psk_modes, sizeof psk_modes);
    p = put_ext(p, 0x0033, share, sizeof share);
    size_t used = (size_t)(p - hello) + 4;
    memset(pad, 0, sizeof pad);
    p = put_ext(p, 0x0015, pad, HELLO_LEN - used);
    put16(ext_len, (uint16_t)(p - ext_len - 2));
    put16(hello + 3, HELLO_LEN - 5);
    hello[6] = 0;
    put16(hello + 7, HELLO_LEN - 9);
}

static void build_egress(void) {
    build_hello();
    hello_frame_len = OUTER_LEN + INNER_TCP_HDR + HELLO_LEN;
    body_len = (size_t)frame_len - OUTER_LEN - INNER_TCP_HDR - STAMP_LEN;
    body_plain = malloc(body_len);
    for (size_t i = 0; i < body_len; i++)
        body_plain[i] = (uint8_t)FILLER[i % (sizeof FILLER - 1)];
    egress_outer = malloc((size_t)cfg.flows * 2 * OUTER_LEN);
    uint8_t b[OUTER_LEN];
    for (int f = 0; f < cfg.flows; f++) {
        for (int h = 0; h < 2; h++) {
            write_outer(b, f, h ? hello_frame_len : frame_len);
            memcpy(egress_outer + ((size_t)f * 2 + (size_t)h) * OUTER_LEN, b, OUTER_LEN);
        }
    }
    uint32_t r;
    memcpy(&r, run_id, 4);
    port_base = r % 64512u; /* a new run's connections are new flows to the appliance */
}

static uint32_t mix32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* Write frame seq of the egress mix into buf (stamped with send time now_ns); its length. */
static size_t egress_frame(uint8_t *buf, uint64_t seq, uint64_t now_ns) {
    uint64_t flows = (uint64_t)cfg.flows, per_gen = flows * (1 + (uint64_t)cfg.flow_packets);
    uint64_t gen = seq / per_gen, r = seq % per_gen;
    int is_hello = r < flows;
    unsigned f = (unsigned)(is_hello ? r : (r - flows) % flows);
    uint64_t i = is_hello ? 0 : (r - flows) / flows; /* data frame i of the connection */
    int reverse = (int)(i & 1);                       /* odd: server -> client */
    uint32_t j = (uint32_t)(i / 2);                   /* its place in its direction */
    uint32_t data = (uint32_t)body_len + STAMP_LEN;   /* TCP payload of a data frame */
    uint32_t isn_c = mix32(gen * flows + f), isn_s = mix32(~(gen * flows + f));
    uint32_t after_hello = isn_c + HELLO_LEN;
    uint32_t seq_no, ack_no;
    if (is_hello) {
        seq_no = isn_c;
        ack_no = isn_s;
    } else if (!reverse) {
        seq_no = after_hello + j * data;
        ack_no = isn_s + j * data;
    } else {
        seq_no = isn_s + j * data;
        ack_no = after_hello + (j + 1) * data;
    }
    size_t len = is_hello ? (size_t)hello_frame_len : (size_t)frame_len;
    memcpy(buf, egress_outer + ((size_t)f * 2 + (size_t)is_hello) * OUTER_LEN, OUTER_LEN);
    uint32_t client = client_addr((int)f), server = server_addr((int)f);
    uint16_t client_port = (uint16_t)(1024 + (port_base + gen) % 64512u);
    uint8_t *ip = buf + OUTER_LEN, *tcp = ip + 20, *pl = tcp + 20;
    uint16_t seg = (uint16_t)(len - OUTER_LEN - 20);
    write_ipv4(ip, (uint16_t)(len - OUTER_LEN), (uint16_t)seq, reverse ? server : client,
               reverse ? client : server, IPPROTO_TCP);
    put16(tcp, reverse ? PORT_HTTPS : client_port);
    put16(tcp + 2, reverse ? client_port : PORT_HTTPS);
    put16(tcp + 4, (uint16_t)(seq_no >> 16));
    put16(tcp + 6, (uint16_t)seq_no);
    put16(tcp + 8, (uint16_t)(ack_no >> 16));
    put16(tcp + 10, (uint16_t)ack_no);
    tcp[12] = 5 << 4; /* data offset: no options */
    tcp[13] = TCP_ACK_PSH;
    put16(tcp + 14, 65535);
    memset(tcp + 16, 0, 4); /* checksum below, urgent pointer 0 */
    uint8_t *stamp = pl;
    if (is_hello) {
        memcpy(pl, hello, HELLO_LEN);
        stamp = pl + HELLO_RANDOM;
    } else {
        memcpy(pl + STAMP_LEN, body_plain, body_len);
    }
    memcpy(stamp, run_id, 4);
    memcpy(stamp + 4, &seq, 8);
    memcpy(stamp + 12, &now_ns, 8);
    uint16_t c = (uint16_t)~csum_fold(csum_add(pseudo_sum(ip, seg), tcp, seg));
    memcpy(tcp + 16, &c, 2);
    return len;
}

static int egress_is_hello(uint64_t seq) {
    uint64_t flows = (uint64_t)cfg.flows;
    return seq % (flows * (1 + (uint64_t)cfg.flow_packets)) < flows;
}

/* Hellos among the first n frames: the connections opened. */
static uint64_t egress_hellos(uint64_t n) {
    uint64_t flows = (uint64_t)cfg.flows, per_gen = flows * (1 + (uint64_t)cfg.flow_packets);
    uint64_t rest = n % per_gen;
    return n / per_gen * flows + (rest < flows ? rest : flows);
}

/* -- the rewrite mixes ------------------------------------------------------------------------
 *
 * Flow slot f carries one TCP connection at a time from its client 198.18.x.y to 198.19.0.z
 * port 8080 (no handshake: a flow table takes a flow first seen without SYN as established),
 * --flow-packets data frames of --size bytes from the client, then the slot's next connection
 * (the client's port moves on). Frames go: data frame 0 of every slot, frame 1 of every slot,
 * ..., so each connection's frames leave in order. Sequence numbers follow the bytes sent; the
 * acknowledgment number stays (the server sends nothing). The payload is the stamp, then
 * filler with rewrite_k "http://" spread over it. The reply the appliance must send carries
 * the replacement, and a sequence number moved by what the connection's earlier frames grew.
 */
static uint8_t *body_rewrite_reply;
static int rewrite_k;    /* "http://" per frame */
static int rewrite_grow; /* bytes a reply is longer than its frame */

static void build_rewrite(void) {
    body_len = (size_t)frame_len - OUTER_LEN - INNER_TCP_HDR - STAMP_LEN;
    rewrite_k = 1 + (int)(body_len / 400);
    rewrite_grow = cfg.rewrite == 1 ? rewrite_k : 0;
    body_plain = malloc(body_len);
    body_rewrite_reply = malloc(body_len + (size_t)rewrite_grow);
    for (size_t i = 0; i < body_len; i++)
        body_plain[i] = (uint8_t)FILLER[i % (sizeof FILLER - 1)];
    size_t spacing = body_len / (size_t)rewrite_k, at[16];
    for (int k = 0; k < rewrite_k; k++) {
        at[k] = (size_t)k * spacing + (spacing - 7) / 2; /* filler before: no match with the stamp */
        memcpy(body_plain + at[k], NEEDLE, 7);
    }
    const char *with = cfg.rewrite == 1 ? "https://" : "HTTP://";
    size_t from = 0, to = 0;
    for (int k = 0; k < rewrite_k; k++) {
        memcpy(body_rewrite_reply + to, body_plain + from, at[k] - from);
        to += at[k] - from;
        memcpy(body_rewrite_reply + to, with, strlen(with));
        to += strlen(with);
        from = at[k] + 7;
    }
    memcpy(body_rewrite_reply + to, body_plain + from, body_len - from);
    egress_outer = malloc((size_t)cfg.flows * 2 * OUTER_LEN);
    uint8_t b[OUTER_LEN];
    for (int f = 0; f < cfg.flows; f++) { /* [f * 2]: as sent; [f * 2 + 1]: the reply's length */
        for (int r = 0; r < 2; r++) {
            write_outer(b, f, frame_len + (r ? rewrite_grow : 0));
            memcpy(egress_outer + ((size_t)f * 2 + (size_t)r) * OUTER_LEN, b, OUTER_LEN);
        }
    }
    uint32_t r;
    memcpy(&r, run_id, 4);
    port_base = r % 64512u;
}

/* Write frame seq of the rewrite mix into buf, stamped with now_ns, or (reply) the frame the
 * appliance must send for it (before the outer addresses are swapped) when it rewrote `before`
 * earlier frames of the connection; its length. */
static size_t rewrite_frame(uint8_t *buf, uint64_t seq, uint64_t now_ns, int reply,
                            uint32_t before) {
    uint64_t flows = (uint64_t)cfg.flows, per_gen = flows * (uint64_t)cfg.flow_packets;
    uint64_t gen = seq / per_gen, r = seq % per_gen;
    unsigned f = (unsigned)(r % flows);
    uint32_t i = (uint32_t)(r / flows); /* data frame i of the connection */
    uint32_t data = (uint32_t)body_len + STAMP_LEN, grow = reply ? (uint32_t)rewrite_grow : 0;
    uint64_t conn = (port_base + gen) * flows + f; /* not the last run's numbers */
    uint32_t seq_no = mix32(conn) + i * data + before * grow, ack_no = mix32(~conn);
    size_t len = (size_t)frame_len + grow;
    memcpy(buf, egress_outer + ((size_t)f * 2 + (size_t)(reply != 0)) * OUTER_LEN, OUTER_LEN);
    uint8_t *ip = buf + OUTER_LEN, *tcp = ip + 20, *pl = tcp + 20;
    uint16_t seg = (uint16_t)(len - OUTER_LEN - 20);
    write_ipv4(ip, (uint16_t)(len - OUTER_LEN), (uint16_t)seq, client_addr((int)f),
               server_addr((int)f), IPPROTO_TCP);
    put16(tcp, (uint16_t)(1024 + (port_base + gen) % 64512u));
    put16(tcp + 2, PORT_REWRITE);
    put16(tcp + 4, (uint16_t)(seq_no >> 16));
    put16(tcp + 6, (uint16_t)seq_no);
    put16(tcp + 8, (uint16_t)(ack_no >> 16));
    put16(tcp + 10, (uint16_t)ack_no);
    tcp[12] = 5 << 4;
    tcp[13] = TCP_ACK_PSH;
    put16(tcp + 14, 65535);
    memset(tcp + 16, 0, 4);
    memcpy(pl, run_id, 4);
    memcpy(pl + 4, &seq, 8);
    memcpy(pl + 12, &now_ns, 8);
    memcpy(pl + STAMP_LEN, reply ? body_rewrite_reply : body_plain, body_len + grow);
    uint16_t c = (uint16_t)~csum_fold(csum_add(pseudo_sum(ip, seg), tcp, seg));
    memcpy(tcp + 16, &c, 2);
    return len;
}

/* --distinct: frame seq's own inner source address and port (65536 ports an address, from
 * 198.18.128.0 up, away from the flows' 198.18.0.x), the inner IPv4 checksum fixed. */
static void distinct_tuple(uint8_t *frame, uint64_t seq) {
    uint8_t *ip = frame + OUTER_LEN;
    uint32_t src = htonl(0xC6128000u + (uint32_t)(seq >> 16));
    memcpy(ip + 12, &src, 4);
    put16(ip + 20, (uint16_t)seq);
    memset(ip + 10, 0, 2);
    uint16_t c = (uint16_t)~csum_fold(csum_add(0, ip, 20));
    memcpy(ip + 10, &c, 2);
}

/* Fill slot buf with frame number seq, stamped with send time now_ns; its length. */
static size_t make_frame(uint8_t *buf, uint64_t seq, uint64_t now_ns) {
    if (cfg.egress)
        return egress_frame(buf, seq, now_ns);
    if (cfg.rewrite)
        return rewrite_frame(buf, seq, now_ns, 0, 0);
    struct tmpl *t = &templates[flow_of(seq) * 2 + is_weak(seq)];
    memcpy(buf, t->frame, (size_t)frame_len);
    uint8_t *stamp = buf + OUTER_LEN + INNER_HDR + 4;
    memcpy(stamp, &seq, 8);
    memcpy(stamp + 8, &now_ns, 8);
    uint16_t c;
    if (cfg.distinct) {
        uint8_t *ip = buf + OUTER_LEN;
        uint16_t ulen = (uint16_t)(frame_len - OUTER_LEN - 20);
        distinct_tuple(buf, seq);
        memset(ip + 26, 0, 2);
        c = (uint16_t)~csum_fold(csum_add(pseudo_sum(ip, ulen), ip + 20, ulen));
    } else {
        c = (uint16_t)~csum_fold(csum_add(t->udp_sum, stamp, 16));
    }
    if (c == 0)
        c = 0xffff;
    memcpy(buf + OUTER_LEN + 20 + 6, &c, 2);
    return (size_t)frame_len;
}

static int bad(enum reason r) {
    reasons[r]++;
    n_invalid++;
    return 0;
}

/* The outer IPv4 and UDP headers of reply b (n bytes) to frame t: addresses swapped, lengths
 * right, IPv4 header checksum valid; GWLB's source port kept, destination 6081, UDP checksum 0
 * or valid. */
static int outer_ok(const uint8_t *b, size_t n, const uint8_t *t) {
    if (b[0] != 0x45 || get16(b + 2) != n || b[9] != IPPROTO_UDP || (get16(b + 6) & 0x3fff) ||
        memcmp(b + 12, t + 16, 4) || memcmp(b + 16, t + 12, 4) ||
        csum_fold(csum_add(0, b, 20)) != 0xffff)
        return bad(R_OUTER_IP);
    if (memcmp(b + 20, t + 20, 4) || get16(b + 24) != n - 20)
        return bad(R_OUTER_UDP);
    if (get16(b + 26) != 0 &&
        csum_fold(csum_add(pseudo_sum(b, (uint16_t)(n - 20)), b + 20, n - 20)) != 0xffff)
        return bad(R_OUTER_UDP);
    return 1;
}

/* TCP reply b (n bytes) against the frame it must be, expected (len bytes, outer addresses not
 * yet swapped): byte for byte from the Geneve header on; with exact_sums 0 the inner IPv4 and
 * TCP checksums need only be valid (a rewrite's incremental update may write 0 for 0xffff). */
static int tcp_reply_ok(const uint8_t *b, size_t n, const uint8_t *expected, size_t len,
                        int exact_sums) {
    n_validated++;
    if (n != len)
        return bad(R_LENGTH);
    if (!outer_ok(b, n, expected))
        return 0;
    if (memcmp(b + 28, expected + 28, OUTER_LEN - 28))
        return bad(R_GENEVE);
    const uint8_t *ip = b + OUTER_LEN, *eip = expected + OUTER_LEN;
    uint16_t seg = (uint16_t)(len - OUTER_LEN - 20);
    if (exact_sums ? memcmp(ip, eip, 20)
                   : memcmp(ip, eip, 10) || memcmp(ip + 12, eip + 12, 8) ||
                         csum_fold(csum_add(0, ip, 20)) != 0xffff)
        return bad(R_INNER_IP);
    if (exact_sums ? memcmp(ip + 20, eip + 20, 20)
                   : memcmp(ip + 20, eip + 20, 16) || memcmp(ip + 38, eip + 38, 2) ||
                         csum_fold(csum_add(pseudo_sum(ip, seg), ip + 20, seg)) != 0xffff)
        return bad(R_INNER_TCP);
    if (memcmp(ip + INNER_TCP_HDR, eip + INNER_TCP_HDR, len - OUTER_LEN - INNER_TCP_HDR))
        return bad(R_PAYLOAD);
    return 1;
}

/* The egress mix: an allowed flow is forwarded unchanged, so the reply is the frame as sent
 * (rebuilt from seq and the stamp's send time) behind the swapped outer header. */
static int validate_egress(const uint8_t *b, size_t n, uint64_t seq, uint64_t sent_ns) {
    static uint8_t *expected;
    if (!expected && !(expected = malloc((size_t)hello_frame_len + (size_t)frame_len)))
        abort();
    return tcp_reply_ok(b, n, expected, egress_frame(expected, seq, sent_ns), 1);
}

/* The rewrite mixes: the frame rebuilt from seq and its send time with the replacement in
 * it, longer by the growth, its sequence number moved by the growth of the connection's
 * earlier frames that the appliance rewrote; compared byte for byte but for the checksums,
 * which must be valid. The frames it rewrote are those that came back: the flow starts at the
 * first frame the appliance saw (frames lost before it are not the flow's), and after a lost
 * frame it drops the connection's later data (a gap), so a reply's earlier frames that came
 * back are the frames since the flow started. */
static int validate_rewrite(const uint8_t *b, size_t n, uint64_t seq, uint64_t sent_ns) {
    static uint8_t *expected;
    if (!expected && !(expected = malloc((size_t)frame_len + 64)))
        abort();
    uint64_t flows = (uint64_t)cfg.flows, i = seq % (flows * (uint64_t)cfg.flow_packets) / flows;
    uint32_t before = 0;
    for (uint64_t j = 1; j <= i; j++) {
        uint64_t s = seq - j * flows;
        before += (seen[s >> 3] >> (s & 7)) & 1;
    }
    if (!tcp_reply_ok(b, n, expected, rewrite_frame(expected, seq, sent_ns, 1, before), 0))
        return 0;
    n_weak_ok++;
    return 1;
}

/* Check a reply against what the appliance must send for frame seq. */
static int validate(const uint8_t *b, size_t n, uint64_t seq) {
    int weak = is_weak(seq);
    const uint8_t *t = templates[flow_of(seq) * 2 + weak].frame;
    static uint8_t *expected;
    if (cfg.distinct) { /* the template with this frame's own 5-tuple */
        if (!expected && !(expected = malloc((size_t)frame_len)))
            abort();
        memcpy(expected, t, (size_t)frame_len);
        distinct_tuple(expected, seq);
        t = expected;
    }
    size_t grow = weak ? 2 : 0;
    n_validated++;
    if (n != (size_t)frame_len + grow)
        return bad(R_LENGTH);
    if (!outer_ok(b, n, t))
        return 0;
    /* Geneve header and options byte for byte */
    if (memcmp(b + 28, t + 28, OUTER_LEN - 28))
        return bad(R_GENEVE);
    /* inner IPv4: as sent but for the total length, checksum valid */
    const uint8_t *ip = b + OUTER_LEN, *tip = t + OUTER_LEN;
    if (get16(ip + 2) != get16(tip + 2) + grow || memcmp(ip, tip, 2) ||
        memcmp(ip + 4, tip + 4, 6) || memcmp(ip + 12, tip + 12, 8) ||
        csum_fold(csum_add(0, ip, 20)) != 0xffff)
        return bad(R_INNER_IP);
    /* inner UDP: ports kept, length right, checksum present and valid */
    const uint8_t *udp = ip + 20;
    size_t ulen = n - OUTER_LEN - 20;
    if (memcmp(udp, tip + 20, 4) || get16(udp + 4) != ulen || get16(udp + 6) == 0 ||
        csum_fold(csum_add(pseudo_sum(ip, (uint16_t)ulen), udp, ulen)) != 0xffff)
        return bad(R_INNER_UDP);
    /* payload: stamp as sent, body unchanged or rewritten */
    const uint8_t *body = udp + 8 + STAMP_LEN;
    if (memcmp(body, weak ? body_weak_reply : body_plain, body_len + grow))
        return bad(R_PAYLOAD);
    if (weak)
        n_weak_ok++;
    return 1;
}

static void record_latency(int64_t ns) {
    if (ns < 0)
        ns = 0;
    lat_count++;
    lat_sum_ns += (double)ns;
    if ((double)ns > lat_max_ns)
        lat_max_ns = (double)ns;
    uint64_t bin = (uint64_t)ns / HIST_STEP_NS;
    if (bin < HIST_BINS)
        hist[bin]++;
    else
        hist_over++;
}

static double percentile_us(double q) {
    if (!lat_count)
        return -1;
    uint64_t want = (uint64_t)(q * (double)lat_count);
    if (want >= lat_count)
        want = lat_count - 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < HIST_BINS; i++) {
        acc += hist[i];
        if (acc > want)
            return (double)(i * HIST_STEP_NS + HIST_STEP_NS / 2) / 1000.0;
    }
    return lat_max_ns / 1000.0;
}

/* One received datagram (with its IPv4 header, as raw sockets deliver). */
static void on_reply(const uint8_t *b, size_t n, int truncated, uint64_t rx_ns) {
    if (n < 28 || (b[0] >> 4) != 4 || b[9] != IPPROTO_UDP) {
        n_other++;
        return;
    }
    size_t ihl = (size_t)(b[0] & 15) * 4;
    if (!memcmp(b + 12, &cfg.src, 4)) {
        n_own++; /* one of ours on its way out */
        return;
    }
    if (memcmp(b + 12, &cfg.dst, 4) || n < ihl + 8) {
        n_other++;
        return;
    }
    /* Any UDP from the appliance is a reply; wrong ports are for validate() to report. */
    if (truncated) {
        bad(R_TRUNCATED);
        return;
    }
    /* Find the stamp the way a parser would, so a broken reply is still accounted. */
    size_t g = ihl + 8;
    if (n < g + 8) {
        bad(R_UNPARSABLE);
        return;
    }
    size_t inner = g + 8 + (size_t)(b[g] & 0x3f) * 4;
    if (n < inner + 20) {
        bad(R_UNPARSABLE);
        return;
    }
    size_t stamp = inner + (size_t)(b[inner] & 15) * 4 + 8, fixed = OUTER_LEN + INNER_HDR;
    if (cfg.rewrite) { /* after the TCP header */
        size_t tcp = stamp - 8;
        stamp = n >= tcp + 20 ? tcp + (size_t)(b[tcp + 12] >> 4) * 4 : n;
        fixed = OUTER_LEN + INNER_TCP_HDR;
    }
    if (cfg.egress) { /* after the TCP header; in a hello, in its random */
        size_t tcp = stamp - 8;
        stamp = n >= tcp + 20 ? tcp + (size_t)(b[tcp + 12] >> 4) * 4 : n;
        fixed = OUTER_LEN + INNER_TCP_HDR;
        if (n - (stamp < n ? stamp : n) == HELLO_LEN)
            stamp += HELLO_RANDOM;
        if (n == (size_t)hello_frame_len)
            fixed += HELLO_RANDOM;
    }
    /* A reply with a broken header still has its stamp where we put it. */
    if ((n < stamp + STAMP_LEN || memcmp(b + stamp, run_id, 4)) && n >= fixed + STAMP_LEN &&
        !memcmp(b + fixed, run_id, 4))
        stamp = fixed;
    if (n < stamp + STAMP_LEN) {
        bad(R_UNPARSABLE);
        return;
    }
    if (memcmp(b + stamp, run_id, 4)) {
        n_stale++; /* an earlier run's, or a stamp the appliance broke (then it shows as loss) */
        return;
    }
    uint64_t seq, sent_ns;
    memcpy(&seq, b + stamp + 4, 8);
    memcpy(&sent_ns, b + stamp + 12, 8);
    if (seq >= n_sent) {
        bad(R_SEQ);
        return;
    }
    if (seen[seq >> 3] & (1u << (seq & 7))) {
        n_dups++;
        return;
    }
    seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
    n_unique++;
    record_latency((int64_t)(rx_ns - sent_ns));
    if (cfg.rewrite) { /* every reply: each one was rewritten */
        validate_rewrite(b, n, seq, sent_ns);
    } else if (cfg.egress) {
        if (cfg.validate_every == 1 || n_unique % (uint64_t)cfg.validate_every == 0 ||
            egress_is_hello(seq))
            validate_egress(b, n, seq, sent_ns);
    } else if (cfg.validate_every == 1 || n_unique % (uint64_t)cfg.validate_every == 0 ||
               is_weak(seq)) {
        validate(b, n, seq);
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --src A --dst B [--mix forward|rules|egress|rewrite|\n"
            "               rewrite-same] [--size BYTES]\n"
            "               [--rate PPS|0] [--duration S] [--warmup S] [--drain S] [--flows N]\n"
            "               [--batch N] [--distinct 0|1] [--flow-packets N (egress, rewrite)]\n"
            "               [--dump-frames N (print the first N frames in hex, send nothing)]\n"
            "               [--dump-replies 1 (rewrite: print the replies they must get)]\n"
            "               [--validate-every N] [--max-packets N]\n"
            "               [--tx packet --ifname IF --dst-mac MAC | --tx raw]\n");
    exit(2);
}

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

static int open_sockets(int *tx, int *rx, int *hold, struct sockaddr_ll *ll, uint8_t *eth) {
    int one = 1, big = 32 << 20;
    if (cfg.tx_packet) {
        /* A packet socket skips the IPv4 output path (route, neighbour, qdisc) that a raw
         * IP_HDRINCL socket pays per frame, so the generator outruns the appliances. */
        *tx = socket(AF_PACKET, SOCK_RAW, 0);
        if (*tx >= 0) {
            setsockopt(*tx, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
            struct ifreq ifr = {0};
            snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", cfg.ifname);
            if (ioctl(*tx, SIOCGIFHWADDR, &ifr)) {
                perror("loadgen: SIOCGIFHWADDR");
                return -1;
            }
            memcpy(eth, cfg.dst_mac, 6);
            memcpy(eth + 6, ifr.ifr_hwaddr.sa_data, 6);
            eth[12] = 0x08; /* ETH_P_IP */
            eth[13] = 0x00;
            ll->sll_family = AF_PACKET;
            ll->sll_ifindex = (int)if_nametoindex(cfg.ifname);
            ll->sll_protocol = htons(ETH_P_IP);
            ll->sll_halen = 6;
            memcpy(ll->sll_addr, cfg.dst_mac, 6);
            if (!ll->sll_ifindex) {
                perror("loadgen: if_nametoindex");
                return -1;
            }
        }
    } else {
        *tx = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    }
    *rx = socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
    *hold = socket(AF_INET, SOCK_DGRAM, 0);
    if (*tx < 0 || *rx < 0 || *hold < 0) {
        perror("loadgen: socket");
        return -1;
    }
    if (!cfg.tx_packet)
        setsockopt(*tx, IPPROTO_IP, IP_HDRINCL, &one, sizeof one);
    if (setsockopt(*tx, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big))
        setsockopt(*tx, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (setsockopt(*rx, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big))
        setsockopt(*rx, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(*rx, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    setsockopt(*rx, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    /* Hold port 6081 (no ICMP port-unreachable for the replies) but queue nothing. */
    struct sock_filter drop_all = BPF_STMT(BPF_RET | BPF_K, 0);
    struct sock_fprog prog = {1, &drop_all};
    setsockopt(*hold, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(GENEVE_PORT),
                            .sin_addr = cfg.src};
    if (bind(*hold, (struct sockaddr *)&a, sizeof a)) {
        perror("loadgen: bind 6081");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    cfg.size = 156;
    cfg.rate = 0;
    cfg.duration = 2;
    cfg.warmup = 0.3;
    cfg.drain = 1.0;
    cfg.max_packets = 50000000;
    cfg.flows = 256;
    cfg.batch = 64;
    cfg.validate_every = 8;
    cfg.flow_packets = 200; /* 100 each way */
    int have_src = 0, have_dst = 0, have_mac = 0;
    cfg.tx_packet = 1;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--src"))
            have_src = inet_pton(AF_INET, v, &cfg.src) == 1;
        else if (!strcmp(k, "--dst"))
            have_dst = inet_pton(AF_INET, v, &cfg.dst) == 1;
        else if (!strcmp(k, "--mix")) {
            if (strcmp(v, "forward") && strcmp(v, "rules") && strcmp(v, "egress") &&
                strcmp(v, "rewrite") && strcmp(v, "rewrite-same"))
                usage();
            cfg.rewrite = !strcmp(v, "rewrite") ? 1 : !strcmp(v, "rewrite-same") ? 2 : 0;
            cfg.rules = !strcmp(v, "rules");
            cfg.egress = !strcmp(v, "egress");
        } else if (!strcmp(k, "--flow-packets"))
            cfg.flow_packets = atoi(v);
        else if (!strcmp(k, "--dump-frames"))
            cfg.dump_frames = atoi(v);
        else if (!strcmp(k, "--dump-replies"))
            cfg.dump_replies = atoi(v) != 0;
        else if (!strcmp(k, "--size"))
            cfg.size = atoi(v);
        else if (!strcmp(k, "--rate"))
            cfg.rate = atof(v);
        else if (!strcmp(k, "--duration"))
            cfg.duration = atof(v);
        else if (!strcmp(k, "--warmup"))
            cfg.warmup = atof(v);
        else if (!strcmp(k, "--drain"))
            cfg.drain = atof(v);
        else if (!strcmp(k, "--flows"))
            cfg.flows = atoi(v);
        else if (!strcmp(k, "--distinct"))
            cfg.distinct = atoi(v) != 0;
        else if (!strcmp(k, "--batch"))
            cfg.batch = atoi(v);
        else if (!strcmp(k, "--validate-every"))
            cfg.validate_every = atoi(v);
        else if (!strcmp(k, "--tx")) {
            if (strcmp(v, "packet") && strcmp(v, "raw"))
                usage();
            cfg.tx_packet = !strcmp(v, "packet");
        } else if (!strcmp(k, "--ifname"))
            cfg.ifname = v;
        else if (!strcmp(k, "--dst-mac")) {
            unsigned m[6];
            if (sscanf(v, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6)
                usage();
            for (int j = 0; j < 6; j++)
                cfg.dst_mac[j] = (uint8_t)m[j];
            have_mac = 1;
        } else if (!strcmp(k, "--max-packets"))
            cfg.max_packets = strtoull(v, NULL, 10);
        else
            usage();
    }
    if (cfg.dump_replies && (!cfg.rewrite || !cfg.dump_frames))
        usage();
    if (cfg.dump_frames > 0) { /* nothing is sent: addresses and interface are optional */
        have_src = have_dst = 1;
        cfg.tx_packet = 0;
    }
    if (cfg.tx_packet && (!cfg.ifname || !have_mac)) {
        fprintf(stderr, "loadgen: --tx packet needs --ifname and --dst-mac\n");
        usage();
    }
    if (!have_src || !have_dst || cfg.size < MIN_FRAME || cfg.size > MAX_FRAME ||
        cfg.flows < 1 || cfg.flows > 40000 || cfg.batch < 1 || cfg.batch > MAX_BATCH ||
        cfg.validate_every < 1 || cfg.rate < 0 || cfg.duration <= 0 || cfg.max_packets < 1 ||
        cfg.flow_packets < 1 || cfg.dump_frames < 0)
        usage();
    /* The egress mix: the TCP payload must hold the stamp, and is told from a hello by length. */
    if (cfg.egress && (cfg.distinct || cfg.size < OUTER_LEN + INNER_TCP_HDR + STAMP_LEN + 16 ||
                       cfg.size == OUTER_LEN + INNER_TCP_HDR + HELLO_LEN)) {
        fprintf(stderr, "loadgen: --mix egress takes no --distinct, and a --size of at least %d "
                        "other than %d\n", OUTER_LEN + INNER_TCP_HDR + STAMP_LEN + 16,
                OUTER_LEN + INNER_TCP_HDR + HELLO_LEN);
        exit(2);
    }
    if (cfg.rewrite && (cfg.distinct || cfg.size < OUTER_LEN + INNER_TCP_HDR + STAMP_LEN + 16)) {
        fprintf(stderr, "loadgen: --mix rewrite takes no --distinct, and a --size of at least %d\n",
                OUTER_LEN + INNER_TCP_HDR + STAMP_LEN + 16);
        exit(2);
    }
    if (cfg.duration > MAX_DURATION)
        cfg.duration = MAX_DURATION;
    if (cfg.drain > 5)
        cfg.drain = 5;
    if (cfg.warmup >= cfg.duration)
        cfg.warmup = 0;
    frame_len = cfg.size;

    if (cfg.dump_frames > 0) { /* the mix as it would be sent, one frame a line, for checks */
        build_templates();
        if (cfg.egress)
            build_egress();
        if (cfg.rewrite)
            build_rewrite();
        static uint8_t frame[MAX_FRAME];
        for (uint64_t seq = 0; seq < (uint64_t)cfg.dump_frames; seq++) {
            uint64_t ts = 1700000000000000000ull + seq * 1000u; /* the same in both dumps */
            size_t n = make_frame(frame, seq, ts);
            if (cfg.dump_replies) /* every earlier frame of the connection rewritten */
                n = rewrite_frame(frame, seq, ts, 1,
                                  (uint32_t)(seq % ((uint64_t)cfg.flows * (uint64_t)cfg.flow_packets) /
                                             (uint64_t)cfg.flows));
            for (size_t i = 0; i < n; i++)
                printf("%02x", frame[i]);
            putchar('\n');
        }
        return 0;
    }

    int tx, rx, hold;
    struct sockaddr_ll ll = {0};
    uint8_t eth[14];
    if (open_sockets(&tx, &rx, &hold, &ll, eth))
        return 1;
    size_t l2 = cfg.tx_packet ? 14 : 0; /* Ethernet header in front of each frame */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* microsecond sleeps for pacing */
    uint32_t id = (uint32_t)getpid() * 2654435761u ^ (uint32_t)real_ns();
    memcpy(run_id, &id, 4);
    build_templates();
    if (cfg.egress)
        build_egress();
    if (cfg.rewrite)
        build_rewrite();
    seen = calloc((size_t)(cfg.max_packets / 8 + 1), 1);
    hist = calloc(HIST_BINS, sizeof *hist);
    size_t slot = l2 + (size_t)(hello_frame_len > frame_len ? hello_frame_len : frame_len);
    uint8_t *txbuf = malloc((size_t)MAX_BATCH * slot);
    uint8_t *rxbuf = malloc((size_t)MAX_BATCH * RX_BUF);
    static struct mmsghdr txm[MAX_BATCH], rxm[MAX_BATCH];
    static struct iovec txv[MAX_BATCH], rxv[MAX_BATCH];
    static char ctrl[MAX_BATCH][128];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = cfg.dst};
    for (int i = 0; i < MAX_BATCH; i++) {
        txv[i].iov_base = txbuf + (size_t)i * slot;
        txv[i].iov_len = slot;
        memcpy(txv[i].iov_base, eth, l2);
        if (cfg.tx_packet) {
            txm[i].msg_hdr.msg_name = &ll;
            txm[i].msg_hdr.msg_namelen = sizeof ll;
        } else {
            txm[i].msg_hdr.msg_name = &to;
            txm[i].msg_hdr.msg_namelen = sizeof to;
        }
        txm[i].msg_hdr.msg_iov = &txv[i];
        txm[i].msg_hdr.msg_iovlen = 1;
        rxv[i].iov_base = rxbuf + (size_t)i * RX_BUF;
        rxv[i].iov_len = RX_BUF;
        rxm[i].msg_hdr.msg_iov = &rxv[i];
        rxm[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t send_errors = 0, window_rx = 0, last_errno = 0;
    double t0 = mono(), send_end = t0 + cfg.duration, sent_until = 0;
    double win_start = t0 + cfg.warmup, last_rx = t0, now = t0;
    int sending = 1;
    for (;;) {
        now = mono();
        if (sending && (now >= send_end || n_sent >= cfg.max_packets || interrupted)) {
            sending = 0;
            sent_until = now;
        }
        if (sending) {
            uint64_t want = (uint64_t)cfg.batch;
            if (cfg.rate > 0) {
                uint64_t due = (uint64_t)((now - t0) * cfg.rate) + 1;
                want = due > n_sent ? due - n_sent : 0;
                if (want > (uint64_t)cfg.batch)
                    want = (uint64_t)cfg.batch;
            }
            if (want > cfg.max_packets - n_sent)
                want = cfg.max_packets - n_sent;
            if (!want) {
                /* Nothing due: sleep until the next frame is due or a reply comes. Reply times
                 * are kernel timestamps, so a late wake-up does not change the latencies. */
                double wait = ((double)(n_sent + 1) / cfg.rate) - (now - t0);
                if (wait > 20e-6) {
                    struct pollfd pfd = {rx, POLLIN, 0};
                    struct timespec ts = {0, (long)((wait - 10e-6) * 1e9)};
                    if (wait > 0.1)
                        ts.tv_nsec = 100000000;
                    ppoll(&pfd, 1, &ts, NULL);
                }
            }
            if (want) {
                uint64_t ts = real_ns();
                for (uint64_t i = 0; i < want; i++)
                    txv[i].iov_len =
                        l2 + make_frame((uint8_t *)txv[i].iov_base + l2, n_sent + i, ts);
                int r = sendmmsg(tx, txm, (unsigned)want, MSG_DONTWAIT);
                if (r > 0)
                    n_sent += (uint64_t)r;
                else if (r < 0) {
                    send_errors++;
                    last_errno = (uint64_t)errno;
                }
            }
        } else if (now - sent_until >= cfg.drain || now - last_rx >= 0.1 || interrupted) {
            break;
        } else {
            struct pollfd pfd = {rx, POLLIN, 0};
            struct timespec ts = {0, 5000000};
            ppoll(&pfd, 1, &ts, NULL);
        }
        /* Read everything that is there; in rate mode this loop is also the wait. */
        for (int rounds = 0; rounds < 8; rounds++) {
            for (int i = 0; i < MAX_BATCH; i++) {
                rxm[i].msg_hdr.msg_control = ctrl[i];
                rxm[i].msg_hdr.msg_controllen = sizeof ctrl[i];
                rxm[i].msg_hdr.msg_flags = 0;
            }
            int r = recvmmsg(rx, rxm, MAX_BATCH, MSG_DONTWAIT, NULL);
            if (r <= 0)
                break;
            uint64_t fallback_ns = real_ns();
            double rx_mono = mono();
            last_rx = rx_mono;
            for (int i = 0; i < r; i++) {
                uint64_t rx_ns = fallback_ns;
                struct msghdr *h = &rxm[i].msg_hdr;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                    if (c->cmsg_level != SOL_SOCKET)
                        continue;
                    if (c->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        memcpy(&ts, CMSG_DATA(c), sizeof ts);
                        rx_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
                    } else if (c->cmsg_type == SO_RXQ_OVFL) {
                        uint32_t d;
                        memcpy(&d, CMSG_DATA(c), 4);
                        if (d > rx_drops)
                            rx_drops = d;
                    }
                }
                uint64_t before = n_unique;
                on_reply(rxv[i].iov_base, rxm[i].msg_len, (h->msg_flags & MSG_TRUNC) != 0, rx_ns);
                if (n_unique != before && rx_mono >= win_start && rx_mono <= send_end)
                    window_rx++;
            }
            if (r < MAX_BATCH)
                break;
        }
    }
    double send_time = sent_until - t0;
    double window = (send_end < sent_until ? send_end : sent_until) - win_start;
    uint64_t lost = n_sent - n_unique;
    printf("{\"mix\": \"%s\", \"size\": %d, \"rate\": %.0f, \"duration\": %.3f, "
           "\"flows\": %d, \"sent\": %llu, \"tx_pps\": %.0f, \"received\": %llu, "
           "\"rx_pps\": %.0f, \"lost\": %llu, \"loss\": %.6f, \"duplicates\": %llu, "
           "\"invalid\": %llu, \"validated\": %llu, \"rewritten_ok\": %llu, "
           "\"hellos\": %llu, \"flow_packets\": %d, \"invalid_reasons\": {",
           cfg.rewrite == 1 ? "rewrite" : cfg.rewrite ? "rewrite-same" :
           cfg.egress ? "egress" : cfg.rules ? "rules" : "forward", frame_len, cfg.rate, send_time, cfg.flows,
           (unsigned long long)n_sent, send_time > 0 ? (double)n_sent / send_time : 0.0,
           (unsigned long long)n_unique, window > 0 ? (double)window_rx / window : 0.0,
           (unsigned long long)lost, n_sent ? (double)lost / (double)n_sent : 0.0,
           (unsigned long long)n_dups, (unsigned long long)n_invalid,
           (unsigned long long)n_validated, (unsigned long long)n_weak_ok,
           (unsigned long long)(cfg.egress ? egress_hellos(n_sent) : 0),
           cfg.egress || cfg.rewrite ? cfg.flow_packets : 0);
    int first = 1;
    for (int r = 0; r < R_COUNT; r++) {
        if (!reasons[r])
            continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", REASON_NAMES[r],
               (unsigned long long)reasons[r]);
        first = 0;
    }
    printf("}, \"p50_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"max_us\": %.1f, "
           "\"rx_socket_drops\": %u, \"send_errors\": %llu, \"send_errno\": %llu, "
           "\"own_seen\": %llu, \"other_seen\": %llu, \"stale\": %llu}\n",
           percentile_us(0.50), percentile_us(0.99),
           lat_count ? lat_sum_ns / (double)lat_count / 1000.0 : -1.0, lat_max_ns / 1000.0,
           rx_drops, (unsigned long long)send_errors, (unsigned long long)last_errno,
           (unsigned long long)n_own, (unsigned long long)n_other, (unsigned long long)n_stale);
    return interrupted ? 130 : 0;
}
