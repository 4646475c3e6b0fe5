/*
 * libFuzzer target: the argument checks of geneve_recv_batch and geneve_send_batch, and what
 * they write, over a datagram socket pair (no network needed): recv_batch reads real datagrams
 * into slots of exactly slot_size bytes, so AddressSanitizer sees any write past one;
 * send_batch gets descriptor -1, so it sends nothing and every frame it tries fails (EBADF).
 *
 * Input: byte 0 n (int8), bytes 1-2 slot_size + 64 (so it can be negative), bytes 3-4 the port,
 * byte 5 bit 0 the port out of range, then up to 8 datagrams (2-byte length and bytes), then
 * 2 bytes per frame for send_batch's lengths (int16).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_batch.h"

static uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int pair[2] = {-1, -1};
    uint8_t *slots[GENEVE_BATCH_MAX], drain[65536];
    int32_t lens[GENEVE_BATCH_MAX], send_lens[GENEVE_BATCH_MAX], last_errno = 0;
    uint32_t sources[GENEVE_BATCH_MAX];
    size_t dlen[8], pos = 6;
    int n, slot_size, port, sent = 0, i, got, bad, expect_failed = 0, slot_count;
    if (pair[0] < 0 && socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, pair))
        abort();
    if (size < 6)
        return 0;
    n = (int8_t)data[0];
    slot_size = (int)be16(data + 1) - 64;
    port = (int)be16(data + 3) + (data[5] & 1 ? 65536 : 0);
    while (sent < 8 && pos + 2 <= size) {
        size_t len = be16(data + pos);
        pos += 2;
        if (len > size - pos)
            len = size - pos;
        if (send(pair[1], data + pos, len, 0) != (ssize_t)len)
            break; /* the socket's buffer is full: receive what it holds */
        dlen[sent++] = len;
        pos += len;
    }
    /* n slots (one when n is out of range, which both functions must refuse unread). */
    slot_count = n >= 1 && n <= GENEVE_BATCH_MAX ? n : 1;
    for (i = 0; i < GENEVE_BATCH_MAX; i++) {
        slots[i] = NULL;
        lens[i] = send_lens[i] = 0;
    }
    for (i = 0; i < slot_count; i++) {
        slots[i] = malloc(slot_size > 0 ? (size_t)slot_size : 1);
        if (!slots[i])
            abort();
        memset(slots[i], 0xa5, slot_size > 0 ? (size_t)slot_size : 1);
    }
    got = geneve_recv_batch(pair[0], slots, slot_size, n, port, lens, sources);
    bad = n <= 0 || n > GENEVE_BATCH_MAX || slot_size <= 28 || port > 0xffff;
    if (bad != (got == GENEVE_BATCH_BAD_ARGUMENT))
        abort();
    if (!bad) {
        if (sent == 0 ? got != -EAGAIN : got != (sent < n ? sent : n))
            abort();
        for (i = 0; i < got; i++) {
            if (dlen[i] > (size_t)slot_size - 28) {
                if (lens[i] != GENEVE_RECV_TOO_LONG)
                    abort();
            } else if (lens[i] != (int32_t)dlen[i] + 28 || be16(slots[i] + 2) != dlen[i] + 28 ||
                       be16(slots[i] + 22) != (uint32_t)port) {
                abort();
            }
        }
    }
    while (recv(pair[0], drain, sizeof(drain), 0) >= 0)
        ;
    /* send_batch: the lengths that follow, checked against the slot size. */
    bad = n < 0 || n > GENEVE_BATCH_MAX || slot_size < 0;
    for (i = 0; i < n && i < GENEVE_BATCH_MAX; i++) {
        send_lens[i] = pos + 2 <= size ? (int16_t)be16(data + pos) : 0;
        pos += 2;
        if (send_lens[i] > slot_size)
            bad = 1;
        expect_failed += send_lens[i] >= 20;
    }
    got = geneve_send_batch(-1, slots, slot_size, send_lens, n, &last_errno);
    if (bad ? got != GENEVE_BATCH_BAD_ARGUMENT : got != expect_failed)
        abort();
    for (i = 0; i < slot_count; i++)
        free(slots[i]);
    return 0;
}
