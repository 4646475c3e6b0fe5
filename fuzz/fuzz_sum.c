/*
 * libFuzzer target: geneve_sum against a naive sum of big-endian byte pairs (RFC 1071).
 * Input: 4 bytes of initial partial sum (little-endian), then the data, copied into a buffer
 * of exactly its size so that AddressSanitizer sees any read past it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_checksum.h"
#include "naive_sum.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t initial = 0;
    uint8_t *copy;
    size_t n;
    if (size >= 4) {
        initial = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                  (uint32_t)data[3] << 24;
        data += 4;
        size -= 4;
    }
    n = size;
    copy = malloc(n ? n : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, n);
    /* Every start and every length inside the copy: alignment must not matter. */
    for (size_t start = 0; start < 8 && start <= n; start++) {
        if (geneve_sum(copy + start, n - start, initial) != naive_sum(copy + start, n - start, initial))
            abort();
    }
    free(copy);
    return 0;
}
