// The verifier must reject this: the lookup result is used without a NULL check.
// (A hash map: recent kernels prove constant-key array lookups non-NULL.)
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} values SEC(".maps");

SEC("syscall")
int unchecked_lookup(void *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&values, &key);

	return *value; /* the verifier's complaint must come from the verifier, not this source */
}

char LICENSE[] SEC("license") = "GPL";
