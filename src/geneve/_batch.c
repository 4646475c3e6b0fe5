/*
 * Batched socket I/O for the appliance: recvmmsg(2) and sendmmsg(2), which Python's socket
 * module does not offer. One system call moves a whole batch of GWLB frames.
 *
 * The caller owns every buffer (one slot per frame, allocated once) and passes the same
 * pointer arrays on every call, so nothing is allocated per packet on either side.
 *
 * Receive works on a UDP socket bound to the Geneve port with IP_PKTINFO on: the kernel strips
 * the outer IPv4 and UDP headers, so each datagram lands 28 bytes into its slot and this code
 * writes an equivalent outer header in front of it (source = GWLB, destination = the local
 * address the datagram was sent to, GWLB's source port, the Geneve port, UDP checksum 0 as
 * GWLB sends it). The Python pipeline then sees the frame exactly as it was on the wire.
 *
 * Every entry point is told the size of each buffer and the length of each array it gets, and
 * checks every length, count and size against them before it reads or writes anything: an
 * impossible argument returns GENEVE_BATCH_BAD_ARGUMENT, never reaches memory it was not given.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "_batch.h"
#include "_flowtable.h"
#include "_layout.h"

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

int geneve_recv_batch(int fd, uint8_t **slots, int slot_size, int n, int port,
                      int32_t *lens, uint32_t *sources)
{
    struct mmsghdr msgs[GENEVE_BATCH_MAX];
    struct iovec iov[GENEVE_BATCH_MAX];
    struct sockaddr_in from[GENEVE_BATCH_MAX];
    /* Room for one IP_PKTINFO control message per datagram. */
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } control[GENEVE_BATCH_MAX];
    int i, got;

    /* Each slot holds the outer IPv4 and UDP headers (28 bytes) this code writes, and more. */
    if (n <= 0 || n > GENEVE_BATCH_MAX || slot_size <= GENEVE_LAYOUT_GENEVE || port < 0 ||
        port > 0xffff || !slots || !lens || !sources)
        return GENEVE_BATCH_BAD_ARGUMENT;
    for (i = 0; i < n; i++)
        if (!slots[i])
            return GENEVE_BATCH_BAD_ARGUMENT;
    memset(msgs, 0, sizeof(msgs[0]) * (size_t)n);
    for (i = 0; i < n; i++) {
        iov[i].iov_base = slots[i] + 28;
        iov[i].iov_len = (size_t)slot_size - 28;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        msgs[i].msg_hdr.msg_control = control[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(control[i].buf);
    }
    /* Block (up to the socket's SO_RCVTIMEO) for the first datagram, then take what is queued. */
    got = recvmmsg(fd, msgs, (unsigned int)n, MSG_WAITFORONE, NULL);
    if (got < 0)
        return -errno;
    for (i = 0; i < got; i++) {
        uint8_t *f = slots[i];
        uint32_t len = msgs[i].msg_len;
        uint32_t local = 0;
        int unicast = 1;
        struct cmsghdr *c;
        sources[i] = from[i].sin_addr.s_addr;
        if ((msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len + 28 > 0xffffu) {
            lens[i] = GENEVE_RECV_TOO_LONG; /* cannot be a valid frame: counted as malformed */
            continue;
        }
        for (c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                struct in_pktinfo info;
                memcpy(&info, CMSG_DATA(c), sizeof(info));
                local = info.ipi_addr.s_addr;
                /* The kernel gives a datagram to one of our addresses that address as spec_dst,
                 * and a broadcast or multicast one the address of the interface instead. */
                unicast = info.ipi_addr.s_addr == info.ipi_spec_dst.s_addr;
            }
        }
        if (!unicast) {
            lens[i] = GENEVE_RECV_NOT_UNICAST; /* every socket on the port got it: answer none */
            continue;
        }
        f[0] = 0x45;
        f[1] = 0;
        put16(f + 2, len + 28);
        memset(f + 4, 0, 4); /* ID 0, no flags: the kernel fills the ID on send */
        f[8] = 64;
        f[9] = 17;
        f[10] = f[11] = 0; /* the kernel always fills the header checksum of IP_HDRINCL */
        memcpy(f + 12, &from[i].sin_addr.s_addr, 4);
        memcpy(f + 16, &local, 4);
        memcpy(f + 20, &from[i].sin_port, 2);
        put16(f + 22, (uint32_t)port);
        put16(f + 24, len + 8);
        f[26] = f[27] = 0;
        lens[i] = (int32_t)(len + 28);
    }
    return got;
}

int geneve_send_batch(int fd, uint8_t **frames, int slot_size, const int32_t *lens, int n,
                      int32_t *last_errno)
{
    struct mmsghdr msgs[GENEVE_BATCH_MAX];
    struct iovec iov[GENEVE_BATCH_MAX];
    struct sockaddr_in to[GENEVE_BATCH_MAX];
    int i, count = 0, done = 0, failed = 0;

    if (n < 0 || n > GENEVE_BATCH_MAX || slot_size < 0 || (n && (!frames || !lens)))
        return GENEVE_BATCH_BAD_ARGUMENT;
    /* Checked for the whole batch first: a bad length sends nothing. */
    for (i = 0; i < n; i++)
        if (lens[i] > slot_size || (lens[i] >= 20 && !frames[i]))
            return GENEVE_BATCH_BAD_ARGUMENT;
    for (i = 0; i < n; i++) {
        if (lens[i] < 20)
            continue; /* dropped, or not a frame */
        iov[count].iov_base = frames[i];
        iov[count].iov_len = (size_t)lens[i];
        memset(&to[count], 0, sizeof(to[count]));
        to[count].sin_family = AF_INET;
        memcpy(&to[count].sin_addr.s_addr, frames[i] + 16, 4);
        memset(&msgs[count], 0, sizeof(msgs[count]));
        msgs[count].msg_hdr.msg_iov = &iov[count];
        msgs[count].msg_hdr.msg_iovlen = 1;
        msgs[count].msg_hdr.msg_name = &to[count];
        msgs[count].msg_hdr.msg_namelen = sizeof(to[count]);
        count++;
    }
    /* sendmmsg stops at the first message that fails; count it and go on after it. */
    while (done < count) {
        int sent = sendmmsg(fd, msgs + done, (unsigned int)(count - done), 0);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            failed++;
            if (last_errno)
                *last_errno = errno;
            done++;
        } else {
            done += sent;
            if (sent == 0)
                break;
        }
    }
    return failed;
}

static uint32_t be16p(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static uint32_t be32p(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int interesting(const uint8_t *table, const uint8_t *l4)
{
    /* No table: the modifier wants every packet of this protocol. */
    return table == NULL || table[be16p(l4)] || table[be16p(l4 + 2)];
}

/* Whether [p, p+n) contains one of the needles (concatenated, with their lengths, each at
 * least 1 and all inside the needles buffer: geneve_fast_forward checked). */
static int contains_any(const uint8_t *p, size_t n, const uint8_t *needles,
                        const int32_t *needle_lens, int n_needles)
{
    int k;
    for (k = 0; k < n_needles; k++) {
        size_t m = (size_t)needle_lens[k];
        if (m <= n && memmem(p, n, needles, m) != NULL)
            return 1;
        needles += m;
    }
    return 0;
}

/* The arguments' own consistency, checked before any frame is read (0: sound). */
static int check_arguments(uint8_t **slots, int slot_size, const int32_t *lens,
                           const uint32_t *sources, int n, const uint32_t *admitted,
                           int n_admitted, const uint8_t *udp_interest, size_t udp_interest_size,
                           const uint8_t *tcp_interest, size_t tcp_interest_size,
                           const uint8_t *needles, size_t needles_size,
                           const int32_t *needle_lens, int n_needles, int max_inner, int port,
                           const int32_t *out, const int32_t *todo, const int32_t *fast)
{
    int i;
    size_t used = 0;
    if (n < 0 || n > GENEVE_BATCH_MAX || slot_size < 0 || n_admitted < 0 || n_needles < -1 ||
        max_inner < 0 || port < 0 || port > 0xffff || !fast)
        return GENEVE_BATCH_BAD_ARGUMENT;
    if (n && (!slots || !lens || !sources || !out || !todo))
        return GENEVE_BATCH_BAD_ARGUMENT;
    if (n_admitted && !admitted)
        return GENEVE_BATCH_BAD_ARGUMENT;
    /* A table has one flag per port, or is NULL (every port is of interest). */
    if ((udp_interest && udp_interest_size != 65536) ||
        (tcp_interest && tcp_interest_size != 65536))
        return GENEVE_BATCH_BAD_ARGUMENT;
    if (n_needles > 0 && (!needles || !needle_lens))
        return GENEVE_BATCH_BAD_ARGUMENT;
    for (i = 0; i < n_needles; i++) {
        /* An empty needle would match every payload: Interest refuses one, and so does C. */
        if (needle_lens[i] <= 0 || (size_t)needle_lens[i] > needles_size - used)
            return GENEVE_BATCH_BAD_ARGUMENT;
        used += (size_t)needle_lens[i];
    }
    for (i = 0; i < n; i++)
        if (!slots[i] || lens[i] > slot_size)
            return GENEVE_BATCH_BAD_ARGUMENT;
    return 0;
}

/* The flow of a usual-layout frame f (its key from the GWLB options and the inner headers),
 * counted when the fast path may decide it: geneve_flow_fast's result. */
static int flow_of(struct geneve_flow_table *flows, const uint8_t *f, int ipv4, uint8_t *l4,
                   uint32_t room, uint32_t proto, uint32_t length, int create, double now)
{
    if (!(now > -1e15) || !(now < 1e15)) /* a time the table refuses: Python says so */
        return GENEVE_FLOW_SLOW;
    uint8_t key[48];
    const uint8_t *ip = f + GENEVE_LAYOUT_INNER;
    const uint8_t *src = ip + (ipv4 ? 12 : 8), *dst = ip + (ipv4 ? 16 : 24);
    int alen = ipv4 ? 4 : 16, c, low, k;
    uint32_t sport = be16p(l4), dport = be16p(l4 + 2), pa, pb;
    const uint8_t *endpoint = f + GENEVE_LAYOUT_OPTION1 + 4, *a, *b;
    c = memcmp(src, dst, (size_t)alen);
    low = c < 0 || (c == 0 && sport <= dport);
    a = low ? src : dst;
    b = low ? dst : src;
    pa = low ? sport : dport;
    pb = low ? dport : sport;
    memset(key, 0, sizeof(key));
    memcpy(key, endpoint, 8);
    key[8] = (uint8_t)proto;
    memcpy(key + 9, a, (size_t)alen);
    memcpy(key + 9 + alen, b, (size_t)alen);
    k = 9 + 2 * alen;
    put16(key + k, pa);
    put16(key + k + 2, pb);
    key[47] = (uint8_t)(k + 4); /* the key's length, as _flowtable.c's make_key writes it */
    /* A TCP segment goes with its header: the flow may adjust its sequence numbers. */
    return geneve_flow_fast(flows, key, k + 4, low, proto == 6 ? l4[13] : 0,
                            be32p(f + GENEVE_LAYOUT_OPTION3 + 4), length, create, now,
                            proto == 6 ? l4 : NULL, proto == 6 ? room : 0);
}

/*
 * Forward, without Python, every received frame the modifier has declared no interest in.
 *
 * A frame qualifies only if Python would accept it unchanged on its fast path: outer IPv4
 * without options and not a fragment, UDP to the Geneve port with a consistent length, Geneve
 * version 0 with neither the O nor the C bit, exactly GWLB's three options, and an inner packet
 * within max_inner that is either IPv4 without options and not a fragment, or IPv6 with no
 * extension header (so not a fragment), inside the frame, carrying UDP (length consistent with
 * the IP header's) or TCP (data offset inside the packet) on ports absent from the interest
 * tables, or on ports in them but with a payload containing none of the needles
 * (n_needles < 0: no content filter, every payload counts); and its source must be one Python
 * has admitted. The offsets are those of the usual GWLB layout (_layout.h).
 * Such a frame gets its outer addresses swapped and out[i] set to its length; the index of
 * every other frame goes to todo[] for the Python pipeline. Returns how many went to todo, or
 * GENEVE_BATCH_BAD_ARGUMENT (nothing read or written) when the arguments contradict each other.
 */
int geneve_fast_forward(uint8_t **slots, int slot_size, const int32_t *lens,
                        const uint32_t *sources, int n, const uint32_t *admitted, int n_admitted,
                        const uint8_t *udp_interest, size_t udp_interest_size,
                        const uint8_t *tcp_interest, size_t tcp_interest_size,
                        const uint8_t *needles, size_t needles_size, const int32_t *needle_lens,
                        int n_needles, int max_inner, int port, int32_t *out, int32_t *todo,
                        int32_t *fast, struct geneve_flow_table *flows, double now,
                        int32_t *counts)
{
    enum {
        UDP = GENEVE_LAYOUT_OUTER_UDP,
        GENEVE = GENEVE_LAYOUT_GENEVE,
        INNER = GENEVE_LAYOUT_INNER
    };
    int i, k, left = 0, done = 0;
    if (check_arguments(slots, slot_size, lens, sources, n, admitted, n_admitted, udp_interest,
                        udp_interest_size, tcp_interest, tcp_interest_size, needles,
                        needles_size, needle_lens, n_needles, max_inner, port, out, todo, fast))
        return GENEVE_BATCH_BAD_ARGUMENT;
    if (flows && (!counts || now != now))
        return GENEVE_BATCH_BAD_ARGUMENT;
    if (counts)
        memset(counts, 0, 4 * sizeof(*counts));
    for (i = 0; i < n; i++) {
        const int32_t len = lens[i];
        uint8_t *f = slots[i];
        uint32_t total, ptype, ip_end, room, proto;
        uint8_t *l4;
        int ok = 0, wanted;
        out[i] = 0;
        for (k = 0; k < n_admitted && !ok; k++)
            ok = admitted[k] == sources[i];
        /* Every header byte read below lies in the first 96 (and len <= slot_size). */
        if (!ok || len < GENEVE_LAYOUT_INNER_IPV4_PAYLOAD)
            goto slow;
        total = be16p(f + 2);
        /* Outer IPv4: version 4, IHL 5, UDP, not a fragment, total length = the datagram. */
        if (f[0] != 0x45 || f[9] != 17 || (be16p(f + 6) & 0x3fff) || total != (uint32_t)len)
            goto slow;
        /* Outer UDP: the destination port and the length. */
        if (be16p(f + UDP + 2) != (uint32_t)port || be16p(f + UDP + 4) != total - UDP)
            goto slow;
        /* Geneve: version 0 and 8 words of options, no O or C bit, the inner packet in bounds. */
        if (f[GENEVE] != GENEVE_LAYOUT_GENEVE_BYTE0 || (f[GENEVE + 1] & 0xc0) ||
            total - INNER > (uint32_t)max_inner)
            goto slow;
        if (be32p(f + GENEVE_LAYOUT_OPTION1) != GENEVE_LAYOUT_OPTION1_WORD ||
            be32p(f + GENEVE_LAYOUT_OPTION2) != GENEVE_LAYOUT_OPTION2_WORD ||
            be32p(f + GENEVE_LAYOUT_OPTION3) != GENEVE_LAYOUT_OPTION3_WORD)
            goto slow;
        ptype = be16p(f + GENEVE + 2);
        if (ptype == 0x0800) {
            /* Inner IPv4: IHL 5, not a fragment, its total length, protocol. */
            uint32_t itotal = be16p(f + INNER + 2);
            if (f[INNER] != 0x45 || (be16p(f + INNER + 6) & 0x3fff) || itotal < 20)
                goto slow;
            ip_end = INNER + itotal;
            room = itotal - 20;
            proto = f[INNER + 9];
            l4 = f + GENEVE_LAYOUT_INNER_IPV4_L4;
        } else if (ptype == 0x86dd) {
            /* Inner IPv6: its payload length and next header (bytes 4-6, inside the 96). */
            if ((f[INNER] >> 4) != 6)
                goto slow;
            room = be16p(f + INNER + 4);
            ip_end = GENEVE_LAYOUT_INNER_IPV6_L4 + room;
            proto = f[INNER + 6];
            l4 = f + GENEVE_LAYOUT_INNER_IPV6_L4;
        } else {
            goto slow;
        }
        if (ip_end > total)
            goto slow;
        /* From here every L4 byte read lies before ip_end, inside the frame. */
        if (proto == 17) {
            if (room < 8 || be16p(l4 + 4) != room)
                goto slow;
            wanted = interesting(udp_interest, l4) &&
                     (n_needles < 0 ||
                      contains_any(l4 + 8, room - 8, needles, needle_lens, n_needles));
        } else if (proto == 6) {
            uint32_t doff;
            if (room < 20)
                goto slow;
            doff = (uint32_t)(l4[12] >> 4) * 4;
            if (doff < 20 || doff > room)
                goto slow;
            wanted = interesting(tcp_interest, l4) &&
                     (n_needles < 0 ||
                      contains_any(l4 + doff, room - doff, needles, needle_lens, n_needles));
        } else {
            goto slow;
        }
        if (flows) {
            /* The flow decides first: its verdict, else the interest; counted in C. */
            int decided = flow_of(flows, f, ptype == 0x0800, l4, room, proto, ip_end - INNER,
                                  !wanted, now);
            if (decided < 0)
                goto slow;
            counts[2] += (decided >> 2) & 1;
            counts[3] |= (decided >> 3) & 1;
            decided &= 3;
            if (decided == GENEVE_FLOW_DROP) {
                counts[1]++;
                continue; /* out[i] stays 0: nothing sent */
            }
            if (decided == GENEVE_FLOW_FORWARD)
                counts[0]++;
        } else if (wanted) {
            goto slow;
        }
        {
            uint8_t tmp[4];
            memcpy(tmp, f + 12, 4);
            memcpy(f + 12, f + 16, 4);
            memcpy(f + 16, tmp, 4);
        }
        out[i] = len;
        done++;
        continue;
    slow:
        todo[left++] = i;
    }
    *fast = done;
    return left;
}
