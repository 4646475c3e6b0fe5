/*
 * libFuzzer target: geneve_fix against checksums recomputed naively after it.
 *
 * Input: a 5-byte header, then a frame. Header: outer UDP mode (low 2 bits), the frame's
 * length relative to its buffer (int8: above 0 claims bytes the buffer does not have), the
 * inner IP offset and the L4 offset relative to where the frame's own headers put them (int8;
 * -128: no L4), and the L4 protocol (0: the frame's own). The frame is copied into a buffer of
 * exactly its size, so AddressSanitizer sees any access past it.
 *
 * Checked: an error leaves the frame as it was; success (or FRAGMENT) changes only checksum
 * fields, and every checksum geneve_fix claims to have fixed then verifies.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_checksum.h"
#include "naive_sum.h"

static uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

/* A header or segment whose checksum field is right sums to 0xffff (with its pseudo-header). */
static void expect_valid(const uint8_t *p, size_t n, uint64_t pseudo)
{
    if (naive_sum(p, n, pseudo) != 0xffffu)
        abort();
}

static void check(const uint8_t *before, const uint8_t *f, size_t len, size_t ip, long l4,
                  int proto, int mode, int rc)
{
    size_t ihl = (size_t)(f[0] & 0x0f) * 4, total = be16(f + 2), ulen = be16(f + ihl + 4);
    size_t end, i;
    int v6 = (f[ip] >> 4) == 6, l4_fixed = rc == 0 && l4 >= 0;
    uint8_t mask[65536 + 256];
    (void)len;
    memset(mask, 0, total);
    /* Outer IPv4 header checksum, always. */
    expect_valid(f, ihl, 0);
    mask[10] = mask[11] = 1;
    /* Outer UDP: zero when asked for (or kept), else right. */
    mask[ihl + 6] = mask[ihl + 7] = 1;
    if (mode == GENEVE_OUTER_ZERO || (mode == GENEVE_OUTER_KEEP && !before[ihl + 6] && !before[ihl + 7])) {
        if (f[ihl + 6] || f[ihl + 7])
            abort();
    } else {
        expect_valid(f + ihl, ulen, naive_sum(f + 12, 8, 0) + 17u + ulen);
    }
    if (!v6) {
        size_t iihl = (size_t)(f[ip] & 0x0f) * 4;
        expect_valid(f + ip, iihl, 0);
        mask[ip + 10] = mask[ip + 11] = 1;
        end = ip + be16(f + ip + 2);
    } else {
        end = ip + 40 + be16(f + ip + 4);
    }
    if (l4_fixed) {
        size_t n = end - (size_t)l4, at = 0;
        uint64_t pseudo = (v6 ? naive_sum(f + ip + 8, 32, 0) : naive_sum(f + ip + 12, 8, 0)) +
                          (uint32_t)proto + n;
        int known = 1;
        if (proto == 17)
            at = 6;
        else if (proto == 6)
            at = 16;
        else if ((proto == 1 && !v6) || (proto == 58 && v6))
            at = 2;
        else
            known = 0;
        if (known) {
            if (proto == 1)
                pseudo = 0;
            expect_valid(f + l4, n, pseudo);
            /* RFC 768: a UDP checksum computed as zero is sent as all ones. */
            if (proto == 17 && !f[l4 + 6] && !f[l4 + 7])
                abort();
            mask[l4 + at] = mask[l4 + at + 1] = 1;
        }
    }
    /* Nothing but those checksum fields changed. */
    for (i = 0; i < total; i++)
        if (!mask[i] && before[i] != f[i])
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int mode, proto, rc;
    long l4;
    size_t n, len, ip, ihl;
    uint8_t *frame, *before;
    if (size < 5)
        return 0;
    mode = data[0] & 3; /* 3: not a mode geneve_fix knows, which it treats as "compute" */
    n = size - 5;
    if ((long)n + (int8_t)data[1] < 0)
        return 0;
    len = (size_t)((long)n + (int8_t)data[1]);
    frame = malloc(n ? n : 1);
    before = malloc(n ? n : 1);
    if (!frame || !before)
        abort();
    memcpy(frame, data + 5, n);
    memcpy(before, data + 5, n);
    /* The offsets the codec would pass, moved by the header's deltas. */
    ip = n > 28 ? 36 + (size_t)(frame[28] & 0x3f) * 4 : 68;
    if ((long)ip + (int8_t)data[2] < 0) {
        free(frame);
        free(before);
        return 0;
    }
    ip = (size_t)((long)ip + (int8_t)data[2]);
    ihl = ip < n && (frame[ip] >> 4) == 4 ? (size_t)(frame[ip] & 0x0f) * 4 : 40;
    l4 = (int8_t)data[3] == -128 ? -1 : (long)(ip + ihl) + (int8_t)data[3];
    proto = data[4];
    if (!proto && ip + 10 <= n)
        proto = (frame[ip] >> 4) == 4 ? frame[ip + 9] : ip + 7 <= n ? frame[ip + 6] : 0;
    rc = geneve_fix(frame, n, len, ip, l4, proto, mode);
    if (rc == GENEVE_FIX_TRUNCATED || rc == GENEVE_FIX_MALFORMED) {
        if (memcmp(frame, before, n))
            abort(); /* an error leaves the frame as it was */
    } else if (rc == 0 || rc == GENEVE_FIX_FRAGMENT) {
        if (len > n)
            abort(); /* success on a frame longer than its buffer */
        /* An inner header placed over the outer ones is the caller's nonsense: its fix-ups
         * overwrite each other, so only memory safety is checked then. */
        if (ip >= (size_t)(frame[0] & 0x0f) * 4 + 8)
            check(before, frame, len, ip, l4, proto, mode, rc);
    } else {
        abort();
    }
    free(frame);
    free(before);
    return 0;
}
