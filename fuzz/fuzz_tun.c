/*
 * libFuzzer target: the tun bridge's way in and way back (_tun.c) on arbitrary frames, without
 * tun devices: each endpoint's "tuns" are /dev/null. Every frame sits in a buffer of exactly
 * its length (the slot size), so AddressSanitizer sees any read past it; each is decapsulated
 * (new endpoints made when asked, then again), its bytes after `skip` are looked up on the way
 * back for every endpoint made so far, and flow-keyed on their own.
 *
 * Input: byte 0 the header store's bound (0-255, 0 refused by geneve_tun_new: then 1), byte 1
 * `skip` (its low bit set: endpoints are made waiting for their create hook, whose frames must
 * come back held, and are ready once a frame later), then frames, each a 2-byte length and its
 * bytes.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "_tun.h"

#define MAX_ENDPOINTS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t made[MAX_ENDPOINTS], unknown[4];
    int n_made = 0;
    size_t pos = 2;
    struct geneve_tun *t;
    uint8_t key[40];
    if (size < 2)
        return 0;
    t = geneve_tun_new(data[0] ? data[0] : 1, 350.0, 120.0, 42);
    if (t == NULL)
        abort();
    int skip = data[1], hook = data[1] & 1;
    while (pos + 2 <= size) {
        int len = (data[pos] << 8) | data[pos + 1];
        pos += 2;
        if ((size_t)len > size - pos)
            len = (int)(size - pos);
        uint8_t *frame = malloc(len ? (size_t)len : 1);
        if (frame == NULL)
            abort();
        memcpy(frame, data + pos, (size_t)len);
        pos += (size_t)len;
        uint8_t *slots[1] = {frame};
        int32_t out[1] = {len};
        int n = geneve_tun_decap(t, slots, len, out, 1, 1.0, unknown, 4);
        if (n < 0 || n > 1)
            abort(); /* one frame: one new endpoint at most */
        for (int i = 0; i < n && n_made < MAX_ENDPOINTS; i++) {
            int fd_in = open("/dev/null", O_WRONLY), fd_out = open("/dev/null", O_RDONLY);
            if (fd_in < 0 || fd_out < 0)
                abort();
            if (geneve_tun_add_endpoint(t, unknown[i], fd_in, fd_out, !hook, 1.0) < 0)
                abort();
            made[n_made++] = unknown[i];
        }
        if (n > 0 && geneve_tun_decap(t, slots, len, out, 1, 1.0, unknown, 0) != 0)
            abort();
        if (out[0] == -len && hook) { /* held: the hook is done now, and it goes in */
            for (int e = 0; e < n_made; e++)
                geneve_tun_endpoint_ready(t, made[e]);
            out[0] = len;
            if (geneve_tun_decap(t, slots, len, out, 1, 1.0, unknown, 0) != 0)
                abort();
        }
        if (out[0] != 0)
            abort(); /* every frame handled: written, kept or dropped */
        if (skip <= len) {
            int inner = len - skip;
            int room = GENEVE_TUN_TEMPLATE_MAX + inner;
            uint8_t *back = malloc((size_t)room);
            if (back == NULL)
                abort();
            for (int e = 0; e < n_made; e++) {
                int got = geneve_tun_encap(t, made[e], frame + skip, inner, 2.0, back, room);
                if (got > room || got == GENEVE_TUN_BAD_ARGUMENT)
                    abort();
                if (got > 0 && (((back[2] << 8) | back[3]) != got ||
                                memcmp(back + got - inner, frame + skip, (size_t)inner) != 0))
                    abort(); /* the outer length, and the packet behind the header */
            }
            free(back);
            geneve_tun_flow_key(frame + skip, inner, key);
        }
        free(frame);
    }
    uint64_t counts[GENEVE_TUN_COUNTERS];
    geneve_tun_counts(t, counts);
    if (counts[GENEVE_TUN_ENTRIES] > counts[GENEVE_TUN_CAPACITY] ||
        counts[GENEVE_TUN_CAPACITY] > (data[0] ? data[0] : 1))
        abort(); /* the bound holds */
    geneve_tun_free(t);
    return 0;
}
