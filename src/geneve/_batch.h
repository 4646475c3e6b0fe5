/* Declarations shared by _batch.c and its cffi build script (which reads this file). */
#ifndef GENEVE_BATCH_H
#define GENEVE_BATCH_H
#include <stdint.h>

#define GENEVE_BATCH_MAX 64

int geneve_recv_batch(int fd, uint8_t **slots, int slot_size, int n, int port,
                      int32_t *lens, uint32_t *sources);
int geneve_send_batch(int fd, uint8_t **frames, const int32_t *lens, int n, int32_t *last_errno);

#endif
