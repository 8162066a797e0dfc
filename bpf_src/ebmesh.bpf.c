/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ebmesh datapath: the mesh's L4 policy, enforced at the socket for every
 * process of a cgroup.
 *
 *   egress  cgroup/connect4,6   TCP connects and UDP connects: a denial fails
 *           cgroup/sendmsg4,6   the syscall at once with EPERM; a service VIP is
 *                               translated to one of its backends
 *           cgroup/getpeername4,6, cgroup/recvmsg4,6
 *                               translate the backend back to the VIP
 *   egress  cgroup_skb/egress   records who sent each new flow (for ingress)
 *   ingress cgroup_skb/ingress  judges new flows entering a local workload
 *   test    syscall             `evaluate`: the same decision for a given flow
 *
 * policy.h is generated from the policy: its shape (default, mode, prefix
 * lengths, nesting depths) and, in comments, where each rule was written.
 * The rules themselves live in maps.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "ebmesh_types.h"
#include "policy.h"

const volatile struct runtime_config CONFIG SEC(".rodata.config") = {};

#include "maps.h"
#include "addresses.h"
#include "identity.h"
#include "decide.h"
#include "report.h"
#include "packet.h"
#include "balance.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SYSCALL_ALLOW 1
#define SYSCALL_DENY 0
#define PACKET_PASS 1
#define PACKET_DROP 0
#define ECONNREFUSED 111

/* How long a UDP flow's record stays fresh before its sender refreshes it. */
#define FLOW_REFRESH_NS (1000ull * 1000 * 1000)
/* How long an answer to a UDP datagram passes without a verdict of its own
 * (conntrack's default for an unreplied UDP flow is 30 s). */
#define UDP_REPLY_WINDOW_NS (30ull * 1000 * 1000 * 1000)

static __always_inline bool recent(__u64 seen_ns, __u64 window_ns)
{
	return bpf_ktime_get_ns() - seen_ns < window_ns;
}

/* Is this datagram an answer to one the socket received and we allowed? */
static __always_inline bool answers_allowed_datagram(const struct flow *flow, __u16 local_port)
{
	struct reply_key key = {
		.remote_port = bpf_htons(flow->dst_port),
		.local_port = bpf_htons(local_port),
		.family = flow->family,
		.protocol = IPPROTO_UDP,
	};
	struct reply_value *reply;

	__builtin_memcpy(key.remote_addr, flow->dst_addr, 16);
	reply = bpf_map_lookup_elem(&udp_replies, &key);
	return reply && recent(reply->seen_ns, UDP_REPLY_WINDOW_NS);
}

static __always_inline void allow_answers(const struct packet *packet)
{
	struct reply_key key = {
		.remote_port = packet->key.sport,
		.local_port = packet->key.dport,
		.family = packet->key.family,
		.protocol = IPPROTO_UDP,
	};
	struct reply_value reply = { .seen_ns = bpf_ktime_get_ns() };

	__builtin_memcpy(key.remote_addr, packet->key.saddr, 16);
	bpf_map_update_elem(&udp_replies, &key, &reply, BPF_ANY);
}

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
 * The identity of the local socket that will receive a flow to
 * (dst_addr, dst_port), if there is one in this network namespace and it
 * belongs to this attachment. A wildcard listener counts only for loopback
 * destinations: for other addresses the lookup cannot tell a local address
 * from a remote one, so the destination is then known by address here and
 * by its cgroup at ingress.
 */
static __always_inline __u32 local_destination(struct bpf_sock_addr *ctx, const struct flow *flow)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *peer;
	__u32 identity = OUTSIDE_ATTACHMENT;
	__u32 size;
	bool bound_to_destination;

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
		identity = workload_of_socket(peer);
	bpf_sk_release(peer);
	return identity;
}

static __always_inline const struct service_info *service_at(const struct flow *flow)
{
	struct service_key key = {
		.family = flow->family,
		.protocol = flow->protocol,
		.port = bpf_htons(flow->dst_port),
	};

	__builtin_memcpy(key.addr, flow->dst_addr, 16);
	return bpf_map_lookup_elem(&services, &key);
}

/* Remember, with a connected socket, the service its allowed connect was
 * judged against. */
static __always_inline void note_verdict(struct socket_note *note, const struct flow *flow)
{
	note->verdict.src_identity = flow->src_identity;
	note->verdict.dst_identity = flow->dst_identity;
	note->verdict.family = flow->family;
	__builtin_memcpy(note->verdict.src_addr, flow->src_addr, 16);
	note->verdict.valid = 1;
}

/*
 * An allowed connection or datagram to a service: send it to a backend.
 * Connected sockets remember the translation in socket storage (it dies with
 * the socket); an unconnected UDP socket remembers its backend per service,
 * and the translation per backend, in LRU maps keyed by its cookie.
 */
static __always_inline int balance(struct bpf_sock_addr *ctx, __u8 hook_family, bool sendmsg,
				   struct bpf_sock *sk, const struct flow *flow, struct decision *decision,
				   const struct service_info *service)
{
	struct translation translation = {
		.vip_port = bpf_htons(flow->dst_port),
		.service = service->identity,
		.family = flow->family,
	};
	const struct backend *backend = NULL;
	__u64 cookie = 0;
	__u32 id = 0;
	bool chosen_now = true;

	if (sendmsg) {
		cookie = bpf_get_socket_cookie(ctx);
		backend = remembered_backend(cookie, service->identity, &id);
		chosen_now = !backend;
	}
	if (!backend)
		backend = pick_backend(service, &id);
	if (!backend) {
		decision->verdict = VERDICT_DENY;
		decision->flags |= DECISION_NO_BACKEND;
		report(flow, decision, cgroup_id_of_socket(sk), NULL, 0);
		bpf_set_retval(-ECONNREFUSED);
		return SYSCALL_DENY;
	}

	__builtin_memcpy(translation.vip, flow->dst_addr, 16);
	__builtin_memcpy(translation.backend_addr, backend->addr, 16);
	translation.backend_port = backend->port;
	translation.backend = id;
	write_user_address(ctx, hook_family, backend->addr, backend->family, backend->port);

	if (!sendmsg) {
		struct socket_note *note = bpf_sk_storage_get(&socket_notes, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (note) {
			note->translation = translation;
			note_verdict(note, flow);
		}
	} else if (chosen_now) {
		struct udp_translation_key key = {
			.cookie = cookie,
			.backend_port = backend->port,
			.family = backend->family,
		};

		__builtin_memcpy(key.backend_addr, backend->addr, 16);
		bpf_map_update_elem(&udp_translations, &key, &translation, BPF_ANY);
		remember_backend(cookie, service->identity, id);
	}
	if (chosen_now)
		count_backend(id);
	report(flow, decision, cgroup_id_of_socket(sk), backend, id);
	return SYSCALL_ALLOW;
}

/* Egress at the socket: connect() of TCP and UDP, sendmsg() of unconnected UDP. */
static __always_inline int judge_sock_addr(struct bpf_sock_addr *ctx, __u8 family, bool sendmsg)
{
	struct bpf_sock *sk = ctx->sk;
	struct flow flow = { .direction = DIRECTION_EGRESS };
	struct decision decision = {};
	const struct service_info *service;
	__u32 destination;

	if (!sk)
		return SYSCALL_ALLOW;
	flow.protocol = policy_protocol(ctx->protocol);
	if (!flow.protocol)
		return SYSCALL_ALLOW;

	flow.family = read_user_address(ctx, family, flow.dst_addr);
	if (family == FAMILY_IPV4) {
		flow.src_addr[0] = sk->src_ip4;
		if (sendmsg) {
			__u32 chosen = ctx->msg_src_ip4; /* the sender's IP_PKTINFO, if any */

			if (chosen)
				flow.src_addr[0] = chosen;
		}
	} else {
		__u32 src[4], chosen[4];

		src[0] = sk->src_ip6[0];
		src[1] = sk->src_ip6[1];
		src[2] = sk->src_ip6[2];
		src[3] = sk->src_ip6[3];
		if (sendmsg) {
			/* Read unconditionally: clang would otherwise select between the
			 * two source pointers, and the verifier forbids arithmetic on sock. */
			chosen[0] = ctx->msg_src_ip6[0];
			chosen[1] = ctx->msg_src_ip6[1];
			chosen[2] = ctx->msg_src_ip6[2];
			chosen[3] = ctx->msg_src_ip6[3];
			barrier_var(chosen[0]);
			if (!address_is_zero(chosen))
				__builtin_memcpy(src, chosen, sizeof(src));
		}
		if (copy_address6(flow.src_addr, src) != flow.family)
			__builtin_memset(flow.src_addr, 0, sizeof(flow.src_addr));
	}
	flow.dst_port = bpf_ntohs(ctx->user_port);
	flow.src_port = sk->src_port;
	if (!address_is_zero(flow.src_addr))
		flow.flags |= FLOW_SRC_ADDRESS_KNOWN;

	if (sendmsg && flow.protocol == IPPROTO_UDP && answers_allowed_datagram(&flow, flow.src_port))
		return SYSCALL_ALLOW;

	flow.src_identity = workload_of_socket(sk);
	if (flow.src_identity == OUTSIDE_ATTACHMENT)
		return SYSCALL_ALLOW;
	flow.flags |= FLOW_SRC_BY_CGROUP;

	service = service_at(&flow);
	if (service) {
		flow.dst_identity = service->identity;
		flow.flags |= FLOW_DST_IS_SERVICE;
	} else {
		destination = local_destination(ctx, &flow);
		if (destination == OUTSIDE_ATTACHMENT) {
			flow.flags |= FLOW_DST_BY_ADDRESS;
		} else {
			flow.dst_identity = destination;
			flow.flags |= FLOW_DST_BY_CGROUP;
		}
	}

	decide(&flow, &decision);
	if (decision.verdict != VERDICT_ALLOW) {
		report(&flow, &decision, cgroup_id_of_socket(sk), NULL, 0);
		return SYSCALL_DENY;
	}
	/* A connection to a service keeps a note with its socket (for getpeername,
	 * and so that the backend's ingress does not decide it again). A direct
	 * one does not: creating socket storage costs more than the receiver's
	 * second decision it would save. */
	if (service)
		return balance(ctx, family, sendmsg, sk, &flow, &decision, service);
	report(&flow, &decision, cgroup_id_of_socket(sk), NULL, 0);
	return SYSCALL_ALLOW;
}

SEC("cgroup/connect4")
int ebmesh_connect4(struct bpf_sock_addr *ctx)
{
	return judge_sock_addr(ctx, FAMILY_IPV4, false);
}

SEC("cgroup/connect6")
int ebmesh_connect6(struct bpf_sock_addr *ctx)
{
	return judge_sock_addr(ctx, FAMILY_IPV6, false);
}

SEC("cgroup/sendmsg4")
int ebmesh_sendmsg4(struct bpf_sock_addr *ctx)
{
	return judge_sock_addr(ctx, FAMILY_IPV4, true);
}

SEC("cgroup/sendmsg6")
int ebmesh_sendmsg6(struct bpf_sock_addr *ctx)
{
	return judge_sock_addr(ctx, FAMILY_IPV6, true);
}

/* The application sees the VIP as its peer, not the backend it talks to. */
static __always_inline int translate_back(struct bpf_sock_addr *ctx, __u8 hook_family, bool datagram)
{
	const struct translation *translation = NULL;
	struct socket_note *note;
	struct bpf_sock *sk = ctx->sk;
	__u32 addr[4] = {};
	__u8 family;
	__u16 port;

	if (!sk)
		return SYSCALL_ALLOW;
	family = read_user_address(ctx, hook_family, addr);
	port = ctx->user_port;
	note = bpf_sk_storage_get(&socket_notes, sk, 0, 0);
	if (note && note->translation.service)
		translation = &note->translation;
	if (!translation && datagram) {
		struct udp_translation_key key = {
			.cookie = bpf_get_socket_cookie(ctx),
			.backend_port = port,
			.family = family,
		};

		__builtin_memcpy(key.backend_addr, addr, 16);
		translation = bpf_map_lookup_elem(&udp_translations, &key);
	}
	if (translation && translation_matches(translation, family, addr, port))
		write_user_address(ctx, hook_family, translation->vip, family, translation->vip_port);
	return SYSCALL_ALLOW;
}

SEC("cgroup/getpeername4")
int ebmesh_getpeername4(struct bpf_sock_addr *ctx)
{
	return translate_back(ctx, FAMILY_IPV4, false);
}

SEC("cgroup/getpeername6")
int ebmesh_getpeername6(struct bpf_sock_addr *ctx)
{
	return translate_back(ctx, FAMILY_IPV6, false);
}

SEC("cgroup/recvmsg4")
int ebmesh_recvmsg4(struct bpf_sock_addr *ctx)
{
	return translate_back(ctx, FAMILY_IPV4, true);
}

SEC("cgroup/recvmsg6")
int ebmesh_recvmsg6(struct bpf_sock_addr *ctx)
{
	return translate_back(ctx, FAMILY_IPV6, true);
}

/* Egress of packets: note who sends each new flow, so that the receiving
 * workload's ingress can tell a local sender by its cgroup. */
SEC("cgroup_skb/egress")
int ebmesh_egress(struct __sk_buff *skb)
{
	struct packet packet;
	struct flow_record record = {};
	const struct translation *translation = NULL;
	const struct socket_note *note;
	struct flow_record *known;
	struct bpf_sock *sk;
	__u64 now;

	sk = skb->sk;
	if (!sk)
		return PACKET_PASS;
	sk = bpf_sk_fullsock(sk); /* request and timewait sockets start no flow */
	if (!sk)
		return PACKET_PASS;
	/* Of TCP only a connecting socket starts a flow: the rest of a
	 * connection's packets pass without being parsed. */
	if (sk->protocol == IPPROTO_TCP && sk->state != BPF_TCP_SYN_SENT)
		return PACKET_PASS;
	if (read_packet(skb, &packet) != PACKET_L4)
		return PACKET_PASS;
	if (packet.key.protocol == IPPROTO_TCP && !is_connection_request(&packet))
		return PACKET_PASS;

	now = bpf_ktime_get_ns();
	if (packet.key.protocol == IPPROTO_UDP) {
		known = bpf_map_lookup_elem(&flows, &packet.key);
		if (known && now - known->seen_ns < FLOW_REFRESH_NS)
			return PACKET_PASS;
	}
	note = bpf_sk_storage_get(&socket_notes, sk, 0, 0);
	if (note && note->verdict.valid) {
		record.src_identity = note->verdict.src_identity;
		/* connect() judged this flow, with this source address or, when no
		 * rule looks at source addresses, with any */
		if (!POLICY_HAS_SRC(SIDE_KIND_CLASS) || same_address(note->verdict.src_addr, packet.key.saddr)) {
			record.flags |= FLOW_RECORD_JUDGED;
			record.judged_dst = note->verdict.dst_identity;
		}
	} else {
		record.src_identity = workload_of_socket(sk);
		if (record.src_identity == OUTSIDE_ATTACHMENT)
			return PACKET_PASS;
	}
	record.seen_ns = now;
	/* Sent to a service? The backend's ingress judges it by the service. */
	if (note && note->translation.service)
		translation = &note->translation;
	if (!translation && packet.key.protocol == IPPROTO_UDP) {
		struct udp_translation_key key = {
			.cookie = bpf_get_socket_cookie(skb),
			.backend_port = packet.key.dport,
			.family = packet.key.family,
		};

		__builtin_memcpy(key.backend_addr, packet.key.daddr, 16);
		translation = bpf_map_lookup_elem(&udp_translations, &key);
	}
	if (translation && translation_matches(translation, packet.key.family, packet.key.daddr, packet.key.dport)) {
		record.service = translation->service;
		__builtin_memcpy(record.vip, translation->vip, 16);
		record.vip_port = translation->vip_port;
	}
	bpf_map_update_elem(&flows, &packet.key, &record, BPF_ANY);
	return PACKET_PASS;
}

/* Ingress: a new flow entering a local workload (a TCP SYN, a UDP datagram
 * that does not answer one the workload sent). */
SEC("cgroup_skb/ingress")
int ebmesh_ingress(struct __sk_buff *skb)
{
	struct packet packet;
	struct flow flow = { .direction = DIRECTION_INGRESS };
	struct decision decision = {};
	struct flow_key reply_to;
	struct flow_record *sender;
	struct bpf_sock *sk;

	sk = skb->sk;
	if (!sk)
		return PACKET_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return PACKET_PASS;
	/* A new TCP connection knocks at a listener; the packets of one that
	 * exists pass without being parsed. */
	if (sk->protocol == IPPROTO_TCP && sk->state != BPF_TCP_LISTEN)
		return PACKET_PASS;
	switch (read_packet(skb, &packet)) {
	case PACKET_L4:
		break;
	case PACKET_NOT_L4:
		return PACKET_PASS; /* not L4 policy's business */
	default:
		return PACKET_DROP;
	}
	if (packet.key.protocol == IPPROTO_TCP && !is_connection_request(&packet))
		return PACKET_PASS;
	if (packet.key.protocol == IPPROTO_UDP) {
		reverse_key(&packet.key, &reply_to);
		sender = bpf_map_lookup_elem(&flows, &reply_to);
		if (sender && recent(sender->seen_ns, UDP_REPLY_WINDOW_NS))
			return PACKET_PASS; /* an answer to what this workload sent */
	}

	flow.family = packet.key.family;
	flow.protocol = packet.key.protocol;
	__builtin_memcpy(flow.src_addr, packet.key.saddr, 16);
	__builtin_memcpy(flow.dst_addr, packet.key.daddr, 16);
	flow.src_port = bpf_ntohs(packet.key.sport);
	flow.dst_port = bpf_ntohs(packet.key.dport);
	flow.flags = FLOW_SRC_ADDRESS_KNOWN | FLOW_DST_BY_CGROUP;
	flow.dst_identity = workload_of_socket(sk);
	if (flow.dst_identity == OUTSIDE_ATTACHMENT)
		return PACKET_PASS;

	sender = bpf_map_lookup_elem(&flows, &packet.key);
	if (sender) {
		flow.src_identity = sender->src_identity;
		flow.flags |= FLOW_SRC_BY_CGROUP;
		if (sender->service) {
			/* Traffic to a service is judged by the service, at its backend too. */
			flow.dst_identity = sender->service;
			__builtin_memcpy(flow.dst_addr, sender->vip, 16);
			flow.dst_port = bpf_ntohs(sender->vip_port);
			flow.flags = (flow.flags & ~FLOW_DST_BY_CGROUP) | FLOW_DST_IS_SERVICE;
		}
	} else {
		flow.flags |= FLOW_SRC_BY_ADDRESS;
	}

	if (sender && (sender->flags & FLOW_RECORD_JUDGED) && sender->judged_dst == flow.dst_identity) {
		/* The sender's connect() already allowed exactly these two parties. */
	} else {
		decide(&flow, &decision);
		report(&flow, &decision, cgroup_id_of_socket(sk), NULL, 0);
		if (decision.verdict != VERDICT_ALLOW)
			return PACKET_DROP;
	}
	if (flow.protocol == IPPROTO_UDP)
		allow_answers(&packet);
	return PACKET_PASS;
}

/* `CompiledPolicy.evaluate`: the decision above, for a flow given by userspace. */
SEC("syscall")
int ebmesh_evaluate(struct evaluate_request *request)
{
	struct flow flow = request->flow;
	struct decision decision = {};
	const struct service_info *service;

	/* Like the hooks: a destination known only by address may be a service VIP. */
	if (flow.flags & FLOW_DST_BY_ADDRESS) {
		service = service_at(&flow);
		if (service) {
			flow.dst_identity = service->identity;
			flow.flags &= ~FLOW_DST_BY_ADDRESS;
			flow.flags |= FLOW_DST_IS_SERVICE;
		}
	}
	decide(&flow, &decision);
	request->flow = flow;
	request->decision = decision;
	return 0;
}
