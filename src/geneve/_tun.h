/* Declarations shared by _tun.c and its cffi build script (which reads this file). */
#ifndef GENEVE_TUN_H
#define GENEVE_TUN_H
#include <stddef.h>
#include <stdint.h>

/* Endpoints (tun pairs) a bridge serves at once, and packets read from one tun per call. */
#define GENEVE_TUN_ENDPOINTS_MAX 256
#define GENEVE_TUN_BATCH 64
/* The outer IPv4 + UDP + Geneve bytes kept per flow: 20 + 8 + 8 + 60 covers GWLB's 40-byte */
/* Geneve header with room to spare; a longer one is not kept (counted, the way back misses). */
#define GENEVE_TUN_TEMPLATE_MAX 100
/* Per-endpoint counters, in this order, from geneve_tun_endpoint_counts. */
#define GENEVE_TUN_EP_IN 0          /* inner packets written into the ingress tun */
#define GENEVE_TUN_EP_IN_BYTES 1
#define GENEVE_TUN_EP_OUT 2         /* packets read from a tun and sent back to GWLB */
#define GENEVE_TUN_EP_OUT_BYTES 3
#define GENEVE_TUN_EP_MISSES 4      /* read from a tun, no flow: dropped */
#define GENEVE_TUN_EP_WRITE_ERRORS 5
#define GENEVE_TUN_EP_SEND_ERRORS 6
#define GENEVE_TUN_EP_NOT_IP 7      /* read from a tun, neither IPv4 nor IPv6 (or truncated) */
#define GENEVE_TUN_EP_EARLY 8       /* from GWLB before the create hook was done: held */
#define GENEVE_TUN_EP_COUNTERS 9
/* Bridge-wide counters, from geneve_tun_counts. */
#define GENEVE_TUN_NO_ENDPOINT 0    /* frames without the endpoint id option: dropped */
#define GENEVE_TUN_EVICTED 1        /* live headers pushed out to make room (the bound) */
#define GENEVE_TUN_LONG_HEADER 2    /* headers over GENEVE_TUN_TEMPLATE_MAX: not kept */
#define GENEVE_TUN_ENTRIES 3        /* slots of the header store in use */
#define GENEVE_TUN_CAPACITY 4
#define GENEVE_TUN_COUNTERS 5

#define GENEVE_TUN_BAD_ARGUMENT -4096

struct geneve_tun;

struct geneve_tun *geneve_tun_new(uint32_t max_flows, double tcp_timeout, double other_timeout,
                                  uint64_t seed);
void geneve_tun_free(struct geneve_tun *t);
int geneve_tun_add_endpoint(struct geneve_tun *t, uint64_t id, int fd_in, int fd_out, int ready,
                            double now);
int geneve_tun_remove_endpoint(struct geneve_tun *t, uint64_t id);
int geneve_tun_endpoint_ready(struct geneve_tun *t, uint64_t id);
int geneve_tun_idle_endpoints(struct geneve_tun *t, double now, double idle, uint64_t *ids,
                              int max_ids);
int geneve_tun_endpoint_counts(struct geneve_tun *t, uint64_t id, uint64_t *counts,
                               double *last_seen);
void geneve_tun_counts(struct geneve_tun *t, uint64_t *counts);
int geneve_tun_decap(struct geneve_tun *t, uint8_t **slots, int slot_size, int32_t *out, int n,
                     double now, uint64_t *unknown, int max_unknown);
int geneve_tun_encap(struct geneve_tun *t, uint64_t id, const uint8_t *inner, int len,
                     double now, uint8_t *frame, int frame_size);
int geneve_tun_wait(struct geneve_tun *t, int udp_fd, int send_fd, int timeout_ms, double now);
int geneve_tun_flow_key(const uint8_t *inner, int len, uint8_t *key);

#endif
