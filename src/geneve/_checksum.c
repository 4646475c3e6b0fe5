/*
 * Internet checksum (RFC 1071) and the fused GWLB frame fix-up, in portable C99.
 *
 * Strategy: sum the buffer as native-endian 32-bit halves of 64-bit loads into a 64-bit
 * accumulator, fold, and byte-swap once at the end on little-endian hosts. RFC 1071 section 2(B)
 * shows the one's-complement sum is byte-order independent, so this equals the big-endian sum.
 * Loads go through memcpy, so any alignment and any offset is safe.
 *
 * geneve_fix() recomputes, in one call, every checksum of a frame laid out as
 * outer IPv4 | outer UDP | Geneve | inner IPv4 or IPv6 | inner UDP/TCP/ICMP: at GWLB sizes the cost
 * of crossing from Python into C dominates, so one crossing per packet is the point. The caller
 * (the Python codec) has already located the inner IP and L4 headers; this code re-checks every
 * offset and length against the frame, and the frame's length against the buffer's size, before
 * it writes, so no argument can make it read or write outside the buffer.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_checksum.h"

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* Native-order one's-complement sum, folded to 16 bits. */
static uint32_t sum_native(const uint8_t *p, size_t n)
{
    uint64_t acc = 0;
    uint64_t w0, w1, w2, w3;
    while (n >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        acc += (w0 & 0xffffffffu) + (w0 >> 32) + (w1 & 0xffffffffu) + (w1 >> 32)
             + (w2 & 0xffffffffu) + (w2 >> 32) + (w3 & 0xffffffffu) + (w3 >> 32);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        memcpy(&w0, p, 8);
        acc += (w0 & 0xffffffffu) + (w0 >> 32);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        acc += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        /* A trailing odd byte is the first byte of a zero-padded 16-bit word. */
        uint16_t h = 0;
        memcpy(&h, p, 1);
        acc += h;
    }
    while (acc >> 16)
        acc = (acc & 0xffffu) + (acc >> 16);
    return (uint32_t)acc;
}

static uint32_t fold(uint64_t v)
{
    while (v >> 16)
        v = (v & 0xffffu) + (v >> 16);
    return (uint32_t)v;
}

uint32_t geneve_sum(const uint8_t *data, size_t len, uint32_t initial)
{
    uint32_t s = sum_native(data, len);
    if (host_is_little_endian())
        s = ((s & 0xffu) << 8) | (s >> 8);
    return fold((uint64_t)s + initial);
}

static uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* Write the complemented checksum of [p, p+n) plus a pseudo-header sum at p[at]. */
static void store_checksum(uint8_t *p, size_t n, size_t at, uint32_t pseudo, int udp)
{
    uint32_t c;
    p[at] = 0;
    p[at + 1] = 0;
    c = (~geneve_sum(p, n, pseudo)) & 0xffffu;
    /* RFC 768 / RFC 8200 8.1: a computed UDP checksum of zero is sent as all ones. */
    if (udp && c == 0)
        c = 0xffffu;
    put16(p + at, c);
}

static int fix_l4(uint8_t *l4, size_t n, int proto, uint32_t pseudo_addr, int v6)
{
    uint32_t pseudo = fold((uint64_t)pseudo_addr + (uint32_t)proto + (uint32_t)n);
    switch (proto) {
    case 17: /* UDP */
        if (n < 8)
            return GENEVE_FIX_TRUNCATED;
        store_checksum(l4, n, 6, pseudo, 1);
        return 0;
    case 6: /* TCP */
        if (n < 20)
            return GENEVE_FIX_TRUNCATED;
        store_checksum(l4, n, 16, pseudo, 0);
        return 0;
    case 1: /* ICMP: no pseudo-header over IPv4 */
        if (v6)
            return 0;
        if (n < 4)
            return GENEVE_FIX_TRUNCATED;
        store_checksum(l4, n, 2, 0, 0);
        return 0;
    case 58: /* ICMPv6: pseudo-header as for UDP/TCP (RFC 4443 2.3) */
        if (!v6)
            return 0;
        if (n < 4)
            return GENEVE_FIX_TRUNCATED;
        store_checksum(l4, n, 2, pseudo, 0);
        return 0;
    default:
        return 0;
    }
}

/* Bytes of the L4 header whose checksum fix_l4() writes; 0 for one it leaves alone. */
static size_t l4_min_length(int proto, int v6)
{
    switch (proto) {
    case 17:
        return 8;
    case 6:
        return 20;
    case 1:
        return v6 ? 0 : 4;
    case 58:
        return v6 ? 4 : 0;
    default:
        return 0;
    }
}

/* Inner IP header checksum, then (unless l4_off is negative) the L4 checksum at l4_off.
 * Every check comes before the first write: an error leaves the frame as it was. */
static int fix_inner(uint8_t *frame, size_t total, size_t ip_off, long l4_off, int l4_proto)
{
    uint8_t *ip;
    size_t end;
    if (ip_off >= total)
        return GENEVE_FIX_TRUNCATED;
    ip = frame + ip_off; /* only now: a pointer past the buffer is undefined even unread */
    if ((ip[0] >> 4) == 4) {
        size_t ihl;
        int fragment;
        if (total - ip_off < 20)
            return GENEVE_FIX_TRUNCATED;
        ihl = (size_t)(ip[0] & 0x0f) * 4;
        end = ip_off + be16(ip + 2);
        if (ihl < 20 || end < ip_off + ihl)
            return GENEVE_FIX_MALFORMED;
        if (end > total)
            return GENEVE_FIX_TRUNCATED;
        /* A fragment carries only part of the L4 segment: its checksum cannot be recomputed. */
        fragment = (be16(ip + 6) & 0x3fffu) != 0;
        if (!fragment && l4_off >= 0) {
            if ((size_t)l4_off < ip_off + ihl || (size_t)l4_off > end)
                return GENEVE_FIX_MALFORMED;
            if (end - (size_t)l4_off < l4_min_length(l4_proto, 0))
                return GENEVE_FIX_TRUNCATED;
        }
        store_checksum(ip, ihl, 10, 0, 0);
        if (fragment)
            return GENEVE_FIX_FRAGMENT;
        if (l4_off < 0)
            return 0;
        return fix_l4(frame + l4_off, end - (size_t)l4_off, l4_proto,
                      geneve_sum(ip + 12, 8, 0), 0);
    }
    if ((ip[0] >> 4) == 6) {
        if (total - ip_off < 40)
            return GENEVE_FIX_TRUNCATED;
        end = ip_off + 40 + be16(ip + 4);
        if (end > total)
            return GENEVE_FIX_TRUNCATED;
        if (l4_off < 0)
            return 0;
        if ((size_t)l4_off < ip_off + 40 || (size_t)l4_off > end)
            return GENEVE_FIX_MALFORMED;
        if (end - (size_t)l4_off < l4_min_length(l4_proto, 1))
            return GENEVE_FIX_TRUNCATED;
        /* RFC 8200 8.1: the upper-layer length excludes extension headers before it. */
        return fix_l4(frame + l4_off, end - (size_t)l4_off, l4_proto,
                      geneve_sum(ip + 8, 32, 0), 1);
    }
    return GENEVE_FIX_MALFORMED;
}

int geneve_fix(uint8_t *frame, size_t size, size_t len, size_t ip_off, long l4_off,
               int l4_proto, int outer_udp_mode)
{
    size_t ihl, total, ulen;
    uint8_t *udp;
    int rc;
    /* size is the buffer's, len the frame's: a frame said to run past its buffer is truncated. */
    if (len > size || len < 28)
        return GENEVE_FIX_TRUNCATED;
    ihl = (size_t)(frame[0] & 0x0f) * 4;
    total = be16(frame + 2);
    if ((frame[0] >> 4) != 4 || ihl < 20)
        return GENEVE_FIX_MALFORMED;
    if (total > len || ihl + 8 > total)
        return GENEVE_FIX_TRUNCATED;
    udp = frame + ihl;
    ulen = be16(udp + 4);
    if (ulen < 8 || ihl + ulen > total)
        return GENEVE_FIX_MALFORMED;
    /* The outer header is sound; fix_inner() checks the inner one before writing anything.
     * ip_off 0 (where the outer header is) means the frame carries no inner IP packet (ARP, an
     * unknown protocol type): the outer checksums only. */
    rc = ip_off == 0 ? 0 : fix_inner(frame, total, ip_off, l4_off, l4_proto);
    if (rc != 0 && rc != GENEVE_FIX_FRAGMENT)
        return rc;
    store_checksum(frame, ihl, 10, 0, 0);
    /* RFC 768: zero means "no checksum" over IPv4. Keep a zero, recompute anything else. */
    if (outer_udp_mode == GENEVE_OUTER_ZERO || (outer_udp_mode == GENEVE_OUTER_KEEP && be16(udp + 6) == 0)) {
        udp[6] = 0;
        udp[7] = 0;
    } else {
        uint32_t pseudo = fold((uint64_t)geneve_sum(frame + 12, 8, 0) + 17u + (uint32_t)ulen);
        store_checksum(udp, ulen, 6, pseudo, 1);
    }
    return rc;
}
