/*
 * The tun bridge's data path: decapsulated inner packets into an endpoint's ingress tun, and
 * packets the kernel sends out of its tuns back into Geneve (docs/tun.md).
 *
 * Way in (geneve_tun_decap): for each frame the pipeline forwarded, find the GWLB endpoint id
 * option, remember the frame's outer IPv4 + UDP + Geneve bytes (already a reply: addresses
 * swapped) under the inner flow's key, and write the inner packet into the endpoint's gwi-
 * tun. Way back (geneve_tun_wait, the worker's wait for its next batch): read what the kernel
 * routed out of a tun, look its flow up, put the remembered bytes in front and sendmmsg it to
 * GWLB. A packet of a flow never seen from GWLB is dropped and counted: an appliance cannot
 * start flows into GWLB, and a guessed header would name no GWLB flow.
 *
 * The header store is set-associative: a fixed number of buckets of WAYS entries, so it never
 * holds more than the flows bound it was made with. An entry is one direction of a flow (GWLB
 * may use an outer source port per direction); the way back takes the packet's own direction's
 * header, else the other's. A new flow takes a free or expired entry of
 * its bucket, or else the one of that bucket seen longest ago (counted as evicted). Every frame
 * from GWLB rewrites its flow's entry: the latest cookie is always the one sent back.
 *
 * Threads: one worker does both ways, as a C bridge would in one thread: its wait polls the
 * tuns beside its socket, so what a batch wrote comes back in a batch too. A mutex guards the
 * store and the endpoints all the same, for the hook thread and the health endpoint.
 */
#define _GNU_SOURCE
#include "_tun.h"
#include "_layout.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Version, protocol, direction (1: the packet goes from the higher end to the lower), spare,
 * ports (lower end first), two 16-byte addresses (lower first). */
#define KEY_LEN 40
#define KEY_DIRECTION 2
#define WAYS 8
#define READ_SIZE 65536
/* GWLB's endpoint id option (class 0x0108, type 1), from the one description of the layout. */
#define GWLB_OPTION_CLASS (GENEVE_LAYOUT_OPTION1_WORD >> 16)
#define GWLB_OPTION_ENDPOINT ((GENEVE_LAYOUT_OPTION1_WORD >> 8) & 0xFF)

struct entry {
    uint64_t endpoint;
    double last;
    uint16_t tlen; /* 0: free */
    uint8_t key[KEY_LEN];
    uint8_t tmpl[GENEVE_TUN_TEMPLATE_MAX];
};

struct endpoint {
    uint64_t id;
    int used, ready, fd_in, fd_out; /* ready: its create hook is done (or there is none) */
    double last_seen;
    uint64_t counts[GENEVE_TUN_EP_COUNTERS];
};

struct geneve_tun {
    pthread_mutex_t lock;
    struct entry *entries;
    uint32_t buckets, ways;
    double tcp_timeout, other_timeout;
    uint64_t seed;
    uint64_t counts[GENEVE_TUN_COUNTERS];
    struct endpoint eps[GENEVE_TUN_ENDPOINTS_MAX];
    int last_ep;
    /* The way back's buffers, made once. */
    uint8_t *bufs;
    struct mmsghdr msgs[GENEVE_TUN_BATCH];
    struct iovec iov[GENEVE_TUN_BATCH];
    struct sockaddr_in dst[GENEVE_TUN_BATCH];
    uint64_t pkt_ep[GENEVE_TUN_BATCH];
    int32_t pkt_len[GENEVE_TUN_BATCH];
    int32_t pkt_start[GENEVE_TUN_BATCH];
};

static uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* -- flow keys ------------------------------------------------------------------------------ */

static int key_of(const uint8_t *p, int len, uint8_t *key, int depth)
{
    const uint8_t *src, *dst;
    int version, proto, off, alen, fragment = 0;
    uint32_t sport = 0, dport = 0;
    if (len < 1)
        return -1;
    version = p[0] >> 4;
    if (version == 4) {
        if (len < 20)
            return -1;
        off = (p[0] & 0x0F) * 4;
        if (off < 20 || off > len)
            return -1;
        proto = p[9];
        src = p + 12;
        dst = p + 16;
        alen = 4;
        fragment = (be16(p + 6) & 0x1FFF) != 0;
    } else if (version == 6) {
        if (len < 40)
            return -1;
        proto = p[6];
        off = 40;
        src = p + 8;
        dst = p + 24;
        alen = 16;
        /* RFC 8200 4.1: hop-by-hop, routing and destination options, then a fragment header. */
        for (int hops = 0; hops < 8; hops++) {
            if (proto == 0 || proto == 43 || proto == 60) {
                if (off + 2 > len)
                    return -1;
                int next = p[off];
                off += (p[off + 1] + 1) * 8;
                proto = next;
            } else if (proto == 44) {
                if (off + 8 > len)
                    return -1;
                fragment = (be16(p + off + 2) & 0xFFF8) != 0;
                proto = p[off];
                off += 8;
            } else {
                break;
            }
        }
        if (off > len)
            return -1;
    } else {
        return -1;
    }
    if (!fragment && off + 4 <= len) {
        const uint8_t *l4 = p + off;
        if (proto == 6 || proto == 17 || proto == 132 || proto == 136) {
            sport = be16(l4);
            dport = be16(l4 + 2);
        } else if ((proto == 1 && version == 4) || (proto == 58 && version == 6)) {
            int type = l4[0];
            int echo = proto == 1 ? (type == 8 || type == 0) : (type == 128 || type == 129);
            int error = proto == 1 ? (type == 3 || type == 4 || type == 5 || type == 11 ||
                                      type == 12)
                                   : (type >= 1 && type <= 4);
            if (echo && off + 8 <= len) {
                sport = dport = be16(l4 + 4); /* the echo identifier, both ways */
            } else if (error && depth == 0 && off + 8 < len) {
                /* An error about a packet of a flow belongs to that flow (RFC 792, 4443). */
                if (key_of(l4 + 8, len - off - 8, key, 1) == 0) {
                    key[KEY_DIRECTION] ^= 1; /* the quoted packet went the other way */
                    return 0;
                }
            }
        }
    }
    memset(key, 0, KEY_LEN);
    key[0] = (uint8_t)version;
    key[1] = (uint8_t)proto;
    /* The lower (address, port) end first: both directions of a flow share one key. */
    int c = memcmp(src, dst, (size_t)alen);
    if (c > 0 || (c == 0 && sport > dport)) {
        key[KEY_DIRECTION] = 1;
        const uint8_t *a = src;
        uint32_t q = sport;
        src = dst;
        dst = a;
        sport = dport;
        dport = q;
    }
    put16(key + 4, sport);
    put16(key + 6, dport);
    memcpy(key + 8, src, (size_t)alen);
    memcpy(key + 24, dst, (size_t)alen);
    return 0;
}

int geneve_tun_flow_key(const uint8_t *inner, int len, uint8_t *key)
{
    if (inner == NULL || key == NULL || len < 0)
        return GENEVE_TUN_BAD_ARGUMENT;
    return key_of(inner, len, key, 0);
}

/* -- the header store ----------------------------------------------------------------------- */

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static struct entry *bucket_of(struct geneve_tun *t, uint64_t endpoint, const uint8_t *key)
{
    uint64_t h = mix(t->seed ^ endpoint);
    for (int i = 0; i < KEY_LEN; i += 8) {
        uint64_t w;
        memcpy(&w, key + i, 8);
        h = mix(h ^ w);
    }
    uint64_t b = ((h >> 32) * (uint64_t)t->buckets) >> 32;
    return t->entries + b * t->ways;
}

static int expired(const struct geneve_tun *t, const struct entry *e, double now)
{
    double timeout = e->key[1] == 6 ? t->tcp_timeout : t->other_timeout;
    return now - e->last > timeout;
}

static struct entry *lookup_one(struct geneve_tun *t, uint64_t endpoint, const uint8_t *key,
                                double now)
{
    struct entry *b = bucket_of(t, endpoint, key);
    for (uint32_t w = 0; w < t->ways; w++) {
        struct entry *e = b + w;
        if (e->tlen && e->endpoint == endpoint && memcmp(e->key, key, KEY_LEN) == 0)
            return expired(t, e, now) ? NULL : e;
    }
    return NULL;
}

static void remember(struct geneve_tun *t, uint64_t endpoint, const uint8_t *key,
                     const uint8_t *tmpl, int tlen, double now)
{
    struct entry *b = bucket_of(t, endpoint, key), *slot = NULL, *oldest = NULL;
    for (uint32_t w = 0; w < t->ways; w++) {
        struct entry *e = b + w;
        if (e->tlen && e->endpoint == endpoint && memcmp(e->key, key, KEY_LEN) == 0) {
            slot = e;
            break;
        }
        if (slot == NULL && (e->tlen == 0 || expired(t, e, now)))
            slot = e;
        if (oldest == NULL || e->last < oldest->last)
            oldest = e;
    }
    if (slot == NULL) {
        slot = oldest;
        t->counts[GENEVE_TUN_EVICTED]++;
    }
    if (slot->tlen == 0)
        t->counts[GENEVE_TUN_ENTRIES]++;
    slot->endpoint = endpoint;
    memcpy(slot->key, key, KEY_LEN);
    memcpy(slot->tmpl, tmpl, (size_t)tlen);
    slot->tlen = (uint16_t)tlen;
    slot->last = now;
}

/* A flow's header for a packet going the key's way: the one GWLB last sent that way (its
 * outer source port is that direction's, should GWLB use one per direction), else the one it
 * last sent the other way. key is changed and restored. */
static struct entry *lookup(struct geneve_tun *t, uint64_t endpoint, uint8_t *key, double now)
{
    struct entry *e = lookup_one(t, endpoint, key, now);
    if (e == NULL) {
        key[KEY_DIRECTION] ^= 1;
        e = lookup_one(t, endpoint, key, now);
        key[KEY_DIRECTION] ^= 1;
    }
    return e;
}

/* -- endpoints ------------------------------------------------------------------------------ */

static struct endpoint *endpoint_of(struct geneve_tun *t, uint64_t id)
{
    struct endpoint *e = &t->eps[t->last_ep];
    if (e->used && e->id == id)
        return e;
    for (int i = 0; i < GENEVE_TUN_ENDPOINTS_MAX; i++) {
        if (t->eps[i].used && t->eps[i].id == id) {
            t->last_ep = i;
            return &t->eps[i];
        }
    }
    return NULL;
}

struct geneve_tun *geneve_tun_new(uint32_t max_flows, double tcp_timeout, double other_timeout,
                                  uint64_t seed)
{
    struct geneve_tun *t;
    if (max_flows < 1 || !(tcp_timeout > 0) || !(other_timeout > 0))
        return NULL;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ways = max_flows < WAYS ? max_flows : WAYS;
    t->buckets = max_flows / t->ways; /* buckets * ways <= max_flows: the bound holds */
    t->counts[GENEVE_TUN_CAPACITY] = (uint64_t)t->buckets * t->ways;
    /* calloc: the kernel hands out zeroed pages as they are first touched. */
    t->entries = calloc((size_t)t->buckets * t->ways, sizeof(struct entry));
    t->bufs = malloc((size_t)GENEVE_TUN_BATCH * (GENEVE_TUN_TEMPLATE_MAX + READ_SIZE));
    if (t->entries == NULL || t->bufs == NULL || pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t->entries);
        free(t->bufs);
        free(t);
        return NULL;
    }
    t->tcp_timeout = tcp_timeout;
    t->other_timeout = other_timeout;
    t->seed = seed;
    return t;
}

void geneve_tun_free(struct geneve_tun *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < GENEVE_TUN_ENDPOINTS_MAX; i++)
        if (t->eps[i].used)
            geneve_tun_remove_endpoint(t, t->eps[i].id);
    pthread_mutex_destroy(&t->lock);
    free(t->entries);
    free(t->bufs);
    free(t);
}

int geneve_tun_add_endpoint(struct geneve_tun *t, uint64_t id, int fd_in, int fd_out, int ready,
                            double now)
{
    int rc = -ENOSPC;
    if (t == NULL || fd_in < 0 || fd_out < 0)
        return GENEVE_TUN_BAD_ARGUMENT;
    pthread_mutex_lock(&t->lock);
    if (endpoint_of(t, id) != NULL) {
        rc = -EEXIST;
    } else {
        for (int i = 0; i < GENEVE_TUN_ENDPOINTS_MAX; i++) {
            struct endpoint *e = &t->eps[i];
            if (!e->used) {
                memset(e, 0, sizeof *e);
                e->used = 1;
                e->ready = ready != 0;
                e->id = id;
                e->fd_in = fd_in;
                e->fd_out = fd_out;
                e->last_seen = now;
                rc = i;
                break;
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* Forget an endpoint and close its tuns (which deletes the interfaces). Call it from the
 * worker's thread only: geneve_tun_wait reads the descriptors without the lock. */
int geneve_tun_remove_endpoint(struct geneve_tun *t, uint64_t id)
{
    struct endpoint *e;
    if (t == NULL)
        return GENEVE_TUN_BAD_ARGUMENT;
    pthread_mutex_lock(&t->lock);
    e = endpoint_of(t, id);
    if (e != NULL) {
        close(e->fd_in);
        if (e->fd_out != e->fd_in)
            close(e->fd_out);
        e->used = 0;
    }
    pthread_mutex_unlock(&t->lock);
    return e != NULL ? 0 : -ENOENT;
}

/* The endpoint's create hook is done: its frames go into its tun from now on. */
int geneve_tun_endpoint_ready(struct geneve_tun *t, uint64_t id)
{
    struct endpoint *e;
    if (t == NULL)
        return GENEVE_TUN_BAD_ARGUMENT;
    pthread_mutex_lock(&t->lock);
    e = endpoint_of(t, id);
    if (e != NULL)
        e->ready = 1;
    pthread_mutex_unlock(&t->lock);
    return e != NULL ? 0 : -ENOENT;
}

int geneve_tun_idle_endpoints(struct geneve_tun *t, double now, double idle, uint64_t *ids,
                              int max_ids)
{
    int n = 0;
    if (t == NULL || ids == NULL || max_ids < 0)
        return GENEVE_TUN_BAD_ARGUMENT;
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < GENEVE_TUN_ENDPOINTS_MAX && n < max_ids; i++)
        if (t->eps[i].used && now - t->eps[i].last_seen > idle)
            ids[n++] = t->eps[i].id;
    pthread_mutex_unlock(&t->lock);
    return n;
}

int geneve_tun_endpoint_counts(struct geneve_tun *t, uint64_t id, uint64_t *counts,
                               double *last_seen)
{
    struct endpoint *e;
    if (t == NULL || counts == NULL || last_seen == NULL)
        return GENEVE_TUN_BAD_ARGUMENT;
    pthread_mutex_lock(&t->lock);
    e = endpoint_of(t, id);
    if (e != NULL) {
        memcpy(counts, e->counts, sizeof e->counts);
        *last_seen = e->last_seen;
    }
    pthread_mutex_unlock(&t->lock);
    return e != NULL ? 0 : -ENOENT;
}

void geneve_tun_counts(struct geneve_tun *t, uint64_t *counts)
{
    if (t == NULL || counts == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    memcpy(counts, t->counts, sizeof t->counts);
    pthread_mutex_unlock(&t->lock);
}

/* -- way in --------------------------------------------------------------------------------- */

/* The endpoint id option of the Geneve header at f[g:g+glen]: 1 and *id when found. */
static int endpoint_option(const uint8_t *f, int g, int glen, uint64_t *id)
{
    int o = g + 8, end = g + glen;
    while (o + 4 <= end) {
        int olen = (f[o + 3] & 0x1F) * 4;
        if (be16(f + o) == GWLB_OPTION_CLASS && f[o + 2] == GWLB_OPTION_ENDPOINT && olen == 8 &&
            o + 12 <= end) {
            *id = be64(f + o + 4);
            return 1;
        }
        o += 4 + olen;
    }
    return 0;
}

/* Write the forwarded frames of a batch (out[i] > 0: slot i's length) into their endpoints'
 * ingress tuns. Afterwards out[i] is 0 (written, or dropped and counted), still the length for
 * a frame of an endpoint not made yet (its id is in unknown, once: the caller makes it and
 * calls again), or minus the length for one of an endpoint whose create hook is not done (the
 * caller holds it, and offers it again once the endpoint is ready). Returns how many ids are
 * in unknown. */
int geneve_tun_decap(struct geneve_tun *t, uint8_t **slots, int slot_size, int32_t *out, int n,
                     double now, uint64_t *unknown, int max_unknown)
{
    int n_unknown = 0;
    uint8_t key[KEY_LEN];
    if (t == NULL || slots == NULL || out == NULL || n < 0 || (max_unknown > 0 && !unknown))
        return GENEVE_TUN_BAD_ARGUMENT;
    for (int i = 0; i < n; i++)
        if (out[i] > slot_size)
            return GENEVE_TUN_BAD_ARGUMENT;
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < n; i++) {
        int len = out[i], ihl, g, glen, inner, ilen, j;
        const uint8_t *f = slots[i];
        uint64_t id;
        struct endpoint *e;
        if (len <= 0)
            continue;
        ihl = len >= 20 ? (f[0] & 0x0F) * 4 : len;
        g = ihl + 8;
        glen = g + 8 <= len ? 8 + (f[g] & 0x3F) * 4 : len;
        inner = g + glen;
        if (inner >= len || !endpoint_option(f, g, glen, &id)) {
            t->counts[GENEVE_TUN_NO_ENDPOINT]++;
            out[i] = 0;
            continue;
        }
        e = endpoint_of(t, id);
        if (e == NULL) { /* Python makes its tuns, then calls again: out[i] stays */
            for (j = 0; j < n_unknown && unknown[j] != id; j++)
                ;
            if (j == n_unknown) {
                if (n_unknown < max_unknown)
                    unknown[n_unknown++] = id;
                else
                    out[i] = 0; /* more new endpoints in one batch than the caller takes */
            }
            continue;
        }
        e->last_seen = now;
        if (!e->ready) { /* the kernel is not set up for it yet: it would go astray */
            e->counts[GENEVE_TUN_EP_EARLY]++;
            out[i] = -len; /* the caller holds it until the endpoint is ready */
            continue;
        }
        out[i] = 0;
        ilen = len - inner;
        if (key_of(f + inner, ilen, key, 0) == 0) {
            if (inner <= GENEVE_TUN_TEMPLATE_MAX)
                remember(t, id, key, f, inner, now);
            else
                t->counts[GENEVE_TUN_LONG_HEADER]++;
        } else if (f[inner] >> 4 != 4 && f[inner] >> 4 != 6) {
            e->counts[GENEVE_TUN_EP_NOT_IP]++;
            continue;
        }
        if (write(e->fd_in, f + inner, (size_t)ilen) == ilen) {
            e->counts[GENEVE_TUN_EP_IN]++;
            e->counts[GENEVE_TUN_EP_IN_BYTES] += (uint64_t)ilen;
        } else {
            e->counts[GENEVE_TUN_EP_WRITE_ERRORS]++;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return n_unknown;
}

/* -- way back ------------------------------------------------------------------------------- */

/* Build in front of the inner packet at p[0:len] the frame back to GWLB, from the flow's stored
 * header; the frame's first byte's offset from p (negative), or 1 for no flow, 2 for not IP or
 * too long. p must have GENEVE_TUN_TEMPLATE_MAX writable bytes before it. Under the lock. */
static int encap_at(struct geneve_tun *t, uint64_t id, uint8_t *p, int len, double now)
{
    uint8_t key[KEY_LEN];
    struct entry *e;
    int tlen, total, ihl;
    if (key_of(p, len, key, 0) != 0)
        return 2;
    e = lookup(t, id, key, now);
    if (e == NULL)
        return 1;
    tlen = e->tlen;
    total = tlen + len;
    if (total > 0xFFFF)
        return 2;
    e->last = now;
    uint8_t *f = p - tlen;
    memcpy(f, e->tmpl, (size_t)tlen);
    ihl = (f[0] & 0x0F) * 4;
    put16(f + 2, (uint32_t)total);
    put16(f + 4, 0);  /* IP ID: the kernel picks one (IP_HDRINCL) */
    put16(f + 10, 0); /* header checksum: the kernel fills it in */
    put16(f + ihl + 4, (uint32_t)(total - ihl));
    put16(f + ihl + 6, 0); /* no outer UDP checksum: allowed over IPv4 */
    return -tlen;
}

int geneve_tun_encap(struct geneve_tun *t, uint64_t id, const uint8_t *inner, int len,
                     double now, uint8_t *frame, int frame_size)
{
    int rc;
    if (t == NULL || inner == NULL || frame == NULL || len < 0 ||
        frame_size < GENEVE_TUN_TEMPLATE_MAX + len)
        return GENEVE_TUN_BAD_ARGUMENT;
    uint8_t *p = frame + GENEVE_TUN_TEMPLATE_MAX;
    memmove(p, inner, (size_t)len);
    pthread_mutex_lock(&t->lock);
    rc = encap_at(t, id, p, len, now);
    pthread_mutex_unlock(&t->lock);
    if (rc > 0)
        return -rc;
    memmove(frame, p + rc, (size_t)(len - rc));
    return len - rc;
}

/* Encapsulate the m packets read and send them (one sendmmsg); how many were sent. */
static int flush(struct geneve_tun *t, int send_fd, int m, double now)
{
    int c = 0, sent = 0;
    int32_t msg_pkt[GENEVE_TUN_BATCH];
    pthread_mutex_lock(&t->lock);
    for (int j = 0; j < m; j++) {
        struct endpoint *e = endpoint_of(t, t->pkt_ep[j]);
        uint8_t *p = t->bufs + (size_t)j * (GENEVE_TUN_TEMPLATE_MAX + READ_SIZE) +
                     GENEVE_TUN_TEMPLATE_MAX;
        int rc;
        if (e == NULL)
            continue;
        rc = encap_at(t, e->id, p, t->pkt_len[j], now);
        if (rc > 0) {
            e->counts[rc == 1 ? GENEVE_TUN_EP_MISSES : GENEVE_TUN_EP_NOT_IP]++;
            continue;
        }
        e->last_seen = now;
        t->pkt_start[j] = rc;
        uint8_t *f = p + rc;
        struct sockaddr_in *d = &t->dst[c];
        memset(d, 0, sizeof *d);
        d->sin_family = AF_INET;
        memcpy(&d->sin_addr, f + 16, 4);
        t->iov[c].iov_base = f;
        t->iov[c].iov_len = (size_t)(t->pkt_len[j] - rc);
        memset(&t->msgs[c], 0, sizeof t->msgs[c]);
        t->msgs[c].msg_hdr.msg_iov = &t->iov[c];
        t->msgs[c].msg_hdr.msg_iovlen = 1;
        t->msgs[c].msg_hdr.msg_name = d;
        t->msgs[c].msg_hdr.msg_namelen = sizeof *d;
        msg_pkt[c++] = j;
    }
    pthread_mutex_unlock(&t->lock);
    int done = 0;
    uint8_t ok[GENEVE_TUN_BATCH];
    while (done < c) {
        int r = sendmmsg(send_fd, t->msgs + done, (unsigned)(c - done), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            ok[done++] = 0; /* this one is refused; go on with the rest */
            continue;
        }
        for (int k = 0; k < r; k++)
            ok[done + k] = 1;
        done += r;
    }
    pthread_mutex_lock(&t->lock);
    for (int k = 0; k < c; k++) {
        int j = msg_pkt[k];
        struct endpoint *e = endpoint_of(t, t->pkt_ep[j]);
        if (e == NULL)
            continue;
        if (ok[k]) {
            e->counts[GENEVE_TUN_EP_OUT]++;
            e->counts[GENEVE_TUN_EP_OUT_BYTES] += (uint64_t)(t->pkt_len[j] - t->pkt_start[j]);
            sent++;
        } else {
            e->counts[GENEVE_TUN_EP_SEND_ERRORS]++;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return sent;
}

/* The worker's wait (poll) over its UDP socket and every endpoint's tuns (both: the kernel may
 * route a packet out of the ingress one too), up to timeout_ms. What the tuns have is sent back
 * at once (a batch per descriptor at most, so one busy tun cannot starve the others); returns
 * 1 when udp_fd has datagrams to receive, 0 when it has none (yet), or a negative errno.
 * udp_fd < 0: the tuns alone. The worker's thread is the only one that reads or closes a tun,
 * so it polls and reads them without the lock. */
int geneve_tun_wait(struct geneve_tun *t, int udp_fd, int send_fd, int timeout_ms, double now)
{
    struct pollfd pfds[1 + 2 * GENEVE_TUN_ENDPOINTS_MAX];
    uint64_t ids[1 + 2 * GENEVE_TUN_ENDPOINTS_MAX];
    int n = 1, m = 0, r;
    if (t == NULL || send_fd < 0)
        return GENEVE_TUN_BAD_ARGUMENT;
    pfds[0] = (struct pollfd){.fd = udp_fd, .events = POLLIN};
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < GENEVE_TUN_ENDPOINTS_MAX; i++) {
        struct endpoint *e = &t->eps[i];
        if (!e->used)
            continue;
        pfds[n] = (struct pollfd){.fd = e->fd_in, .events = POLLIN};
        ids[n++] = e->id;
        if (e->fd_out != e->fd_in) {
            pfds[n] = (struct pollfd){.fd = e->fd_out, .events = POLLIN};
            ids[n++] = e->id;
        }
    }
    pthread_mutex_unlock(&t->lock);
    r = poll(pfds, (nfds_t)n, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    for (int k = 1; k < n && r > 0; k++) {
        if (!(pfds[k].revents & POLLIN))
            continue;
        for (int got = 0; got < GENEVE_TUN_BATCH; got++) {
            uint8_t *p = t->bufs + (size_t)m * (GENEVE_TUN_TEMPLATE_MAX + READ_SIZE) +
                         GENEVE_TUN_TEMPLATE_MAX;
            ssize_t len = read(pfds[k].fd, p, READ_SIZE);
            if (len <= 0)
                break;
            t->pkt_ep[m] = ids[k];
            t->pkt_len[m++] = (int32_t)len;
            if (m == GENEVE_TUN_BATCH) {
                flush(t, send_fd, m, now);
                m = 0;
            }
        }
    }
    if (m)
        flush(t, send_fd, m, now);
    return r > 0 && (pfds[0].revents & POLLIN) ? 1 : 0;
}
