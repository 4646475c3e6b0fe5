/*
 * libFuzzer target: any sequence of calls into the flow table (_flowtable.c) with any
 * arguments. Packets come from the input with offsets that may lie about them; times jump
 * forward and back. After each call the table's own counts must hold: live flows within the
 * bound, tombstones within it too, every ended flow popped and released in turn; and nothing
 * is read or written outside the buffers given (AddressSanitizer).
 *
 * Input: byte 0: the bound (1-8 flows); then operations, each a byte and its arguments:
 *   0: track: version bit (and bit 1: read the GWLB options at the endpoint byte's offset),
 *      ip_off, l4_off (0xff: none), ip_end, protocol, endpoint byte, cookie byte (0xff: none),
 *      time step (signed), then 1 byte n and n packet bytes
 *   1: sweep (time step); 2: end all; 3: look up a key made of the next 21 bytes;
 *   4: walk the live flows and read each entry; 5: release an index (any: refused or taken);
 *   6: restore an entry made of the next sizeof(struct geneve_flow) bytes (a handover record
 *      that may lie about everything), then 1 byte: bit 0 forces a plausible key (bit 1: of
 *      IPv6 length), bit 2 restores it as a tombstone. Walking (4) also exports both lists;
 *   7: sequence adjustment: SYNs to Python or not, a live flow marked adjusted, and the rest
 *      of the input as a TCP segment through geneve_seq_fast.
 * Every ended flow is popped and released after each operation, as Python does.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_flowtable.h"

static void drain(struct geneve_flow_table *t)
{
    int32_t index;
    while ((index = geneve_flow_pop_ended(t)) >= 0) {
        struct geneve_flow *f = geneve_flow_entry(t, index);
        if (!f || !(f->flags & GENEVE_FLOW_PENDING) || (f->flags & GENEVE_FLOW_LIVE))
            abort();
        if (geneve_flow_release(t, index) != 0)
            abort();
    }
    if (index != -1 || geneve_flow_count(t, GENEVE_FLOW_COUNT_PENDING) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct geneve_flow_table *t;
    uint32_t max_flows;
    size_t pos = 1;
    double now = 100.0;
    if (size < 1)
        return 0;
    max_flows = (uint32_t)(data[0] % 8) + 1;
    t = geneve_flow_table_new(max_flows, 30.0, 12.0);
    if (!t)
        abort();
    while (pos < size) {
        int op = data[pos++] % 8;
        if (op == 0) {
            uint8_t *packet;
            size_t n;
            long ip_off, l4_off, ip_end;
            int32_t r;
            if (pos + 9 > size)
                break;
            ip_off = data[pos + 1];
            l4_off = data[pos + 2] == 0xff ? -1 : data[pos + 2];
            ip_end = data[pos + 3];
            now += (int8_t)data[pos + 7];
            n = data[pos + 8];
            if (pos + 9 + n > size)
                n = size - pos - 9;
            packet = malloc(n ? n : 1); /* exactly n bytes: ASan sees any read past them */
            if (!packet)
                abort();
            memcpy(packet, data + pos + 9, n);
            /* Bit 1 of the version byte: the ids from options at offset data[pos + 5]. */
            r = geneve_flow_track(t, packet, n, data[pos] & 1 ? 6 : 4, ip_off, l4_off, ip_end,
                                  data[pos + 4], data[pos] & 2 ? data[pos + 5] : -1,
                                  data[pos + 5], data[pos + 6] == 0xff ? -1 : data[pos + 6], now);
            if (r < 0 && r != GENEVE_FLOW_DROP_TOMBSTONE && r != GENEVE_FLOW_DROP_FULL &&
                r != GENEVE_FLOW_BAD_ARGUMENT && r != GENEVE_FLOW_NEED_IDS)
                abort();
            if (r >= 0 && !geneve_flow_entry(t, r >> 5))
                abort();
            free(packet);
            pos += 9 + n;
        } else if (op == 1) {
            if (pos >= size)
                break;
            now += (int8_t)data[pos++];
            while (geneve_flow_sweep(t, now, 2) == 2)
                drain(t);
        } else if (op == 2) {
            while (geneve_flow_end_all(t, GENEVE_FLOW_SHUTDOWN, 2) == 2)
                drain(t);
            drain(t);
            if (geneve_flow_count(t, GENEVE_FLOW_COUNT_LIVE) != 0 ||
                geneve_flow_count(t, GENEVE_FLOW_COUNT_TOMBSTONES) != 0)
                abort();
        } else if (op == 3) {
            uint8_t *key;
            if (pos + 21 > size)
                break;
            key = malloc(21);
            if (!key)
                abort();
            memcpy(key, data + pos, 21);
            (void)geneve_flow_lookup(t, key, 21);
            free(key);
            pos += 21;
        } else if (op == 4) {
            int32_t i = geneve_flow_next(t, 0);
            int64_t live = 0;
            while (i >= 0) {
                struct geneve_flow *f = geneve_flow_entry(t, i);
                if (!f || !(f->flags & GENEVE_FLOW_LIVE) || (f->key_len != 21 && f->key_len != 45))
                    abort();
                live++;
                i = geneve_flow_next(t, i + 1);
            }
            if (live != geneve_flow_count(t, GENEVE_FLOW_COUNT_LIVE))
                abort();
            { /* exports fill exactly the room given, never more */
                int64_t tombs = geneve_flow_count(t, GENEVE_FLOW_COUNT_TOMBSTONES);
                struct geneve_flow *out = malloc(sizeof(struct geneve_flow) * (size_t)(live + 1));
                struct geneve_flow *tout = malloc(sizeof(struct geneve_flow) * (size_t)(tombs + 1));
                if (!out || !tout)
                    abort();
                if (geneve_flow_export(t, out, live) != live ||
                    geneve_flow_export_tombstones(t, tout, tombs) != tombs ||
                    (live > 0 && geneve_flow_export(t, out, live - 1) != live - 1))
                    abort();
                free(out);
                free(tout);
            }
        } else if (op == 6) {
            struct geneve_flow *entry;
            int32_t r;
            if (pos + sizeof(struct geneve_flow) + 1 > size)
                break;
            entry = malloc(sizeof(struct geneve_flow));
            if (!entry)
                abort();
            memcpy(entry, data + pos, sizeof(struct geneve_flow));
            if (data[pos + sizeof(struct geneve_flow)] & 1) { /* a plausible key, more often */
                uint8_t len = data[pos + sizeof(struct geneve_flow)] & 2 ? 45 : 21;
                memset(entry->key + len, 0, 48 - len);
                entry->key[47] = entry->key_len = len;
            }
            if (data[pos + sizeof(struct geneve_flow)] & 4) { /* as a tombstone */
                r = geneve_flow_restore_tombstone(t, entry, now);
                if (r < 0 && r != GENEVE_FLOW_BAD_ARGUMENT && r != GENEVE_FLOW_DROP_FULL &&
                    r != GENEVE_FLOW_EXISTS && r != GENEVE_FLOW_DROP_TOMBSTONE)
                    abort();
                r = -1;
            } else {
                r = geneve_flow_restore(t, entry, now);
            }
            if (r < -1 && r != GENEVE_FLOW_BAD_ARGUMENT && r != GENEVE_FLOW_DROP_FULL &&
                r != GENEVE_FLOW_EXISTS)
                abort();
            if (r >= 0) {
                struct geneve_flow *f = geneve_flow_entry(t, r);
                if (!f || !(f->flags & GENEVE_FLOW_LIVE) || geneve_flow_lookup(t, f->key, f->key_len) != r)
                    abort();
            }
            free(entry);
            pos += sizeof(struct geneve_flow) + 1;
        } else if (op == 7) {
            /* Sequence adjustment: SYNs to Python or not; a live flow marked adjusted, as
             * Python marks it through its view (it then leaves a tombstone when idle). */
            int32_t i;
            if (pos >= size)
                break;
            if (geneve_flow_set_syn_to_python(t, data[pos] & 1) != 0 ||
                geneve_flow_set_syn_to_python(NULL, 1) != GENEVE_FLOW_BAD_ARGUMENT)
                abort();
            i = geneve_flow_next(t, data[pos] >> 1);
            if (i >= 0) {
                /* And a segment through its adjustment: whatever the bytes, only the header's
                 * sequence, acknowledgment and checksum fields may change. */
                struct geneve_flow *f = geneve_flow_entry(t, i);
                uint8_t *tcp;
                size_t n = size - pos - 1;
                f->seq_adjusted = (uint8_t)(data[pos] | GENEVE_SEQ_ADJUSTED);
                f->seq[0].shift = (int8_t)data[pos];
                f->seq[1].after = data[pos];
                tcp = malloc(n ? n : 1);
                if (!tcp)
                    abort();
                memcpy(tcp, data + pos + 1, n);
                if (geneve_seq_fast(f, data[pos] & 1, tcp, (uint32_t)n) == 0 &&
                    (n < 20 || memcmp(tcp, data + pos + 1, 4) ||
                     memcmp(tcp + 12, data + pos + 13, 4) ||
                     memcmp(tcp + 18, data + pos + 19, n - 18)))
                    abort();
                if (geneve_seq_fast(NULL, 1, tcp, (uint32_t)n) != GENEVE_FLOW_BAD_ARGUMENT ||
                    geneve_seq_fast(f, 1, NULL, 20) != GENEVE_FLOW_BAD_ARGUMENT)
                    abort();
                free(tcp);
            }
            pos++;
        } else {
            if (pos >= size)
                break;
            /* Nothing is pending here: every index is refused. */
            if (geneve_flow_release(t, data[pos++]) != GENEVE_FLOW_BAD_ARGUMENT)
                abort();
        }
        drain(t);
        if (geneve_flow_count(t, GENEVE_FLOW_COUNT_LIVE) > max_flows ||
            geneve_flow_count(t, GENEVE_FLOW_COUNT_TOMBSTONES) > max_flows)
            abort();
    }
    geneve_flow_table_free(t);
    return 0;
}
