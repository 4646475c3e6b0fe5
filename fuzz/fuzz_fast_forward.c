/*
 * libFuzzer target: geneve_fast_forward against a C statement of what the Python pipeline
 * forwards unchanged (Packet.parse, the inner parse, process() with a modifier that changes
 * nothing) and of geneve.Interest: every frame C forwards must be one Python forwards, a UDP
 * or TCP packet outside the interest, and come out as it went in with its outer addresses
 * swapped. The differential against the Python code itself is tests/test_fast_path.py.
 *
 * Input: an 8-byte header, needles, then up to 4 frames.
 *   byte 0: bit 0 UDP table, bit 1 TCP table (else NULL: every port), bit 2 needles given
 *           (else no content filter), bit 3 the sources admitted, bit 4 a length that runs past
 *           its slot, bit 5 a negative max_inner, bit 6 a short UDP table (the last two, and
 *           bit 4, must be refused: GENEVE_BATCH_BAD_ARGUMENT, nothing touched), bit 7 a flow
 *           table (kept across runs, three flows at most)
 *   bytes 1-2: max_inner; bytes 3-4: a port of interest (in both tables); byte 5: needle count
 *   (0-3); byte 6: needle length (1-4); byte 7: extra bytes in each slot after its frame.
 *   Then count * length needle bytes, then frames, each a 2-byte length and its bytes. Each
 *   frame sits in a slot of exactly its length plus the extra bytes, so AddressSanitizer sees
 *   any access past a slot.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_batch.h"
#include "_flowtable.h"

#define PORT 6081
#define SOURCE 0x0a000001u

static uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

/* What Python found in a frame it forwards unchanged. */
struct verdict {
    int forward;  /* process() returns the packet, unmodified */
    int udp_tcp;  /* 17 or 6 when the inner packet is UDP/TCP over IPv4 or IPv6 without
                     extension headers and not a fragment, else 0: always of interest */
    uint32_t sport, dport;
    const uint8_t *payload;
    size_t payload_len;
    size_t l4; /* where the inner UDP/TCP header starts */
};

/* _parse_l4: 0 when Python raises. */
static int parse_l4(const uint8_t *f, size_t l4, size_t ip_end, int proto, int v6,
                    struct verdict *v)
{
    size_t room = ip_end - l4;
    if (proto == 17) {
        if (room < 8 || be16(f + l4 + 4) != room)
            return 0;
        v->payload = f + l4 + 8;
        v->payload_len = room - 8;
    } else if (proto == 6) {
        size_t doff;
        if (room < 20)
            return 0;
        doff = (size_t)(f[l4 + 12] >> 4) * 4;
        if (doff < 20 || doff > room)
            return 0;
        v->payload = f + l4 + doff;
        v->payload_len = room - doff;
    } else if (proto == (v6 ? 58 : 1)) {
        return room >= 4;
    } else {
        return 1;
    }
    v->sport = be16(f + l4);
    v->dport = be16(f + l4 + 2);
    v->udp_tcp = proto;
    v->l4 = l4;
    return 1;
}

/* Packet.parse (_parse_outer, _check_options), _parse_inner and process()'s own checks. */
static struct verdict python_forwards(const uint8_t *f, size_t n, int max_inner)
{
    struct verdict v = {0, 0, 0, 0, NULL, 0};
    size_t ihl, total, ulen, geneve, inner, pos, end, ptype;
    if (n < 20 || (f[0] >> 4) != 4)
        return v;
    ihl = (size_t)(f[0] & 0x0f) * 4;
    total = be16(f + 2);
    if (ihl < 20 || f[9] != 17 || total < ihl || total > n || (be16(f + 6) & 0x3fff) ||
        total < ihl + 8)
        return v;
    ulen = be16(f + ihl + 4);
    if (be16(f + ihl + 2) != PORT || ulen != total - ihl || ulen < 16)
        return v;
    geneve = ihl + 8;
    if (f[geneve] >> 6) /* RFC 8926: drop unknown versions */
        return v;
    inner = geneve + 8 + (size_t)(f[geneve] & 0x3f) * 4;
    if (inner > total)
        return v;
    for (pos = geneve + 8; pos < inner;) {
        size_t next;
        if (pos + 4 > inner)
            return v;
        next = pos + 4 + (size_t)(f[pos + 3] & 0x1f) * 4;
        if (next > inner || (f[pos + 2] & 0x80)) /* past Opt Len, or critical */
            return v;
        pos = next;
    }
    end = total;
    ptype = be16(f + geneve + 2);
    if (ptype == 0x0800) {
        size_t iihl, ip_end;
        if (inner + 20 > end || (f[inner] >> 4) != 4)
            return v;
        iihl = (size_t)(f[inner] & 0x0f) * 4;
        if (iihl < 20 || be16(f + inner + 2) < iihl)
            return v;
        ip_end = inner + be16(f + inner + 2);
        if (ip_end > end)
            return v;
        if (!(be16(f + inner + 6) & 0x3fff) &&
            !parse_l4(f, inner + iihl, ip_end, f[inner + 9], 0, &v))
            return v;
    } else if (ptype == 0x86dd) {
        size_t ip_end, at;
        int nh, extensions = 0;
        if (inner + 40 > end || (f[inner] >> 4) != 6)
            return v;
        ip_end = inner + 40 + be16(f + inner + 4);
        if (ip_end > end)
            return v;
        nh = f[inner + 6];
        at = inner + 40;
        while (nh == 0 || nh == 43 || nh == 60) {
            if (at + 8 > ip_end)
                return v;
            nh = f[at];
            at += ((size_t)f[at + 1] + 1) * 8;
            extensions = 1;
        }
        if (at > ip_end)
            return v;
        if (nh == 44) {
            if (at + 8 > ip_end)
                return v;
        } else {
            if (!parse_l4(f, at, ip_end, nh, 1, &v))
                return v;
            if (extensions)
                v.udp_tcp = 0;
        }
    } else if (ptype == 0x6558) {
        return v; /* inner Ethernet: Python parses it; C must never take it (of interest) */
    }
    if (total - inner > (size_t)max_inner)
        return v;
    if (f[geneve + 1] & 0x80) /* the O bit: a control packet is dropped */
        return v;
    v.forward = 1;
    return v;
}

static int of_interest(const struct verdict *v, const uint8_t *udp, const uint8_t *tcp,
                       const uint8_t *needles, const int32_t *needle_lens, int n_needles)
{
    const uint8_t *table = v->udp_tcp == 17 ? udp : tcp;
    int k;
    if (!v->udp_tcp)
        return 1;
    if (table && !table[v->sport] && !table[v->dport])
        return 0;
    if (n_needles < 0)
        return 1;
    for (k = 0; k < n_needles; k++) {
        size_t m = (size_t)needle_lens[k];
        if (m <= v->payload_len && memmem(v->payload, v->payload_len, needles, m))
            return 1;
        needles += m;
    }
    return 0;
}

/* The one's-complement sum of a frame's inner TCP segment (header at l4, to the frame's end,
 * which is the inner packet's for the frames C forwards) with its pseudo-header: the same
 * before and after a change that kept the checksum right. */
static uint32_t tcp_sum(const uint8_t *f, size_t n, size_t l4)
{
    uint32_t sum = 0;
    size_t i;
    for (i = l4; i + 1 < n; i += 2)
        sum += (uint32_t)f[i] << 8 | f[i + 1];
    if (i < n)
        sum += (uint32_t)f[i] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t udp_table[65536], tcp_table[65536];
    static struct geneve_flow_table *flows; /* shared by the runs: small, so that it fills */
    struct geneve_flow_table *table = NULL;
    int32_t counts[4];
    uint8_t *slots[4], *copies[4];
    int32_t lens[4], orig[4], out[4], todo[4], needle_lens[3], fast = -1;
    uint32_t sources[4], admitted[1] = {SOURCE};
    uint8_t needles[12];
    int flags, max_inner, n = 0, n_needles, i, left, slack;
    uint32_t port;
    size_t needle_len, pos;
    if (size < 8)
        return 0;
    flags = data[0];
    max_inner = (int)be16(data + 1);
    port = be16(data + 3);
    n_needles = data[5] % 4;
    needle_len = (size_t)(data[6] % 4) + 1;
    slack = data[7] % 8;
    pos = 8;
    if (pos + (size_t)n_needles * needle_len > size)
        return 0;
    memcpy(needles, data + pos, (size_t)n_needles * needle_len);
    for (i = 0; i < n_needles; i++)
        needle_lens[i] = (int32_t)needle_len;
    pos += (size_t)n_needles * needle_len;
    if (!(flags & 4))
        n_needles = -1;
    memset(udp_table, 0, sizeof(udp_table));
    memset(tcp_table, 0, sizeof(tcp_table));
    udp_table[port] = tcp_table[port] = 1;
    while (n < 4 && pos + 2 <= size) {
        size_t len = be16(data + pos);
        pos += 2;
        if (len > size - pos)
            len = size - pos;
        slots[n] = malloc(len + (size_t)slack + 1);
        copies[n] = malloc(len + 1);
        if (!slots[n] || !copies[n])
            abort();
        memcpy(slots[n], data + pos, len);
        memcpy(copies[n], data + pos, len);
        lens[n] = (int32_t)len;
        sources[n] = flags & 8 ? SOURCE : SOURCE + 1;
        pos += len;
        n++;
    }
    if (n == 0)
        return 0;
    if (flags & 128) {
        /* Counted into a flow table as the appliance does: with no verdict set, the same
         * frames go the same way. */
        if (!flows && !(flows = geneve_flow_table_new(3, 30, 12)))
            abort();
        table = flows;
        /* Sequence adjustment: SYNs to Python, and the live flows marked adjusted (as Python
         * marks them through its views), by bits 3 and 4 of the slack byte. */
        if (geneve_flow_set_syn_to_python(table, data[7] & 8) != 0)
            abort();
        {
            int32_t k;
            /* The table outlives the run: every live flow is marked afresh, or unmarked. */
            for (k = geneve_flow_next(table, 0); k >= 0; k = geneve_flow_next(table, k + 1)) {
                struct geneve_flow *e = geneve_flow_entry(table, k);
                /* Adjusted, with a record each way when bit 5 says so: C shifts what lies
                 * past `after` (0 or 2^31, so that some frames are and some are not). */
                e->seq_adjusted = (uint8_t)(data[7] & 16 ? GENEVE_SEQ_ADJUSTED |
                                            (data[7] & 32 ? 3 * GENEVE_SEQ_RECORD : 0) : 0);
                e->seq[0].shift = (int8_t)data[6];
                e->seq[1].shift = -(int8_t)data[6];
                e->seq[0].after = e->seq[1].after = data[7] & 64 ? 0 : 0x80000000u;
            }
        }
    }
    {
        /* Every slot is as big as the largest frame plus the slack: a length past it is a lie. */
        int32_t slot_size = 0;
        for (i = 0; i < n; i++)
            if (lens[i] + slack > slot_size)
                slot_size = lens[i] + slack;
        for (i = 0; i < n; i++) {
            orig[i] = lens[i];
            slots[i] = realloc(slots[i], slot_size ? (size_t)slot_size : 1);
            if (!slots[i])
                abort();
        }
        if (flags & 16)
            lens[n - 1] = slot_size + 1;
        left = geneve_fast_forward(slots, slot_size, lens, sources, n, admitted, 1,
                                   flags & 1 ? udp_table : NULL, flags & 64 ? 65535 : 65536,
                                   flags & 2 ? tcp_table : NULL, 65536, needles,
                                   (size_t)(n_needles > 0 ? n_needles : 0) * needle_len,
                                   needle_lens, n_needles, flags & 32 ? -1 - max_inner : max_inner,
                                   PORT, out, todo, &fast, table, 1.0, counts);
        /* A lying length, a negative max_inner, a short table: refused, nothing touched. */
        if ((flags & 16) || (flags & 32) || ((flags & 64) && (flags & 1))) {
            if (left != GENEVE_BATCH_BAD_ARGUMENT || fast != -1)
                abort();
            for (i = 0; i < n; i++)
                if (memcmp(slots[i], copies[i], (size_t)orig[i]))
                    abort();
            goto done;
        }
    }
    if (left < 0 || left + fast != n)
        abort();
    for (i = 0; i < left; i++)
        if (todo[i] < 0 || todo[i] >= n || (i && todo[i] <= todo[i - 1]) || out[todo[i]] != 0)
            abort();
    for (i = 0; i < n; i++) {
        const uint8_t *f = slots[i], *g = copies[i];
        struct verdict v;
        if (!out[i]) {
            if (memcmp(f, g, (size_t)lens[i]))
                abort(); /* a frame left to Python is left as it was */
            continue;
        }
        if (out[i] != lens[i] || sources[i] != SOURCE)
            abort();
        v = python_forwards(g, (size_t)lens[i], max_inner);
        if (!v.forward || of_interest(&v, flags & 1 ? udp_table : NULL,
                                      flags & 2 ? tcp_table : NULL, needles, needle_lens,
                                      n_needles))
            abort(); /* C forwarded what Python would not forward unchanged, or must see */
        if (memcmp(f + 12, g + 16, 4) || memcmp(f + 16, g + 12, 4) || memcmp(f, g, 12))
            abort(); /* the outer addresses not swapped */
        if (table && (data[7] & 16) && v.udp_tcp == 6) {
            /* A flow's sequence adjustment: only the TCP sequence and acknowledgment numbers
             * and the checksum may have changed, and the checksum stays right. */
            size_t at = v.l4;
            if (memcmp(f + 20, g + 20, at + 4 - 20) || memcmp(f + at + 12, g + at + 12, 4) ||
                memcmp(f + at + 18, g + at + 18, (size_t)lens[i] - at - 18) ||
                tcp_sum(f, (size_t)lens[i], at) % 0xffff !=
                    tcp_sum(g, (size_t)lens[i], at) % 0xffff)
                abort();
        } else if (memcmp(f + 20, g + 20, (size_t)lens[i] - 20)) {
            abort(); /* more than the outer addresses changed */
        }
    }
done:
    for (i = 0; i < n; i++) {
        free(slots[i]);
        free(copies[i]);
    }
    return 0;
}
