/* Declarations shared by _checksum.c and the cffi build script (which reads this file). */
#ifndef GENEVE_CHECKSUM_H
#define GENEVE_CHECKSUM_H
#include <stddef.h>
#include <stdint.h>

#define GENEVE_FIX_FRAGMENT 1
#define GENEVE_FIX_TRUNCATED -1
#define GENEVE_FIX_MALFORMED -2

#define GENEVE_OUTER_KEEP 0
#define GENEVE_OUTER_ZERO 1
#define GENEVE_OUTER_COMPUTE 2

uint32_t geneve_sum(const uint8_t *data, size_t len, uint32_t initial);
/* frame holds size bytes, of which the first len are the frame (len > size: TRUNCATED). */
/* ip_off 0 (the outer header's place): no inner IP packet, the outer checksums only. */
int geneve_fix(uint8_t *frame, size_t size, size_t len, size_t ip_off, long l4_off,
               int l4_proto, int outer_udp_mode);

#endif
