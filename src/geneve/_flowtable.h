/* The flow table in C: declarations shared by _flowtable.c, the fast path and the cffi builds. */
#ifndef GENEVE_FLOWTABLE_H
#define GENEVE_FLOWTABLE_H
#include <stddef.h>
#include <stdint.h>

/* geneve_flow_track's refusals, and what every entry point returns for impossible arguments. */
#define GENEVE_FLOW_DROP_TOMBSTONE -1
#define GENEVE_FLOW_DROP_FULL -2
#define GENEVE_FLOW_BAD_ARGUMENT -4096
/* Why a flow ended (struct geneve_flow.reason). */
#define GENEVE_FLOW_IDLE 0
#define GENEVE_FLOW_FIN 1
#define GENEVE_FLOW_RST 2
#define GENEVE_FLOW_EVICTED 3
#define GENEVE_FLOW_SHUTDOWN 4
/* A flow's verdict (struct geneve_flow.verdict). */
#define GENEVE_FLOW_UNDECIDED 0
#define GENEVE_FLOW_FORWARD 1
#define GENEVE_FLOW_DROP 2
#define GENEVE_FLOW_REJECT 3
/* struct geneve_flow.flags */
#define GENEVE_FLOW_COOKIE_O 1
#define GENEVE_FLOW_COOKIE_R 2
#define GENEVE_FLOW_REPLIED 4
#define GENEVE_FLOW_LIVE 8
#define GENEVE_FLOW_TOMB 16
#define GENEVE_FLOW_PENDING 32
#define GENEVE_FLOW_HOLDING 64 /* Python holds frames of it (Verdict.HOLD): C decides none */
#define GENEVE_FLOW_POPPED 128 /* ended, handed to Python, not yet released */
/* How long a flow lingers after FIN both ways or a RST, and a dropped flow's tombstone. */
#define GENEVE_FLOW_LINGER 10
#define GENEVE_FLOW_TOMBSTONE 60

/* Sequence adjustment of one direction of a TCP flow (geneve/_seq.py keeps the whole record;
 * this is the part the fast path applies, like the kernel's nf_nat_seq_adj). Sequence
 * numbers as on the wire (modulo 2^32). */
struct geneve_seq_dir {
    uint32_t after; /* the end of the last rewritten region: from here on, a shift of `shift` */
    uint32_t high;  /* the end of the data forwarded so far */
    uint32_t acked; /* the highest acknowledgment of this direction's data the fast path saw */
    int32_t shift;  /* what every later byte of the direction has moved by */
};
/* struct geneve_flow.seq_adjusted */
#define GENEVE_SEQ_ADJUSTED 1 /* Python adjusts the flow's sequence numbers */
#define GENEVE_SEQ_RECORD 2   /* << direction: the direction has a record (after, shift) */
#define GENEVE_SEQ_HIGH 8     /* << direction: high is known */
#define GENEVE_SEQ_ACKED 32   /* << direction: acked is known */

/* One flow: 184 bytes. Links are entry index + 1 (0: none). */
struct geneve_flow {
    uint8_t key[48]; /* endpoint id, protocol, low end's address, high end's, their ports;
                      * zeros after them, and the key's length in the last byte */
    double first_seen;
    double last_seen;
    double end_at;  /* when FIN both ways or a RST ended it (it lingers); -1: not yet */
    double expires; /* a tombstone's end */
    uint64_t packets[2]; /* original, reply */
    uint64_t bytes[2];
    uint32_t cookie[2];
    uint32_t hnext; /* hash chain */
    uint32_t qprev; /* the timer wheel's slot list; the free and pending lists use qnext */
    uint32_t qnext;
    uint32_t uprev; /* flows never replied to, oldest first; or tombstones, oldest first */
    uint32_t unext;
    uint8_t key_len; /* 21 (IPv4) or 45 (IPv6) */
    uint8_t orig_low; /* the original direction's source is the key's first end */
    uint8_t verdict;
    uint8_t tcp_state; /* 0 not TCP, then syn_sent, syn_recv, established, fin_wait, time_wait, close */
    uint8_t fins; /* bit 0: FIN seen in the original direction, bit 1: in the reply */
    uint8_t reason;
    uint8_t flags;
    uint8_t tcp;
    uint16_t slot; /* the wheel slot it is in */
    /* Sequence adjustment (geneve/_seq.py): GENEVE_SEQ_* bits, set by Python when a rewrite
     * changed a TCP payload's length; the fast path then shifts the segments it can (after
     * the last region, no SACK) and hands the others to Python. */
    uint8_t seq_adjusted;
    struct geneve_seq_dir seq[2]; /* original, reply */
};

struct geneve_flow_table;

struct geneve_flow_table *geneve_flow_table_new(uint32_t max_flows, double tcp_timeout,
                                                double other_timeout);
void geneve_flow_table_free(struct geneve_flow_table *t);
int32_t geneve_flow_track(struct geneve_flow_table *t, const void *frame, size_t size,
                          int version, long ip_off, long l4_off, long ip_end, int proto,
                          long gwlb_at, uint64_t endpoint, int64_t cookie, double now);
/* geneve_flow_track with gwlb_at >= 0: the options there are not GWLB's three in their usual
 * order; call again with the endpoint id and cookie. */
#define GENEVE_FLOW_NEED_IDS -5
int32_t geneve_flow_pop_ended(struct geneve_flow_table *t);
int geneve_flow_release(struct geneve_flow_table *t, int32_t index);
int32_t geneve_flow_sweep(struct geneve_flow_table *t, double now, int32_t max_ends);
int32_t geneve_flow_end_all(struct geneve_flow_table *t, int reason, int32_t max_ends);
/* Put a flow handed over by another table (an upgrade) in this one: the data fields of *src
 * (key, ends, times, counts, cookies, verdict, TCP state; links and slot are ignored), live.
 * Returns its index; GENEVE_FLOW_DROP_FULL when the table is at its bound (nothing is evicted
 * for it), GENEVE_FLOW_EXISTS when its key is live already, GENEVE_FLOW_BAD_ARGUMENT for a
 * record no table could have made. */
#define GENEVE_FLOW_EXISTS -6
int32_t geneve_flow_restore(struct geneve_flow_table *t, const struct geneve_flow *src,
                            double now);
/* geneve_flow_restore for each of n records in a row: how many were taken. */
int64_t geneve_flow_restore_many(struct geneve_flow_table *t, const struct geneve_flow *src,
                                 int64_t n, double now);
/* Copy every live flow's entry into out (room for capacity entries), those never replied to
 * first, oldest first: how many were copied (at most capacity). */
int64_t geneve_flow_export(struct geneve_flow_table *t, struct geneve_flow *out,
                           int64_t capacity);
/* The same for the tombstones, oldest first (key, cookies, expires are what they keep). */
int64_t geneve_flow_export_tombstones(struct geneve_flow_table *t, struct geneve_flow *out,
                                      int64_t capacity);
/* Keep a tombstone handed over (its key, cookies and expires): its index;
 * GENEVE_FLOW_DROP_TOMBSTONE when it expired by now, GENEVE_FLOW_EXISTS, GENEVE_FLOW_DROP_FULL
 * or GENEVE_FLOW_BAD_ARGUMENT. */
int32_t geneve_flow_restore_tombstone(struct geneve_flow_table *t, const struct geneve_flow *src,
                                      double now);
int32_t geneve_flow_lookup(struct geneve_flow_table *t, const uint8_t *key, size_t key_len);
int32_t geneve_flow_next(struct geneve_flow_table *t, int32_t from);
struct geneve_flow *geneve_flow_entry(struct geneve_flow_table *t, int32_t index);
int64_t geneve_flow_count(struct geneve_flow_table *t, int what);
/* Sequence adjustment: with on != 0, the fast path hands every TCP SYN to Python (whose
 * modifier may rewrite lengths: it clamps their MSS). 0, or GENEVE_FLOW_BAD_ARGUMENT. */
int geneve_flow_set_syn_to_python(struct geneve_flow_table *t, int on);
#define GENEVE_FLOW_COUNT_LIVE 0
#define GENEVE_FLOW_COUNT_TOMBSTONES 1
#define GENEVE_FLOW_COUNT_PENDING 2
#define GENEVE_FLOW_COUNT_BYTES 3

/* For the fast path (_batch.c): count one packet whose key is made, when its flow is in a
 * state the fast path may decide alone (see _flowtable.c); GENEVE_FLOW_SLOW: it is not. */
#define GENEVE_FLOW_SLOW -3
int32_t geneve_flow_fast(struct geneve_flow_table *t, const uint8_t *key, int key_len, int low,
                         int tcp_flags, uint32_t cookie, uint32_t length, int create,
                         double now, uint8_t *tcp, uint32_t tcp_room);
/* The fast path's sequence adjustment of one TCP segment (its header at tcp, tcp_room bytes of
 * header and payload) of flow f in direction original: 0 when done (the segment's numbers and
 * checksum rewritten), GENEVE_FLOW_SLOW (nothing changed) when Python must map it. */
int32_t geneve_seq_fast(struct geneve_flow *f, int original, uint8_t *tcp, uint32_t tcp_room);

#endif
