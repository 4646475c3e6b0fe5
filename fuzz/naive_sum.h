/* The fuzz targets' reference checksum: a plain sum of big-endian byte pairs (RFC 1071),
 * folded to 16 bits, written as simply as possible so that it can judge geneve_sum. */
#ifndef GENEVE_FUZZ_NAIVE_SUM_H
#define GENEVE_FUZZ_NAIVE_SUM_H
#include <stddef.h>
#include <stdint.h>

static uint32_t naive_sum(const uint8_t *p, size_t n, uint64_t acc)
{
    size_t i;
    for (i = 0; i + 1 < n; i += 2)
        acc += ((uint32_t)p[i] << 8) | p[i + 1];
    if (n & 1)
        acc += (uint32_t)p[n - 1] << 8;
    while (acc >> 16)
        acc = (acc & 0xffffu) + (acc >> 16);
    return (uint32_t)acc;
}

#endif
