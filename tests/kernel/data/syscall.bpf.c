// A SEC("syscall") program: reads its context, writes an answer back into
// it, counts its runs and submits an event to a ring buffer.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct args {
	__u32 in;
	__u32 out;
	__u64 seq;
};

struct event {
	__u32 value;
	__u32 magic;
	__u64 seq;
};

/* Set from user space with ObjectMap.set_initial_value before load. */
const volatile __u32 cfg_multiplier = 1;
const volatile __u32 cfg_magic = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} runs SEC(".maps");

SEC("syscall")
int compute(struct args *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&runs, &key);
	struct event *e;

	if (count)
		__sync_fetch_and_add(count, 1);
	ctx->out = ctx->in * cfg_multiplier;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 1;
	e->value = ctx->out;
	e->magic = cfg_magic;
	e->seq = ctx->seq;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Not loaded unless asked: proves set_autoload(False) works. */
SEC("syscall")
int unused(void *ctx)
{
	return 7;
}

char LICENSE[] SEC("license") = "GPL";
