/*
 * The flow table in C: what geneve._flows.FlowTable keeps when the C module is built, and what
 * the appliance's fast path counts frames into without Python. The rules are the pure-Python
 * table's (geneve/_flows.py, the reference; docs/flows.md); this file keeps them in compact
 * memory:
 *
 * - Entries (struct geneve_flow, 184 bytes) in one array, allocated once for the table's bound
 *   (live flows, as many tombstones, and room for flows that ended and wait for Python) with
 *   calloc: the kernel maps pages as entries are first used, so memory follows the flows seen.
 *   Freed entries are reused first.
 * - A chained hash index over the key (a power of two of buckets, at least twice the bound).
 * - Timeouts in a wheel of one-second slots: a flow sits in the slot of its deadline when it
 *   was put there; a packet only moves last_seen. A sweep takes each due slot whole, ends the
 *   flows really due and puts the others in the slot of their real deadline, so a flow costs
 *   O(1) per timeout period and nothing per packet.
 * - Flows that never saw a reply in a list, oldest first: the early-drop candidates. The same
 *   links keep tombstones in order of their end.
 * - A flow that ends goes to a pending list, not yet reusable: Python pops it, copies what it
 *   needs (its view of the flow, the end hook), then releases it.
 *
 * Every entry point checks its arguments (indexes against the entries in use, offsets against
 * the buffer) and returns GENEVE_FLOW_BAD_ARGUMENT for impossible ones before it touches
 * memory.
 */
#include <stdlib.h>
#include <string.h>

#include "_flowtable.h"
#include "_layout.h"

#define WHEEL 4096 /* one-second slots: 68 minutes before a slot comes round again */
#define SLACK 4096 /* entries that ended and wait for Python, beyond the bound */
#define MAX_FLOWS_LIMIT (1u << 24)
/* Times (seconds) at most this far from 0 either way: an int64 holds their second. Not a
 * number, infinity and beyond are refused. */
#define TIME_LIMIT 1e15

enum { SYN_SENT = 1, SYN_RECV, ESTABLISHED, FIN_WAIT, TIME_WAIT, CLOSE };
enum { TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_ACK = 0x10 };

struct geneve_flow_table {
    struct geneve_flow *e;
    uint32_t capacity, used, free_head;
    uint32_t *buckets;
    uint32_t mask;
    uint32_t wheel[WHEEL];
    int64_t wheel_done; /* every slot before this second has been swept */
    int wheel_started;
    uint32_t unreplied_head, unreplied_tail;
    uint32_t tomb_head, tomb_tail;
    uint32_t pend_head, pend_tail;
    uint32_t live, tombs, pending, max_flows;
    uint32_t end_cursor; /* where the next geneve_flow_end_all call goes on (0: the start) */
    double tcp_timeout, other_timeout;
    int syn_to_python; /* sequence adjustment: every TCP SYN goes to Python (its MSS) */
};

#define E(t, ref) (&(t)->e[(ref) - 1])

static uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t hash_key(const struct geneve_flow_table *t, const uint8_t *key)
{
    uint64_t h = 0x9e3779b97f4a7c15u;
    int i;
    for (i = 0; i < 48; i += 8) {
        h ^= load64(key + i);
        h *= 0xff51afd7ed558ccdu;
        h ^= h >> 32;
    }
    return (uint32_t)h & t->mask;
}

struct geneve_flow_table *geneve_flow_table_new(uint32_t max_flows, double tcp_timeout,
                                                double other_timeout)
{
    struct geneve_flow_table *t;
    uint32_t buckets = 1024;
    if (max_flows < 1 || max_flows > MAX_FLOWS_LIMIT || !(tcp_timeout > 0) ||
        !(other_timeout > 0))
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->capacity = 2 * max_flows + SLACK;
    while (buckets < 2 * max_flows)
        buckets *= 2;
    t->e = calloc(t->capacity, sizeof(*t->e));
    t->buckets = calloc(buckets, sizeof(*t->buckets));
    if (!t->e || !t->buckets) {
        geneve_flow_table_free(t);
        return NULL;
    }
    t->mask = buckets - 1;
    t->max_flows = max_flows;
    t->tcp_timeout = tcp_timeout;
    t->other_timeout = other_timeout;
    return t;
}

void geneve_flow_table_free(struct geneve_flow_table *t)
{
    if (!t)
        return;
    free(t->e);
    free(t->buckets);
    free(t);
}

/* -- the hash index ----------------------------------------------------------------------- */

static uint32_t find(const struct geneve_flow_table *t, const uint8_t *key, uint32_t flag)
{
    uint32_t ref = t->buckets[hash_key(t, key)];
    while (ref) {
        const struct geneve_flow *f = E(t, ref);
        if ((f->flags & flag) && memcmp(f->key, key, 48) == 0)
            return ref;
        ref = f->hnext;
    }
    return 0;
}

static void hash_add(struct geneve_flow_table *t, uint32_t ref)
{
    uint32_t *head = &t->buckets[hash_key(t, E(t, ref)->key)];
    E(t, ref)->hnext = *head;
    *head = ref;
}

static void hash_remove(struct geneve_flow_table *t, uint32_t ref)
{
    uint32_t *link = &t->buckets[hash_key(t, E(t, ref)->key)];
    while (*link && *link != ref)
        link = &E(t, *link)->hnext;
    if (*link)
        *link = E(t, ref)->hnext;
    E(t, ref)->hnext = 0;
}

/* -- lists -------------------------------------------------------------------------------- */

/* The u-links: unreplied flows, or tombstones (an entry is never both). */
static void u_append(struct geneve_flow_table *t, uint32_t *head, uint32_t *tail, uint32_t ref)
{
    struct geneve_flow *f = E(t, ref);
    f->uprev = *tail;
    f->unext = 0;
    if (*tail)
        E(t, *tail)->unext = ref;
    else
        *head = ref;
    *tail = ref;
}

static void u_remove(struct geneve_flow_table *t, uint32_t *head, uint32_t *tail, uint32_t ref)
{
    struct geneve_flow *f = E(t, ref);
    if (f->uprev)
        E(t, f->uprev)->unext = f->unext;
    else
        *head = f->unext;
    if (f->unext)
        E(t, f->unext)->uprev = f->uprev;
    else
        *tail = f->uprev;
    f->uprev = f->unext = 0;
}

static double deadline(const struct geneve_flow_table *t, const struct geneve_flow *f)
{
    if (f->end_at >= 0)
        return f->end_at + GENEVE_FLOW_LINGER;
    return f->last_seen + (f->tcp ? t->tcp_timeout : t->other_timeout);
}

static uint16_t slot_of(double when)
{
    int64_t second = (int64_t)when;
    if ((double)second > when)
        second--; /* floor, for a clock before 0 */
    return (uint16_t)((uint64_t)second % WHEEL);
}

static void wheel_add(struct geneve_flow_table *t, uint32_t ref)
{
    struct geneve_flow *f = E(t, ref);
    uint32_t *head;
    double due = deadline(t, f);
    /* A deadline before the seconds swept already (a clock that went back) goes in the first
     * slot a sweep will look at, not one it has passed. */
    if (t->wheel_started && due < (double)t->wheel_done)
        due = (double)t->wheel_done;
    f->slot = slot_of(due);
    head = &t->wheel[f->slot];
    f->qprev = 0;
    f->qnext = *head;
    if (*head)
        E(t, *head)->qprev = ref;
    *head = ref;
}

/* Out of its slot's list (an entry a sweep has taken out is in none: nothing to do). */
static void wheel_remove(struct geneve_flow_table *t, uint32_t ref)
{
    struct geneve_flow *f = E(t, ref);
    if (f->qprev)
        E(t, f->qprev)->qnext = f->qnext;
    else if (t->wheel[f->slot] == ref)
        t->wheel[f->slot] = f->qnext;
    if (f->qnext)
        E(t, f->qnext)->qprev = f->qprev;
    f->qprev = f->qnext = 0;
}

/* -- entries ------------------------------------------------------------------------------ */

static uint32_t alloc_entry(struct geneve_flow_table *t)
{
    uint32_t ref;
    if (t->free_head) {
        ref = t->free_head;
        t->free_head = E(t, ref)->qnext;
    } else if (t->used < t->capacity) {
        ref = ++t->used;
    } else {
        return 0;
    }
    memset(E(t, ref), 0, sizeof(struct geneve_flow));
    return ref;
}

static void free_if_unused(struct geneve_flow_table *t, uint32_t ref)
{
    struct geneve_flow *f = E(t, ref);
    if (f->flags & (GENEVE_FLOW_LIVE | GENEVE_FLOW_TOMB | GENEVE_FLOW_PENDING))
        return;
    f->qnext = t->free_head;
    t->free_head = ref;
}

static void drop_tombstone(struct geneve_flow_table *t, uint32_t ref)
{
    struct geneve_flow *f = E(t, ref);
    u_remove(t, &t->tomb_head, &t->tomb_tail, ref);
    hash_remove(t, ref);
    f->flags &= (uint8_t)~GENEVE_FLOW_TOMB;
    t->tombs--;
    free_if_unused(t, ref);
}

/* End a live flow: out of the index (unless it stays as a tombstone), the wheel and the
 * unreplied list, onto the pending list for Python. */
static void end_flow(struct geneve_flow_table *t, uint32_t ref, int reason)
{
    struct geneve_flow *f = E(t, ref);
    wheel_remove(t, ref);
    if (!(f->flags & GENEVE_FLOW_REPLIED))
        u_remove(t, &t->unreplied_head, &t->unreplied_tail, ref);
    f->flags &= (uint8_t)~GENEVE_FLOW_LIVE;
    f->flags |= GENEVE_FLOW_PENDING;
    f->reason = (uint8_t)reason;
    t->live--;
    /* A flow a verdict was discarding leaves a tombstone when it ends idle: GWLB may still send
     * stragglers of it, which must not come back as a new flow seen mid-stream. So does a flow
     * whose sequence numbers were adjusted, ended idle or evicted: Python resets its next
     * packets. */
    if ((reason == GENEVE_FLOW_IDLE && f->verdict != GENEVE_FLOW_UNDECIDED &&
         f->verdict != GENEVE_FLOW_FORWARD) ||
        ((reason == GENEVE_FLOW_IDLE || reason == GENEVE_FLOW_EVICTED) &&
         (f->seq_adjusted & GENEVE_SEQ_ADJUSTED))) {
        f->flags |= GENEVE_FLOW_TOMB;
        f->expires = deadline(t, f) + GENEVE_FLOW_TOMBSTONE;
        u_append(t, &t->tomb_head, &t->tomb_tail, ref);
        t->tombs++;
        if (t->tombs > t->max_flows)
            drop_tombstone(t, t->tomb_head);
    } else {
        hash_remove(t, ref);
    }
    f->qnext = 0;
    if (t->pend_tail)
        E(t, t->pend_tail)->qnext = ref;
    else
        t->pend_head = ref;
    t->pend_tail = ref;
    t->pending++;
}

static void tcp_update(struct geneve_flow_table *t, uint32_t ref, int flags, int original,
                       double now)
{
    struct geneve_flow *f = E(t, ref);
    int linger = 0;
    if (flags & TCP_RST) {
        f->tcp_state = CLOSE;
        f->reason = GENEVE_FLOW_RST;
        linger = 1;
    } else if (flags & TCP_FIN) {
        f->fins |= original ? 1 : 2;
        if (f->fins == 3) {
            f->tcp_state = TIME_WAIT;
            f->reason = GENEVE_FLOW_FIN;
            linger = 1;
        } else {
            f->tcp_state = FIN_WAIT;
        }
    } else {
        int handshake = flags & (TCP_SYN | TCP_ACK);
        if (f->tcp_state == SYN_SENT && !original && handshake == (TCP_SYN | TCP_ACK))
            f->tcp_state = SYN_RECV;
        else if (f->tcp_state == SYN_RECV && original && handshake == TCP_ACK)
            f->tcp_state = ESTABLISHED;
    }
    if (linger) {
        wheel_remove(t, ref);
        f->end_at = now;
        wheel_add(t, ref);
    }
}

/* Count a packet into a live flow. */
static void count(struct geneve_flow_table *t, uint32_t ref, int original, int flags,
                  int has_cookie, uint32_t cookie, uint32_t length, double now)
{
    struct geneve_flow *f = E(t, ref);
    int d = original ? 0 : 1;
    f->packets[d]++;
    f->bytes[d] += length;
    if (has_cookie) {
        f->cookie[d] = cookie;
        f->flags |= original ? GENEVE_FLOW_COOKIE_O : GENEVE_FLOW_COOKIE_R;
    }
    if (!original && !(f->flags & GENEVE_FLOW_REPLIED)) {
        f->flags |= GENEVE_FLOW_REPLIED;
        u_remove(t, &t->unreplied_head, &t->unreplied_tail, ref);
    }
    if (now > f->last_seen)
        f->last_seen = now;
    if (f->tcp && flags && f->end_at < 0)
        tcp_update(t, ref, flags, original, now);
}

/* A zeroed entry holding key (48 bytes, key_len of them used), or 0 when none is free; when
 * every spare entry holds a tombstone, the oldest tombstone goes. */
static uint32_t alloc_keyed(struct geneve_flow_table *t, const uint8_t *key, int key_len)
{
    uint32_t ref = alloc_entry(t);
    if (!ref && t->tomb_head) {
        drop_tombstone(t, t->tomb_head);
        ref = alloc_entry(t);
    }
    if (ref) {
        memcpy(E(t, ref)->key, key, 48);
        E(t, ref)->key_len = (uint8_t)key_len;
    }
    return ref;
}

/* Make a flow for key (its first packet's source is the low end when low): 0 when the table
 * is full and nothing may be evicted. */
static uint32_t create(struct geneve_flow_table *t, const uint8_t *key, int key_len, int low,
                       int tcp, int syn, double now)
{
    uint32_t ref;
    struct geneve_flow *f;
    if (t->live >= t->max_flows) {
        if (!t->unreplied_head)
            return 0;
        end_flow(t, t->unreplied_head, GENEVE_FLOW_EVICTED);
    }
    ref = alloc_keyed(t, key, key_len);
    if (!ref)
        return 0;
    f = E(t, ref);
    f->orig_low = (uint8_t)(low != 0);
    f->first_seen = f->last_seen = now;
    f->end_at = -1;
    f->tcp = (uint8_t)(tcp != 0);
    f->tcp_state = tcp ? (syn ? SYN_SENT : ESTABLISHED) : 0;
    f->flags = GENEVE_FLOW_LIVE;
    hash_add(t, ref);
    wheel_add(t, ref);
    u_append(t, &t->unreplied_head, &t->unreplied_tail, ref);
    t->live++;
    if (!t->wheel_started) {
        int64_t second = (int64_t)now;
        t->wheel_done = (double)second > now ? second - 1 : second;
        t->wheel_started = 1;
    }
    return ref;
}

/* What a packet does to the live flow of its key before it is counted: ends it when its time
 * is over or a new flow of the same key starts. Returns the flow still live, or 0. */
static uint32_t check_live(struct geneve_flow_table *t, uint32_t ref, int original, int syn,
                           int has_cookie, uint32_t cookie, double now)
{
    struct geneve_flow *f = E(t, ref);
    int d = original ? 0 : 1;
    int seen = (f->flags & (original ? GENEVE_FLOW_COOKIE_O : GENEVE_FLOW_COOKIE_R)) != 0;
    int other_cookie = has_cookie && seen && cookie != f->cookie[d];
    if (f->end_at >= 0) { /* ended by FIN or RST, lingering */
        if (now >= f->end_at + GENEVE_FLOW_LINGER || syn || other_cookie) {
            end_flow(t, ref, f->reason);
            return 0;
        }
    } else if (now >= deadline(t, f) || (syn && other_cookie)) {
        end_flow(t, ref, GENEVE_FLOW_IDLE);
        return 0;
    }
    return ref;
}

/* Track one packet of key; see geneve_flow_track for the result. */
static int32_t track_key(struct geneve_flow_table *t, const uint8_t *key, int key_len, int low,
                         int tcp, int flags, int has_cookie, uint32_t cookie, uint32_t length,
                         double now)
{
    int syn = (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
    uint32_t pending = t->pending;
    uint32_t ref = find(t, key, GENEVE_FLOW_LIVE);
    int original = 1, made = 0;
    if (ref) {
        original = (low != 0) == (E(t, ref)->orig_low != 0);
        ref = check_live(t, ref, original, syn, has_cookie, cookie, now);
    }
    if (!ref) {
        uint32_t tomb = find(t, key, GENEVE_FLOW_TOMB);
        if (tomb) {
            struct geneve_flow *f = E(t, tomb);
            int known = (((f->flags & GENEVE_FLOW_COOKIE_O) && f->cookie[0] == cookie) ||
                         ((f->flags & GENEVE_FLOW_COOKIE_R) && f->cookie[1] == cookie));
            if (now < f->expires && (!has_cookie || known))
                return GENEVE_FLOW_DROP_TOMBSTONE;
            drop_tombstone(t, tomb);
        }
        ref = create(t, key, key_len, low, tcp, syn, now);
        if (!ref)
            return GENEVE_FLOW_DROP_FULL;
        original = 1;
        made = 1;
    }
    count(t, ref, original, flags, has_cookie, cookie, length, now);
    return (int32_t)((ref - 1) << 5 | (t->pending != pending) << 4 | made << 3 | original << 2 |
                     E(t, ref)->verdict);
}

/* The key of a packet: endpoint id (8 bytes, big-endian), protocol, then the two (address,
 * port) ends in order, lower first: the lower end's address, the other's, the lower's port,
 * the other's (the layout of geneve._flows' struct keys). Whether src is the lower end. */
static int make_key(uint8_t *key, uint64_t endpoint, int proto, const uint8_t *src,
                    const uint8_t *dst, int alen, uint32_t sport, uint32_t dport)
{
    int c = memcmp(src, dst, (size_t)alen);
    int low = c < 0 || (c == 0 && sport <= dport);
    const uint8_t *a = low ? src : dst, *b = low ? dst : src;
    uint32_t pa = low ? sport : dport, pb = low ? dport : sport;
    int i;
    memset(key, 0, 48);
    for (i = 0; i < 8; i++)
        key[i] = (uint8_t)(endpoint >> (56 - 8 * i));
    key[8] = (uint8_t)proto;
    memcpy(key + 9, a, (size_t)alen);
    memcpy(key + 9 + alen, b, (size_t)alen);
    key[9 + 2 * alen] = (uint8_t)(pa >> 8);
    key[10 + 2 * alen] = (uint8_t)pa;
    key[11 + 2 * alen] = (uint8_t)(pb >> 8);
    key[12 + 2 * alen] = (uint8_t)pb;
    key[47] = (uint8_t)(13 + 2 * alen); /* IPv4 and IPv6 keys never compare equal */
    return low;
}

/*
 * Count the inner packet frame[ip_off:ip_end] (IPv4 or IPv6 per version, its transport header
 * at l4_off, or l4_off < 0 for none) into its flow, made if new. The GWLB endpoint id and
 * flow cookie (-1: none) are given, or read from GWLB's options at gwlb_at when >= 0. Returns, for a packet to drop
 * before any modifier sees it, GENEVE_FLOW_DROP_TOMBSTONE or GENEVE_FLOW_DROP_FULL; else
 * (index << 5) | (flows ended, waiting for geneve_flow_pop_ended) << 4 | (new flow) << 3 |
 * (original direction) << 2 | the flow's verdict.
 */
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int32_t geneve_flow_track(struct geneve_flow_table *t, const void *frame, size_t size,
                          int version, long ip_off, long l4_off, long ip_end, int proto,
                          long gwlb_at, uint64_t endpoint, int64_t cookie, double now)
{
    const uint8_t *buf = frame;
    uint8_t key[48];
    const uint8_t *ip;
    uint32_t sport = 0, dport = 0;
    int flags = 0, alen, low;
    if (!t || !buf || ip_off < 0 || ip_end < ip_off || (size_t)ip_end > size || proto < 0 ||
        proto > 255 || cookie < -1 || cookie > 0xffffffffL || !(now > -TIME_LIMIT) ||
        !(now < TIME_LIMIT))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if ((version != 4 && version != 6) || ip_end - ip_off < (version == 4 ? 20 : 40))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if (l4_off >= 0 && (l4_off < ip_off || l4_off > ip_end))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if (gwlb_at >= 0) {
        /* GWLB's three options in their usual order (as the fast path reads them): the
         * endpoint id after the first option's header, the cookie after the third's. */
        enum { O2 = GENEVE_LAYOUT_OPTION2 - GENEVE_LAYOUT_OPTION1 };
        enum { O3 = GENEVE_LAYOUT_OPTION3 - GENEVE_LAYOUT_OPTION1 };
        const uint8_t *g = buf + gwlb_at;
        int i;
        if ((size_t)gwlb_at > size || size - (size_t)gwlb_at < O3 + 8)
            return GENEVE_FLOW_BAD_ARGUMENT;
        if (be32(g) != GENEVE_LAYOUT_OPTION1_WORD || be32(g + O2) != GENEVE_LAYOUT_OPTION2_WORD ||
            be32(g + O3) != GENEVE_LAYOUT_OPTION3_WORD)
            return GENEVE_FLOW_NEED_IDS;
        endpoint = 0;
        for (i = 0; i < 8; i++)
            endpoint = endpoint << 8 | g[4 + i];
        cookie = be32(g + O3 + 4);
    }
    ip = buf + ip_off;
    if (l4_off >= 0) {
        const uint8_t *l4 = buf + l4_off;
        long room = ip_end - l4_off;
        if (proto == 6 || proto == 17 || proto == 132) {
            if (room >= 4) {
                sport = (uint32_t)l4[0] << 8 | l4[1];
                dport = (uint32_t)l4[2] << 8 | l4[3];
                if (proto == 6 && room >= 14)
                    flags = l4[13];
            }
        } else if (room >= 8 &&
                   ((proto == 1 && (l4[0] == 8 || l4[0] == 0)) ||
                    (proto == 58 && (l4[0] == 128 || l4[0] == 129)))) {
            sport = dport = (uint32_t)l4[4] << 8 | l4[5]; /* the echo identifier */
        }
    }
    alen = version == 4 ? 4 : 16;
    low = make_key(key, endpoint, proto, ip + (version == 4 ? 12 : 8),
                   ip + (version == 4 ? 16 : 24), alen, sport, dport);
    return track_key(t, key, 9 + 2 * alen + 4, low, proto == 6, flags, cookie >= 0,
                     (uint32_t)(cookie < 0 ? 0 : cookie), (uint32_t)(ip_end - ip_off), now);
}

/* -- sequence adjustment (geneve/_seq.py) -------------------------------------------------- */

int geneve_flow_set_syn_to_python(struct geneve_flow_table *t, int on)
{
    if (!t)
        return GENEVE_FLOW_BAD_ARGUMENT;
    t->syn_to_python = on != 0;
    return 0;
}

/* Whether Python must see a TCP packet (flags tcp_flags) of flow f (NULL: no live flow) before
 * anything else is tried: a SYN whose MSS Python may clamp, or a segment of an adjusted flow
 * that the fast path cannot map (no TCP header given). */
static int seq_needs_python(const struct geneve_flow_table *t, const struct geneve_flow *f,
                            int tcp_flags, const uint8_t *tcp)
{
    return (f && (f->seq_adjusted & GENEVE_SEQ_ADJUSTED) && !tcp) ||
           (t->syn_to_python && (tcp_flags & TCP_SYN));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The TCP checksum at c after a 32-bit field changed from old to new (RFC 1624, eqn. 3). */
static void checksum_replace32(uint8_t *c, uint32_t old, uint32_t new)
{
    uint32_t sum = (uint32_t)(~((uint32_t)c[0] << 8 | c[1]) & 0xffff);
    sum += (~old >> 16 & 0xffff) + (~old & 0xffff) + (new >> 16) + (new & 0xffff);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    sum = ~sum & 0xffff;
    c[0] = (uint8_t)(sum >> 8);
    c[1] = (uint8_t)sum;
}

/* The end of the data of a TCP segment of direction d that the fast path forwards: a first
 * rewrite in that direction later must not reach behind it (geneve/_seq.py). */
static void seq_note_high(struct geneve_flow *f, int d, const uint8_t *tcp, uint32_t tcp_room)
{
    uint32_t doff, end, bit = (uint32_t)GENEVE_SEQ_HIGH << d;
    if (tcp_room < 20)
        return;
    doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || doff > tcp_room)
        return;
    end = get32(tcp + 4) + (tcp_room - doff) + (uint32_t)(tcp[13] & TCP_FIN) +
          (uint32_t)((tcp[13] & TCP_SYN) >> 1);
    if (end == get32(tcp + 4))
        return;
    if (!(f->seq_adjusted & bit) || (int32_t)(end - f->seq[d].high) > 0) {
        f->seq[d].high = end;
        f->seq_adjusted |= (uint8_t)bit;
    }
}

int32_t geneve_seq_fast(struct geneve_flow *f, int original, uint8_t *tcp, uint32_t tcp_room)
{
    int d = original ? 0 : 1;
    struct geneve_seq_dir *mine, *theirs;
    uint32_t doff, seq, ack, end, i;
    int flags, mine_on, theirs_on;
    if (!f || !tcp || tcp_room < 20)
        return GENEVE_FLOW_BAD_ARGUMENT;
    mine = &f->seq[d];
    theirs = &f->seq[1 - d];
    doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || doff > tcp_room)
        return GENEVE_FLOW_BAD_ARGUMENT;
    flags = tcp[13];
    if (flags & (TCP_SYN | TCP_RST))
        return GENEVE_FLOW_SLOW;
    /* SACK blocks need the whole record: Python maps them. */
    for (i = 20; i < doff;) {
        uint8_t kind = tcp[i];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= doff || tcp[i + 1] < 2 || i + tcp[i + 1] > doff || kind == 5)
            return GENEVE_FLOW_SLOW;
        i += tcp[i + 1];
    }
    mine_on = (f->seq_adjusted >> d) & GENEVE_SEQ_RECORD;
    theirs_on = (f->seq_adjusted >> (1 - d)) & GENEVE_SEQ_RECORD;
    seq = get32(tcp + 4);
    ack = get32(tcp + 8);
    end = seq + (tcp_room - doff) + (uint32_t)(flags & TCP_FIN);
    /* Only past the last region of each record, where the shift is one number; and not data
     * beyond a gap, which Python drops (a match in the gap must still be rewritable). */
    if (mine_on && (int32_t)(seq - mine->after) < 0)
        return GENEVE_FLOW_SLOW;
    if (mine_on && end != seq && ((f->seq_adjusted >> d) & GENEVE_SEQ_HIGH) &&
        (int32_t)(seq - mine->high) > 0)
        return GENEVE_FLOW_SLOW;
    if (theirs_on && (flags & TCP_ACK) &&
        (int32_t)(ack - (theirs->after + (uint32_t)theirs->shift)) < 0)
        return GENEVE_FLOW_SLOW;
    if (!((f->seq_adjusted >> d) & GENEVE_SEQ_HIGH) || (int32_t)(end - mine->high) > 0)
        mine->high = end;
    f->seq_adjusted |= (uint8_t)(GENEVE_SEQ_HIGH << d);
    if (mine_on && mine->shift) {
        put32(tcp + 4, seq + (uint32_t)mine->shift);
        checksum_replace32(tcp + 16, seq, seq + (uint32_t)mine->shift);
    }
    if (flags & TCP_ACK) {
        if (!((f->seq_adjusted >> (1 - d)) & GENEVE_SEQ_ACKED) ||
            (int32_t)(ack - theirs->acked) > 0)
            theirs->acked = ack;
        f->seq_adjusted |= (uint8_t)(GENEVE_SEQ_ACKED << (1 - d));
        if (theirs_on && theirs->shift) {
            put32(tcp + 8, ack - (uint32_t)theirs->shift);
            checksum_replace32(tcp + 16, ack, ack - (uint32_t)theirs->shift);
        }
    }
    return 0;
}

/*
 * The fast path's share: count a packet whose flow the fast path may decide alone, and return
 * its verdict (GENEVE_FLOW_UNDECIDED: forward it, the modifier did not want it) with
 * (flow made) << 2 | (flows ended, waiting) << 3. GENEVE_FLOW_SLOW, changing nothing, where
 * Python must see the packet: the flow ends or another starts (timeout, linger, a SYN with a
 * new cookie, a tombstone), its verdict is REJECT, it has none and `create` is 0 (the
 * modifier wants the packet), or the table is full.
 */
int32_t geneve_flow_fast(struct geneve_flow_table *t, const uint8_t *key, int key_len, int low,
                         int tcp_flags, uint32_t cookie, uint32_t length, int create_flow,
                         double now, uint8_t *tcp_header, uint32_t tcp_room)
{
    int syn = (tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
    int tcp = key[8] == 6;
    uint32_t pending = t->pending;
    uint32_t ref = find(t, key, GENEVE_FLOW_LIVE);
    if (ref) {
        struct geneve_flow *f = E(t, ref);
        int original = (low != 0) == (f->orig_low != 0);
        int d = original ? 0 : 1;
        int seen = (f->flags & (original ? GENEVE_FLOW_COOKIE_O : GENEVE_FLOW_COOKIE_R)) != 0;
        if (f->end_at >= 0 || now >= deadline(t, f) || (syn && seen && f->cookie[d] != cookie) ||
            (f->flags & GENEVE_FLOW_HOLDING) ||
            f->verdict == GENEVE_FLOW_REJECT || (f->verdict == GENEVE_FLOW_UNDECIDED && !create_flow) ||
            (tcp && seq_needs_python(t, f, tcp_flags, tcp_header)))
            return GENEVE_FLOW_SLOW;
        /* Last: the segment is changed only when everything else let C decide it. */
        if (tcp && (f->seq_adjusted & GENEVE_SEQ_ADJUSTED)) {
            if (geneve_seq_fast(f, original, tcp_header, tcp_room) != 0)
                return GENEVE_FLOW_SLOW;
        } else if (tcp && tcp_header) {
            seq_note_high(f, d, tcp_header, tcp_room);
        }
        count(t, ref, original, tcp ? tcp_flags : 0, 1, cookie, length, now);
        return (int32_t)(f->verdict | (t->pending != pending) << 3);
    }
    if (!create_flow || find(t, key, GENEVE_FLOW_TOMB) ||
        (t->live >= t->max_flows && !t->unreplied_head) ||
        (tcp && seq_needs_python(t, NULL, tcp_flags, tcp_header)))
        return GENEVE_FLOW_SLOW;
    ref = create(t, key, key_len, low, tcp, syn, now);
    if (!ref)
        return GENEVE_FLOW_SLOW;
    count(t, ref, 1, tcp ? tcp_flags : 0, 1, cookie, length, now);
    if (tcp && tcp_header)
        seq_note_high(E(t, ref), 0, tcp_header, tcp_room);
    return (int32_t)(GENEVE_FLOW_UNDECIDED | 1 << 2 | (t->pending != pending) << 3);
}

int32_t geneve_flow_pop_ended(struct geneve_flow_table *t)
{
    uint32_t ref;
    if (!t)
        return GENEVE_FLOW_BAD_ARGUMENT;
    ref = t->pend_head;
    if (!ref)
        return -1;
    t->pend_head = E(t, ref)->qnext;
    if (!t->pend_head)
        t->pend_tail = 0;
    E(t, ref)->qnext = 0;
    E(t, ref)->flags |= GENEVE_FLOW_POPPED;
    /* Still PENDING until released: Python reads it first. */
    return (int32_t)(ref - 1);
}

int geneve_flow_release(struct geneve_flow_table *t, int32_t index)
{
    struct geneve_flow *f;
    if (!t || index < 0 || (uint32_t)index >= t->used)
        return GENEVE_FLOW_BAD_ARGUMENT;
    f = &t->e[index];
    /* Only an ended flow handed out by geneve_flow_pop_ended, once. */
    if (!(f->flags & GENEVE_FLOW_PENDING) || !(f->flags & GENEVE_FLOW_POPPED))
        return GENEVE_FLOW_BAD_ARGUMENT;
    f->flags &= (uint8_t)~(GENEVE_FLOW_PENDING | GENEVE_FLOW_POPPED);
    t->pending--;
    free_if_unused(t, (uint32_t)index + 1);
    return 0;
}

/* End, with their own reason, at most max_ends flows whose deadline is at or before now, and
 * forget the tombstones past their end. Returns how many flows ended (max_ends: call again). */
int32_t geneve_flow_sweep(struct geneve_flow_table *t, double now, int32_t max_ends)
{
    int64_t last, second;
    int32_t ended = 0;
    if (!t || max_ends < 1 || !(now > -TIME_LIMIT) || !(now < TIME_LIMIT))
        return GENEVE_FLOW_BAD_ARGUMENT;
    while (t->tomb_head && E(t, t->tomb_head)->expires <= now)
        drop_tombstone(t, t->tomb_head);
    if (!t->wheel_started)
        return 0;
    last = (int64_t)now;
    if ((double)last > now)
        last--;
    /* Each slot from the first not yet swept to now's (kept: later deadlines of this second
     * may sit in it); a clock that jumped past a whole turn sweeps each slot once. */
    if (last - t->wheel_done >= WHEEL)
        t->wheel_done = last - WHEEL + 1;
    for (second = t->wheel_done; second <= last; second++) {
        uint32_t *head = &t->wheel[(uint64_t)second % WHEEL];
        uint32_t ref = *head;
        *head = 0;
        while (ref) {
            uint32_t next = E(t, ref)->qnext;
            struct geneve_flow *f = E(t, ref);
            f->qprev = f->qnext = 0;
            if (ended >= max_ends) {
                /* The limit: the rest stays in this slot as it was, for the next call (not
                 * moved to a slot this pass may have swept already). */
                f->qnext = *head;
                if (*head)
                    E(t, *head)->qprev = ref;
                *head = ref;
            } else if (deadline(t, f) <= now) {
                end_flow(t, ref, f->end_at >= 0 ? f->reason : GENEVE_FLOW_IDLE);
                ended++;
            } else {
                wheel_add(t, ref);
            }
            ref = next;
        }
        if (ended >= max_ends)
            return ended; /* this slot again next call */
        if (second < last)
            t->wheel_done = second + 1;
    }
    return ended;
}

/* End at most max_ends live flows with reason (oldest entries first): how many. */
int32_t geneve_flow_end_all(struct geneve_flow_table *t, int reason, int32_t max_ends)
{
    uint32_t ref;
    int32_t ended = 0;
    if (!t || max_ends < 1 || reason < GENEVE_FLOW_IDLE || reason > GENEVE_FLOW_SHUTDOWN)
        return GENEVE_FLOW_BAD_ARGUMENT;
    /* Each call goes on where the last one stopped: every entry is looked at once. */
    for (ref = t->end_cursor ? t->end_cursor : 1; ref <= t->used && ended < max_ends; ref++) {
        if (E(t, ref)->flags & GENEVE_FLOW_LIVE) {
            end_flow(t, ref, reason);
            ended++;
        }
    }
    t->end_cursor = ref;
    if (ended < max_ends) { /* every flow is gone: so are the tombstones */
        t->end_cursor = 0;
        while (t->tomb_head)
            drop_tombstone(t, t->tomb_head);
    }
    return ended;
}

static int valid_time(double when)
{
    return when > -TIME_LIMIT && when < TIME_LIMIT;
}

/* A record's key as a table makes them: 21 or 45 bytes, zeros after, its length last. */
static int valid_key(const struct geneve_flow *src)
{
    int i;
    if ((src->key_len != 21 && src->key_len != 45) || src->key[47] != src->key_len)
        return 0;
    for (i = src->key_len; i < 47; i++)
        if (src->key[i])
            return 0;
    return 1;
}

int32_t geneve_flow_restore(struct geneve_flow_table *t, const struct geneve_flow *src,
                            double now)
{
    uint32_t ref;
    struct geneve_flow *f;
    uint8_t keep = GENEVE_FLOW_COOKIE_O | GENEVE_FLOW_COOKIE_R | GENEVE_FLOW_REPLIED;
    if (!t || !src || !valid_time(now) || !valid_key(src))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if (!valid_time(src->first_seen) || !valid_time(src->last_seen) ||
        src->first_seen > src->last_seen || !(src->end_at == -1 || valid_time(src->end_at)))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if (src->verdict > GENEVE_FLOW_REJECT || src->tcp_state > CLOSE || src->fins > 3 ||
        src->reason > GENEVE_FLOW_SHUTDOWN || (src->tcp != 0) != (src->key[8] == 6) ||
        (src->tcp_state != 0) != (src->tcp != 0))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if (find(t, src->key, GENEVE_FLOW_LIVE))
        return GENEVE_FLOW_EXISTS;
    if (t->live >= t->max_flows)
        return GENEVE_FLOW_DROP_FULL;
    ref = find(t, src->key, GENEVE_FLOW_TOMB);
    if (ref)
        drop_tombstone(t, ref);
    ref = alloc_keyed(t, src->key, src->key_len);
    if (!ref)
        return GENEVE_FLOW_DROP_FULL;
    f = E(t, ref);
    f->orig_low = (uint8_t)(src->orig_low != 0);
    f->first_seen = src->first_seen;
    f->last_seen = src->last_seen;
    f->end_at = src->end_at;
    f->packets[0] = src->packets[0];
    f->packets[1] = src->packets[1];
    f->bytes[0] = src->bytes[0];
    f->bytes[1] = src->bytes[1];
    f->cookie[0] = src->cookie[0];
    f->cookie[1] = src->cookie[1];
    f->verdict = src->verdict;
    f->tcp_state = src->tcp_state;
    f->fins = src->fins;
    f->reason = src->reason;
    f->tcp = src->tcp;
    f->flags = (uint8_t)(GENEVE_FLOW_LIVE | (src->flags & keep));
    /* What the fast path knows of its sequence adjustment (geneve/_seq.py), if any. */
    f->seq_adjusted = (uint8_t)(src->seq_adjusted & 0x7f);
    f->seq[0] = src->seq[0];
    f->seq[1] = src->seq[1];
    hash_add(t, ref);
    if (!t->wheel_started) {
        int64_t second = (int64_t)now;
        t->wheel_done = (double)second > now ? second - 1 : second;
        t->wheel_started = 1;
    }
    wheel_add(t, ref);
    if (!(f->flags & GENEVE_FLOW_REPLIED))
        u_append(t, &t->unreplied_head, &t->unreplied_tail, ref);
    t->live++;
    return (int32_t)(ref - 1);
}

int64_t geneve_flow_restore_many(struct geneve_flow_table *t, const struct geneve_flow *src,
                                 int64_t n, double now)
{
    int64_t i, taken = 0;
    if (!t || !src || n < 0 || !valid_time(now))
        return GENEVE_FLOW_BAD_ARGUMENT;
    for (i = 0; i < n; i++)
        if (geneve_flow_restore(t, &src[i], now) >= 0)
            taken++;
    return taken;
}

int64_t geneve_flow_export(struct geneve_flow_table *t, struct geneve_flow *out,
                           int64_t capacity)
{
    uint32_t i, ref;
    int64_t n = 0;
    if (!t || !out || capacity < 0)
        return GENEVE_FLOW_BAD_ARGUMENT;
    /* The flows never replied to first, oldest first: restored in this order, they are the
     * early-drop candidates in the same order there. */
    for (ref = t->unreplied_head; ref && n < capacity; ref = E(t, ref)->unext)
        memcpy(&out[n++], E(t, ref), sizeof(struct geneve_flow));
    for (i = 0; i < t->used && n < capacity; i++)
        if ((t->e[i].flags & (GENEVE_FLOW_LIVE | GENEVE_FLOW_REPLIED)) ==
            (GENEVE_FLOW_LIVE | GENEVE_FLOW_REPLIED))
            memcpy(&out[n++], &t->e[i], sizeof(struct geneve_flow));
    return n;
}

int64_t geneve_flow_export_tombstones(struct geneve_flow_table *t, struct geneve_flow *out,
                                      int64_t capacity)
{
    uint32_t ref;
    int64_t n = 0;
    if (!t || !out || capacity < 0)
        return GENEVE_FLOW_BAD_ARGUMENT;
    for (ref = t->tomb_head; ref && n < capacity; ref = E(t, ref)->unext)
        memcpy(&out[n++], E(t, ref), sizeof(struct geneve_flow));
    return n;
}

int32_t geneve_flow_restore_tombstone(struct geneve_flow_table *t, const struct geneve_flow *src,
                                      double now)
{
    uint32_t ref;
    struct geneve_flow *f;
    if (!t || !src || !valid_time(now) || !valid_key(src) || !valid_time(src->expires))
        return GENEVE_FLOW_BAD_ARGUMENT;
    if (src->expires <= now)
        return GENEVE_FLOW_DROP_TOMBSTONE; /* over already: nothing to keep */
    if (find(t, src->key, GENEVE_FLOW_LIVE | GENEVE_FLOW_TOMB))
        return GENEVE_FLOW_EXISTS;
    ref = alloc_keyed(t, src->key, src->key_len);
    if (!ref)
        return GENEVE_FLOW_DROP_FULL;
    f = E(t, ref);
    f->cookie[0] = src->cookie[0];
    f->cookie[1] = src->cookie[1];
    f->expires = src->expires;
    f->end_at = -1;
    f->flags = (uint8_t)(GENEVE_FLOW_TOMB |
                         (src->flags & (GENEVE_FLOW_COOKIE_O | GENEVE_FLOW_COOKIE_R)));
    hash_add(t, ref);
    u_append(t, &t->tomb_head, &t->tomb_tail, ref);
    t->tombs++;
    if (t->tombs > t->max_flows)
        drop_tombstone(t, t->tomb_head);
    return (int32_t)(ref - 1);
}

int32_t geneve_flow_lookup(struct geneve_flow_table *t, const uint8_t *key, size_t key_len)
{
    uint8_t full[48];
    uint32_t ref;
    if (!t || !key || (key_len != 21 && key_len != 45))
        return GENEVE_FLOW_BAD_ARGUMENT;
    memset(full, 0, 48);
    memcpy(full, key, key_len);
    full[47] = (uint8_t)key_len;
    ref = find(t, full, GENEVE_FLOW_LIVE);
    return ref ? (int32_t)(ref - 1) : -1;
}

int32_t geneve_flow_next(struct geneve_flow_table *t, int32_t from)
{
    uint32_t i;
    if (!t || from < 0)
        return GENEVE_FLOW_BAD_ARGUMENT;
    for (i = (uint32_t)from; i < t->used; i++)
        if (t->e[i].flags & GENEVE_FLOW_LIVE)
            return (int32_t)i;
    return -1;
}

struct geneve_flow *geneve_flow_entry(struct geneve_flow_table *t, int32_t index)
{
    if (!t || index < 0 || (uint32_t)index >= t->used)
        return NULL;
    return &t->e[index];
}

int64_t geneve_flow_count(struct geneve_flow_table *t, int what)
{
    if (!t)
        return GENEVE_FLOW_BAD_ARGUMENT;
    switch (what) {
    case GENEVE_FLOW_COUNT_LIVE:
        return t->live;
    case GENEVE_FLOW_COUNT_TOMBSTONES:
        return t->tombs;
    case GENEVE_FLOW_COUNT_PENDING:
        return t->pending;
    case GENEVE_FLOW_COUNT_BYTES: /* what the table has touched: entries in use and the index */
        return (int64_t)t->used * (int64_t)sizeof(struct geneve_flow) +
               (int64_t)(t->mask + 1) * 4 + (int64_t)sizeof(*t);
    default:
        return GENEVE_FLOW_BAD_ARGUMENT;
    }
}
