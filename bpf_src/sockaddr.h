/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What a cgroup/connect, sendmsg, recvmsg or getpeername hook is about. */
#ifndef EBMESH_SOCKADDR_H
#define EBMESH_SOCKADDR_H

static __always_inline __u8 policy_protocol(__u32 protocol)
{
	if (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP)
		return IPPROTO_TCP;
	if (protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0; /* not L4 policy's business */
}

/* Copies an IPv6 address, or the IPv4 address it maps (::ffff:a.b.c.d):
 * a dual-stack socket talking to IPv4 is judged as IPv4. */
static __always_inline __u8 copy_address6(__u32 *to, const __u32 *from)
{
	if (is_v4_mapped(from)) {
		to[0] = from[3];
		return FAMILY_IPV4;
	}
	to[0] = from[0];
	to[1] = from[1];
	to[2] = from[2];
	to[3] = from[3];
	return FAMILY_IPV6;
}

static __always_inline bool address_is_zero(const __u32 *addr)
{
	return (addr[0] | addr[1] | addr[2] | addr[3]) == 0;
}

/* The address a sock_addr hook holds (user_ip4 or user_ip6), as a flow sees it. */
static __always_inline __u8 read_user_address(struct bpf_sock_addr *ctx, __u8 hook_family, __u32 *addr)
{
	__u32 raw[4];

	if (hook_family == FAMILY_IPV4) {
		addr[0] = ctx->user_ip4;
		return FAMILY_IPV4;
	}
	raw[0] = ctx->user_ip6[0];
	raw[1] = ctx->user_ip6[1];
	raw[2] = ctx->user_ip6[2];
	raw[3] = ctx->user_ip6[3];
	return copy_address6(addr, raw);
}

/* The source address a connect or send will use, if the socket (or the
 * sender's IP_PKTINFO) already fixed it; zero otherwise. */
static __always_inline void read_source_address(struct bpf_sock_addr *ctx, struct bpf_sock *sk, __u8 hook_family,
						bool sendmsg, struct flow *flow)
{
	__u32 src[4], chosen[4];

	if (hook_family == FAMILY_IPV4) {
		flow->src_addr[0] = sk->src_ip4;
		if (sendmsg) {
			__u32 picked = ctx->msg_src_ip4;

			if (picked)
				flow->src_addr[0] = picked;
		}
		return;
	}
	src[0] = sk->src_ip6[0];
	src[1] = sk->src_ip6[1];
	src[2] = sk->src_ip6[2];
	src[3] = sk->src_ip6[3];
	if (sendmsg) {
		/* Read unconditionally: clang would otherwise select between the two
		 * source pointers, and the verifier forbids arithmetic on a socket. */
		chosen[0] = ctx->msg_src_ip6[0];
		chosen[1] = ctx->msg_src_ip6[1];
		chosen[2] = ctx->msg_src_ip6[2];
		chosen[3] = ctx->msg_src_ip6[3];
		barrier_var(chosen[0]);
		if (!address_is_zero(chosen))
			__builtin_memcpy(src, chosen, sizeof(src));
	}
	if (copy_address6(flow->src_addr, src) != flow->family)
		__builtin_memset(flow->src_addr, 0, sizeof(flow->src_addr));
}

static __always_inline void write_user_address(struct bpf_sock_addr *ctx, __u8 hook_family,
					       const __u32 *addr, __u8 family, __u16 port)
{
	if (hook_family == FAMILY_IPV4) {
		ctx->user_ip4 = addr[0];
	} else if (family == FAMILY_IPV4) { /* a dual-stack socket: keep it v4-mapped */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = port;
}

/*
 * The identity of the local listener a flow to (dst_addr, dst_port) reaches,
 * if there is one in this network namespace and it belongs to this
 * attachment; OUTSIDE_ATTACHMENT otherwise.
 *
 * First the listener table (the listeners ingress has seen); `from_table`
 * says the answer came from there. Else a socket lookup, where a wildcard
 * listener counts only for a loopback destination: for another address the
 * lookup cannot tell a local address from a remote one (once a connection
 * reaches the listener, ingress records it under that address).
 * Global: connect() may call it twice, and the verifier checks it once.
 */
__noinline __u32 local_destination(struct bpf_sock_addr *ctx, const struct flow *flow, __u32 netns, __u32 use_table,
				   __u32 *from_table)
{
	struct bpf_sock_tuple tuple = {};
	struct listener_key key;
	const struct listener_slot *known;
	struct bpf_sock *peer;
	__u32 identity = OUTSIDE_ATTACHMENT;
	__u32 size;
	bool bound_to_destination;

	if (!ctx || !flow || !from_table)
		return OUTSIDE_ATTACHMENT;
	*from_table = 0;
	if (use_table) {
		fill_listener_key(&key, netns, flow->family, flow->protocol, flow->dst_addr, bpf_htons(flow->dst_port));
		known = known_listener(&key);
		if (known) {
			*from_table = 1;
			return known->identity;
		}
	}
	if (flow->family == FAMILY_IPV4) {
		tuple.ipv4.daddr = flow->dst_addr[0];
		tuple.ipv4.dport = bpf_htons(flow->dst_port);
		size = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.daddr, flow->dst_addr, 16);
		tuple.ipv6.dport = bpf_htons(flow->dst_port);
		size = sizeof(tuple.ipv6);
	}
	if (flow->protocol == IPPROTO_TCP)
		peer = bpf_sk_lookup_tcp(ctx, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	else
		peer = bpf_sk_lookup_udp(ctx, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (!peer)
		return OUTSIDE_ATTACHMENT;

	if (flow->family == FAMILY_IPV4)
		bound_to_destination = peer->src_ip4 == flow->dst_addr[0];
	else
		bound_to_destination = peer->src_ip6[0] == flow->dst_addr[0] &&
				       peer->src_ip6[1] == flow->dst_addr[1] &&
				       peer->src_ip6[2] == flow->dst_addr[2] &&
				       peer->src_ip6[3] == flow->dst_addr[3];
	if (bound_to_destination || is_loopback(flow->family, flow->dst_addr))
		identity = workload_of_socket(peer, false);
	bpf_sk_release(peer);
	return identity;
}

#endif /* EBMESH_SOCKADDR_H */
