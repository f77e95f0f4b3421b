/*
 * Agent mode: the layout of a producer's ring and of the agent's sink table, shared by the
 * producer (producer.c, built into liblogpool.so and into the Python-free
 * liblogpool_producer.so) and the agent (ring_agent.c). Internal; the files live in
 * agent_dir and both sides are built from this one header.
 *
 * One file per producer pool: a 4 KiB header, then data_bytes (a power of two) of records.
 * Positions are byte counts that only grow; a record sits at pos & (data_bytes - 1).
 * The producer alone writes write_pos (a release store once the record is complete) and the
 * producer line's counters; the agent alone writes read_pos (a release store once the
 * records before it are delivered or spooled) and scan_pos (how far it has taken). Each side
 * reads the other's position with an acquire load: the io_uring SQ/CQ discipline.
 *
 * A record is an 8-byte header {uint32 len, uint32 sink} and len bytes, padded to 8; it
 * never wraps: when it does not fit before the end, a pad record (sink RING_PAD) fills the
 * rest and the record starts at offset 0. To the agent every byte of the file is untrusted:
 * it reads the geometry once at open, bounds every length and offset, and survives a file
 * truncated under it (ring_agent.c).
 */
#ifndef LOGPOOL_RING_H
#define LOGPOOL_RING_H

#include <stdint.h>

#define RING_MAGIC 0x31474e4952504c4cULL /* "LLPRING1" */
#define RING_VERSION 1u
#define RING_HEADER_BYTES 4096u
#define RING_RECORD_HEADER 8u
#define RING_PAD 0xffffffffu
#define RING_MIN_BYTES (64u << 10)
#define RING_MAX_BYTES (1ull << 30)
#define RING_DEFAULT_BYTES (4u << 20)
#define RING_FILE_PREFIX "ring."
#define SINK_TABLE_NAME "sinks"
#define SINK_TABLE_MAGIC "logpool-agent-sinks 1"
#define AGENT_MAX_SINKS 256
#define AGENT_MAX_SINK_NAME 255

typedef struct ring_header_s {
    /* Written once by the producer before the file is visible under its final name. */
    uint64_t magic;
    uint32_t version;
    uint32_t header_bytes;
    uint64_t data_bytes;
    uint64_t pid;
    uint64_t start_time; /* /proc/<pid>/stat field 22: a reused pid has another one */
    uint64_t created_unix_ns;
    uint64_t nsinks;
    uint64_t reserved0[1];
    /* The producer's line. */
    uint64_t write_pos __attribute__((aligned(64)));
    uint64_t accepted_messages;
    uint64_t accepted_bytes;
    uint64_t dropped_full;
    uint64_t dropped_too_big;
    uint64_t closed; /* the pool was closed: nothing more comes */
    /* The agent's line. */
    uint64_t read_pos __attribute__((aligned(64)));
    uint64_t scan_pos;
    uint64_t agent_resets;
} ring_header_t;

_Static_assert(sizeof(ring_header_t) <= RING_HEADER_BYTES, "ring header larger than its page");

static inline uint64_t ring_align8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

#endif /* LOGPOOL_RING_H */
