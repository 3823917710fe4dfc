// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// The binary record between Tether's eBPF programs and the agent, version 1.
// Little-endian, packed as laid out here (every field naturally aligned, no
// implicit padding). The agent's parser (edge-agent/src/ebpf/record.rs) checks
// `version` first and drops records of any other version, counting them.
// A change of layout is a new version; docs/ebpf.md describes the fields.

#ifndef TETHER_RECORD_H
#define TETHER_RECORD_H

#define TETHER_RECORD_VERSION 1

#define TETHER_KIND_CONNECT 1
#define TETHER_KIND_SSL_WRITE 2
#define TETHER_KIND_SSL_READ 3

#define TETHER_FLAG_TRUNCATED 1 // the call carried more than TETHER_MAX_CHUNKS chunks
#define TETHER_FLAG_FAULT 2     // the user buffer could not be read; data is zeros

#define TETHER_CHUNK 4096
#define TETHER_MAX_CHUNKS 16
#define TETHER_HEADER_LEN 48
#define TETHER_CONNECT_LEN 20

struct tether_record {
    __u8 version;    // 0: TETHER_RECORD_VERSION
    __u8 kind;       // 1: TETHER_KIND_*
    __u16 flags;     // 2: TETHER_FLAG_*
    __u32 pid;       // 4: process (tgid)
    __u32 tid;       // 8: thread
    __u32 total_len; // 12: bytes the call carried
    __u64 conn;      // 16: SSL * of the connection (0 for connect)
    __u64 start_ns;  // 24: CLOCK_MONOTONIC at entry
    __u64 end_ns;    // 32: CLOCK_MONOTONIC at return
    __u32 offset;    // 40: this chunk's offset in the call's bytes
    __u32 chunk_len; // 44: bytes in data
    __u8 data[TETHER_CHUNK]; // 48
};

#endif
