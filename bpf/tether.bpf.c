// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Tether's kernel-side probes, loaded by the agent with aya (edge-agent/src/ebpf.rs).
//
//   tp/syscalls/sys_enter_connect  every connect(2) on the host -> pid, remote
//                                  address (feeds discovery without scanning
//                                  /proc/net)
//   uprobe    SSL_write, SSL_write_ex  plaintext leaving an instrumented process
//   uprobe    SSL_read,  SSL_read_ex   remembers the caller's buffer per thread
//   uretprobe SSL_read,  SSL_read_ex   plaintext that arrived, once the call returns
//
// Every event is one record on the EVENTS ring buffer, in the versioned binary
// format of record.h (documented in docs/ebpf.md). Payloads are copied in chunks
// of TETHER_CHUNK bytes, at most TETHER_MAX_CHUNKS per call; what is cut off is
// flagged, never silently lost. A record the ring buffer has no room for is
// counted in DROPS.
//
// The programs read only stable ABIs (the syscall tracepoint's arguments and the
// x86-64 calling convention in pt_regs), so this one BTF-carrying object needs no
// kernel headers of the build machine and loads on any kernel with ring buffers
// (5.8+). uprobes are attached per process by the agent, so nothing here filters
// by pid.

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "record.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    // 256 KiB (four of the largest calls, 64 KiB each): the agent drains it as
    // soon as poll(2) wakes it; a burst that outruns it is counted in DROPS,
    // not blocked on. Its pages are mapped into the agent twice (wrap-around),
    // so this is also up to 512 KiB of the agent's RSS.
    __uint(max_entries, 256 * 1024);
} EVENTS SEC(".maps");

// Records lost because the ring buffer was full, per CPU.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} DROPS SEC(".maps");

// One record under construction per CPU (too large for the 512-byte stack).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tether_record);
} SCRATCH SEC(".maps");

// SSL_read arguments between entry and return, per thread.
struct read_args {
    __u64 ssl;
    __u64 buf;
    __u64 readbytes; // SSL_read_ex's size_t *, 0 for SSL_read
    __u64 ts_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, __u64);
    __type(value, struct read_args);
} READS SEC(".maps");

static __always_inline void count_drop(void)
{
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&DROPS, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline struct tether_record *scratch(__u8 kind)
{
    __u32 zero = 0;
    struct tether_record *r = bpf_map_lookup_elem(&SCRATCH, &zero);
    if (!r)
        return 0;
    __u64 id = bpf_get_current_pid_tgid();
    r->version = TETHER_RECORD_VERSION;
    r->kind = kind;
    r->flags = 0;
    r->pid = id >> 32;
    r->tid = (__u32)id;
    return r;
}

// Emits the call's plaintext as up to TETHER_MAX_CHUNKS records.
static __always_inline void emit_data(__u8 kind, __u64 ssl, __u64 buf, __u64 len, __u64 start_ns)
{
    if (!buf || len == 0)
        return;
    __u64 end_ns = bpf_ktime_get_ns();
    for (__u32 i = 0; i < TETHER_MAX_CHUNKS; i++) {
        __u64 off = (__u64)i * TETHER_CHUNK;
        if (off >= len)
            break;
        struct tether_record *r = scratch(kind);
        if (!r)
            return;
        __u64 n = len - off;
        if (n > TETHER_CHUNK)
            n = TETHER_CHUNK;
        r->conn = ssl;
        r->start_ns = start_ns;
        r->end_ns = end_ns;
        r->total_len = len > 0xffffffffULL ? 0xffffffffU : (__u32)len;
        r->offset = (__u32)off;
        r->chunk_len = (__u32)n;
        if (off + n < len && i == TETHER_MAX_CHUNKS - 1)
            r->flags |= TETHER_FLAG_TRUNCATED;
        if (bpf_probe_read_user(r->data, n, (const void *)(buf + off)) != 0)
            r->flags |= TETHER_FLAG_FAULT;
        if (bpf_ringbuf_output(&EVENTS, r, TETHER_HEADER_LEN + n, 0) != 0)
            count_drop();
    }
}

// int SSL_write(SSL *ssl, const void *buf, int num);
// The plaintext is complete at entry; a failed write is rare and retried by the
// caller with the same bytes, which the HTTP reassembly tolerates. `num` is an
// int: only the low 32 bits of the register are defined.
SEC("uprobe")
int BPF_KPROBE(tether_ssl_write, void *ssl, const void *buf, int num)
{
    if (num <= 0)
        return 0;
    emit_data(TETHER_KIND_SSL_WRITE, (__u64)ssl, (__u64)buf, (__u32)num, bpf_ktime_get_ns());
    return 0;
}

// int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written);
SEC("uprobe")
int BPF_KPROBE(tether_ssl_write_ex, void *ssl, const void *buf, __u64 num)
{
    emit_data(TETHER_KIND_SSL_WRITE, (__u64)ssl, (__u64)buf, num, bpf_ktime_get_ns());
    return 0;
}

static __always_inline void remember_read(void *ssl, void *buf, __u64 readbytes)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct read_args a = {
        .ssl = (__u64)ssl,
        .buf = (__u64)buf,
        .readbytes = readbytes,
        .ts_ns = bpf_ktime_get_ns(),
    };
    bpf_map_update_elem(&READS, &id, &a, BPF_ANY);
}

// int SSL_read(SSL *ssl, void *buf, int num);
SEC("uprobe")
int BPF_KPROBE(tether_ssl_read_enter, void *ssl, void *buf)
{
    remember_read(ssl, buf, 0);
    return 0;
}

// int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes);
SEC("uprobe")
int BPF_KPROBE(tether_ssl_read_ex_enter, void *ssl, void *buf, __u64 num, __u64 *readbytes)
{
    remember_read(ssl, buf, (__u64)readbytes);
    return 0;
}

static __always_inline struct read_args *take_read(struct read_args *out)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct read_args *a = bpf_map_lookup_elem(&READS, &id);
    if (!a)
        return 0;
    *out = *a;
    bpf_map_delete_elem(&READS, &id);
    return out;
}

// SSL_read returned: the byte count (int), <= 0 on error or close.
SEC("uretprobe")
int BPF_KRETPROBE(tether_ssl_read_exit, int ret)
{
    struct read_args args;
    if (!take_read(&args) || ret <= 0)
        return 0;
    emit_data(TETHER_KIND_SSL_READ, args.ssl, args.buf, (__u32)ret, args.ts_ns);
    return 0;
}

// SSL_read_ex returned: 1 on success, the count in *readbytes.
SEC("uretprobe")
int BPF_KRETPROBE(tether_ssl_read_ex_exit, int ret)
{
    struct read_args args;
    __u64 n = 0;
    if (!take_read(&args) || ret != 1 || !args.readbytes)
        return 0;
    if (bpf_probe_read_user(&n, sizeof(n), (const void *)args.readbytes) != 0)
        return 0;
    emit_data(TETHER_KIND_SSL_READ, args.ssl, args.buf, n, args.ts_ns);
    return 0;
}

// struct trace_event_raw_sys_enter, as the tracepoint's format file describes it.
struct sys_enter_args {
    __u64 common; // common_type, flags, preempt_count, pid
    __s64 id;
    __u64 args[6];
};

struct sockaddr_any {
    __u16 family;
    __u16 port; // network order
    union {
        __u8 v4[4];
        struct {
            __u32 flowinfo;
            __u8 v6[16];
        } in6;
    };
};

// connect(int fd, const struct sockaddr *addr, socklen_t addrlen)
SEC("tracepoint/syscalls/sys_enter_connect")
int tether_connect(struct sys_enter_args *ctx)
{
    struct sockaddr_any sa = {};
    const void *uaddr = (const void *)ctx->args[1];
    if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa.family) + sizeof(sa.port) + 4, uaddr) != 0)
        return 0;
    if (sa.family != 2 && sa.family != 10) // AF_INET, AF_INET6
        return 0;
    if (sa.family == 10 && bpf_probe_read_user(&sa, sizeof(sa), uaddr) != 0)
        return 0;
    struct tether_record *r = scratch(TETHER_KIND_CONNECT);
    if (!r)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    r->conn = 0;
    r->start_ns = now;
    r->end_ns = now;
    r->total_len = TETHER_CONNECT_LEN;
    r->offset = 0;
    r->chunk_len = TETHER_CONNECT_LEN;
    // data: family (u16 LE), port (u16 network order), address (16 bytes; v4 in the first 4)
    __builtin_memset(r->data, 0, TETHER_CONNECT_LEN);
    __builtin_memcpy(r->data, &sa.family, 2);
    __builtin_memcpy(r->data + 2, &sa.port, 2);
    if (sa.family == 2)
        __builtin_memcpy(r->data + 4, sa.v4, 4);
    else
        __builtin_memcpy(r->data + 4, sa.in6.v6, 16);
    if (bpf_ringbuf_output(&EVENTS, r, TETHER_HEADER_LEN + TETHER_CONNECT_LEN, 0) != 0)
        count_drop();
    return 0;
}
