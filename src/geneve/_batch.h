/* Declarations shared by _batch.c and its cffi build script (which reads this file). */
#ifndef GENEVE_BATCH_H
#define GENEVE_BATCH_H
#include <stddef.h>
#include <stdint.h>

struct geneve_flow_table; /* _flowtable.h */

#define GENEVE_BATCH_MAX 64
/* lens[i] of geneve_recv_batch for a datagram that is not a frame to process. */
#define GENEVE_RECV_TOO_LONG -1
#define GENEVE_RECV_NOT_UNICAST -2

/* What every entry point returns for arguments that contradict each other (a length past */
/* its slot, a count out of range, a table or needles buffer too small): below any -errno. */
#define GENEVE_BATCH_BAD_ARGUMENT -4096

int geneve_recv_batch(int fd, uint8_t **slots, int slot_size, int n, int port,
                      int32_t *lens, uint32_t *sources);
int geneve_send_batch(int fd, uint8_t **frames, int slot_size, const int32_t *lens, int n,
                      int32_t *last_errno);
int geneve_fast_forward(uint8_t **slots, int slot_size, const int32_t *lens,
                        const uint32_t *sources, int n, const uint32_t *admitted, int n_admitted,
                        const uint8_t *udp_interest, size_t udp_interest_size,
                        const uint8_t *tcp_interest, size_t tcp_interest_size,
                        const uint8_t *needles, size_t needles_size, const int32_t *needle_lens,
                        int n_needles, int max_inner, int port, int32_t *out, int32_t *todo,
                        int32_t *fast, struct geneve_flow_table *flows, double now,
                        int32_t *counts);

#endif
