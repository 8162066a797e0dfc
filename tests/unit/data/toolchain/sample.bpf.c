// A small policy-shaped eBPF program exercising what ebmesh generates:
// several cgroup program types, BTF-defined maps of five kinds, a .rodata
// config section, CO-RE reads of kernel structs and a kfunc.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sample_policy.h"

extern void *bpf_rdonly_cast(void *obj, __u32 btf_id) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u32);
} identities SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 512);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
} cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} sock_identity SEC(".maps");

/* Set by the loader before load: .rodata */
const volatile __u32 cfg_enforce = 1;
const volatile __u64 cfg_policy_generation = 0;
/* .data and .bss */
__u32 audit_sample_rate = 100;
__u64 decisions;

static __noinline void count(__u32 slot)
{
	__u64 *counter = bpf_map_lookup_elem(&counters, &slot);

	if (counter)
		*counter += 1;
}

static __always_inline void report(__u32 addr, __u16 port, __u8 family, __u8 verdict)
{
	struct flow_event *event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);

	if (!event)
		return;
	event->cookie = cfg_policy_generation;
	event->addr = addr;
	event->port = port;
	event->family = family;
	event->verdict = verdict;
	bpf_ringbuf_submit(event, 0);
}

static int loop_step(__u32 index, void *ctx)
{
	__sync_fetch_and_add(&decisions, 1);
	return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = ctx->user_ip4 };
	struct bpf_sock *bsk = ctx->sk;
	struct sock *sk;
	__u32 *verdict;

	if (!bsk)
		return VERDICT_ALLOW;
	sk = bpf_rdonly_cast(bsk, bpf_core_type_id_kernel(struct sock));
	if (BPF_CORE_READ(sk, __sk_common.skc_family) != AF_INET)
		return VERDICT_ALLOW;
	count(0);
	verdict = bpf_map_lookup_elem(&cidrs, &key);
	if (verdict && *verdict == VERDICT_DENY && cfg_enforce) {
		report(ctx->user_ip4, bpf_ntohs(ctx->user_port), AF_INET, VERDICT_DENY);
		return VERDICT_DENY;
	}
	return VERDICT_ALLOW;
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	count(1);
	return VERDICT_ALLOW;
}

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	count(2);
	return VERDICT_ALLOW;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	count(3);
	return VERDICT_ALLOW;
}

SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
	return sk->family == AF_INET || sk->family == AF_INET6 ? VERDICT_ALLOW : VERDICT_ALLOW;
}

SEC("cgroup_skb/ingress")
int skb_ingress(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 *identity = bpf_map_lookup_elem(&identities, &cookie);

	if (identity && *identity == 0 && cfg_enforce)
		return VERDICT_DENY;
	return VERDICT_ALLOW;
}

SEC("cgroup_skb/egress")
int skb_egress(struct __sk_buff *skb)
{
	count(4);
	if (audit_sample_rate && skb->len > 1500)
		report(skb->remote_ip4, (__u16)skb->remote_port, AF_INET, VERDICT_ALLOW);
	return VERDICT_ALLOW;
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	__u64 *identity;

	if (!sk)
		return 1;
	identity = bpf_sk_storage_get(&sock_identity, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (identity)
		*identity = cfg_policy_generation;
	return 1;
}

SEC("sk_msg")
int msg_verdict(struct sk_msg_md *msg)
{
	return SK_PASS;
}

SEC("syscall")
int refresh(void *ctx)
{
	bpf_loop(4, loop_step, NULL, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
