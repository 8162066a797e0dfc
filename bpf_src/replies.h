/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Time windows of the flow state, and the answers UDP sockets may send. */
#ifndef EBMESH_REPLIES_H
#define EBMESH_REPLIES_H

/* How long a UDP flow's record stays fresh before its sender refreshes it. */
#define FLOW_REFRESH_NS (1000ull * 1000 * 1000)
/* How long a sender's record is believed at ingress. Every SYN (retransmits
 * too) and every UDP datagram older than FLOW_REFRESH_NS rewrites it on its
 * way out, so a live sender's record is always younger than this; an old one
 * is ignored, lest a process outside the mesh that reuses the port inherits
 * the workload's identity. */
#define FLOW_TRUST_NS (2 * FLOW_REFRESH_NS)
/* How long an answer to a UDP datagram passes without a verdict of its own
 * (conntrack's default for an unreplied UDP flow is 30 s). */
#define UDP_REPLY_WINDOW_NS (30ull * 1000 * 1000 * 1000)

static __always_inline bool recent(__u64 seen_ns, __u64 window_ns)
{
	return bpf_ktime_get_ns() - seen_ns < window_ns;
}

/* Did the socket `cookie` let a datagram from (addr, port) in lately? Then it
 * may answer that peer, and the peer's next datagrams belong to the same
 * flow, as conntrack would see it. */
static __always_inline bool allowed_peer(__u64 cookie, __u8 family, const __u32 *addr, __u16 port)
{
	struct reply_key key = {
		.cookie = cookie,
		.remote_port = port,
		.family = family,
	};
	struct reply_value *reply;

	__builtin_memcpy(key.remote_addr, addr, 16);
	reply = bpf_map_lookup_elem(&udp_replies, &key);
	return reply && recent(reply->seen_ns, UDP_REPLY_WINDOW_NS);
}

/* An allowed datagram entered the socket `cookie`: see allowed_peer(). */
static __always_inline void allow_answers(__u64 cookie, const struct flow_key *packet)
{
	struct reply_key key = {
		.cookie = cookie,
		.remote_port = packet->sport,
		.family = packet->family,
	};
	struct reply_value reply = { .seen_ns = bpf_ktime_get_ns() };

	__builtin_memcpy(key.remote_addr, packet->saddr, 16);
	bpf_map_update_elem(&udp_replies, &key, &reply, BPF_ANY);
}

#endif /* EBMESH_REPLIES_H */
