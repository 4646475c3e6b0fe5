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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "_batch.h"

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

    if (n > GENEVE_BATCH_MAX)
        n = GENEVE_BATCH_MAX;
    if (n <= 0 || slot_size <= 28)
        return -EINVAL;
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

int geneve_send_batch(int fd, uint8_t **frames, const int32_t *lens, int n, int32_t *last_errno)
{
    struct mmsghdr msgs[GENEVE_BATCH_MAX];
    struct iovec iov[GENEVE_BATCH_MAX];
    struct sockaddr_in to[GENEVE_BATCH_MAX];
    int i, count = 0, done = 0, failed = 0;

    if (n > GENEVE_BATCH_MAX)
        n = GENEVE_BATCH_MAX;
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

/* The three GWLB option headers: class 0x0108, types 1 and 2 with 8 data bytes, 3 with 4. */
static const uint8_t GWLB_OPTS[3][4] = {{1, 8, 1, 2}, {1, 8, 2, 2}, {1, 8, 3, 1}};

static int interesting(const uint8_t *table, const uint8_t *l4)
{
    /* No table: the modifier wants every packet of this protocol. */
    return table == NULL || table[be16p(l4)] || table[be16p(l4 + 2)];
}

/* Whether [p, p+n) contains one of the needles (concatenated, with their lengths). */
static int contains_any(const uint8_t *p, size_t n, const uint8_t *needles,
                        const int32_t *needle_lens, int n_needles)
{
    int k;
    for (k = 0; k < n_needles; k++) {
        size_t m = (size_t)needle_lens[k];
        if (m > 0 && m <= n && memmem(p, n, needles, m) != NULL)
            return 1;
        needles += m;
    }
    return 0;
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
 * has admitted.
 * Such a frame gets its outer addresses swapped and out[i] set to its length; the index of
 * every other frame goes to todo[] for the Python pipeline. Returns how many went to todo.
 */
int geneve_fast_forward(uint8_t **slots, const int32_t *lens, const uint32_t *sources, int n,
                        const uint32_t *admitted, int n_admitted, const uint8_t *udp_interest,
                        const uint8_t *tcp_interest, const uint8_t *needles,
                        const int32_t *needle_lens, int n_needles, int max_inner, int port,
                        int32_t *out, int32_t *todo, int32_t *fast)
{
    int i, k, left = 0, done = 0;
    for (i = 0; i < n; i++) {
        const int32_t len = lens[i];
        uint8_t *f = slots[i];
        uint32_t total, ptype, ip_end, room, proto;
        const uint8_t *l4;
        int ok = 0;
        out[i] = 0;
        for (k = 0; k < n_admitted && !ok; k++)
            ok = admitted[k] == sources[i];
        if (!ok || len < 68 + 28)
            goto slow;
        total = be16p(f + 2);
        if (f[0] != 0x45 || f[9] != 17 || (be16p(f + 6) & 0x3fff) || total != (uint32_t)len)
            goto slow;
        if (be16p(f + 22) != (uint32_t)port || be16p(f + 24) != total - 20)
            goto slow;
        if (f[28] != 0x08 || (f[29] & 0xc0) || total - 68 > (uint32_t)max_inner)
            goto slow;
        if (memcmp(f + 36, GWLB_OPTS[0], 4) || memcmp(f + 48, GWLB_OPTS[1], 4) ||
            memcmp(f + 60, GWLB_OPTS[2], 4))
            goto slow;
        ptype = be16p(f + 30);
        if (ptype == 0x0800) {
            uint32_t itotal = be16p(f + 70);
            if (f[68] != 0x45 || (be16p(f + 74) & 0x3fff) || itotal < 20)
                goto slow;
            ip_end = 68 + itotal;
            room = itotal - 20;
            proto = f[77];
            l4 = f + 88;
        } else if (ptype == 0x86dd) {
            /* len >= 96 covers the payload length and next header fields (72-74). */
            if ((f[68] >> 4) != 6)
                goto slow;
            room = be16p(f + 72);
            ip_end = 68 + 40 + room;
            proto = f[74];
            l4 = f + 108;
        } else {
            goto slow;
        }
        if (ip_end > total)
            goto slow;
        /* From here every L4 byte read lies before ip_end, inside the frame. */
        if (proto == 17) {
            if (room < 8 || be16p(l4 + 4) != room)
                goto slow;
            if (interesting(udp_interest, l4) &&
                (n_needles < 0 || contains_any(l4 + 8, room - 8, needles, needle_lens, n_needles)))
                goto slow;
        } else if (proto == 6) {
            uint32_t doff;
            if (room < 20)
                goto slow;
            doff = (uint32_t)(l4[12] >> 4) * 4;
            if (doff < 20 || doff > room)
                goto slow;
            if (interesting(tcp_interest, l4) &&
                (n_needles < 0 ||
                 contains_any(l4 + doff, room - doff, needles, needle_lens, n_needles)))
                goto slow;
        } else {
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
