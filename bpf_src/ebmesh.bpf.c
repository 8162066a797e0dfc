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
#include "replies.h"
#include "sockaddr.h"
#include "balance.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SYSCALL_ALLOW 1
#define SYSCALL_DENY 0
#define PACKET_PASS 1
#define PACKET_DROP 0
#define ECONNREFUSED 111

/* A denial at the socket that names no rule: the socket's cgroup is nested
 * too deep below the attach cgroup to be told apart. */
static __always_inline int refuse_unidentified(struct flow *flow, struct bpf_sock *sk)
{
	struct decision decision = { .verdict = VERDICT_DENY, .flags = DECISION_TOO_DEEP };

	report(flow, &decision, cgroup_id_of_socket(sk), NULL, 0);
	return SYSCALL_DENY;
}

/*
 * An allowed connection or datagram to a service: send it to a backend.
 * A connected socket keeps a note of its translation (socket storage, which
 * dies with the socket); an unconnected UDP socket keeps its backend per
 * service, and the translation per backend, in LRU maps keyed by its cookie.
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
	if (!backend && service->slot_count) {
		/* A live change retired the backend between our reads: read again. */
		service = service_at(flow);
		if (service)
			backend = pick_backend(service, &id);
	}
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
	write_user_address(ctx, hook_family, backend->addr, backend->family, backend->port);

	if (!sendmsg) {
		struct socket_note *note = bpf_sk_storage_get(&socket_notes, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (note) {
			note->translation = translation;
			note->src_identity = flow->src_identity;
			__builtin_memcpy(note->src_addr, flow->src_addr, 16);
		}
	} else if (chosen_now) {
		struct udp_translation_key key;

		fill_udp_translation_key(&key, cookie, backend->family, backend->addr, backend->port);
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
	read_source_address(ctx, sk, family, sendmsg, &flow);
	flow.dst_port = bpf_ntohs(ctx->user_port);
	flow.src_port = sk->src_port;
	if (!address_is_zero(flow.src_addr))
		flow.flags |= FLOW_SRC_ADDRESS_KNOWN;

	if (sendmsg && flow.protocol == IPPROTO_UDP &&
	    allowed_peer(bpf_get_socket_cookie(ctx), flow.family, flow.dst_addr, bpf_htons(flow.dst_port)))
		return SYSCALL_ALLOW; /* an answer to a datagram it was allowed to receive */

	flow.src_identity = workload_of_socket(sk, true);
	if (flow.src_identity == TOO_DEEP)
		return refuse_unidentified(&flow, sk);
	if (flow.src_identity == OUTSIDE_ATTACHMENT)
		return SYSCALL_ALLOW; /* cannot happen: the hook runs for sockets below the attach cgroup */
	flow.flags |= FLOW_SRC_BY_CGROUP;

	service = POLICY_HAS_SERVICES ? service_at(&flow) : NULL;
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
	if (service)
		return balance(ctx, family, sendmsg, sk, &flow, &decision, service);
	/* A direct connect leaves no note: creating socket storage would cost more
	 * than the receiver's second decision it could save. An old note from a
	 * connect to a service must not outlive this one. */
	if (POLICY_HAS_SERVICES && !sendmsg)
		bpf_sk_storage_delete(&socket_notes, sk);
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
	const struct translation *translation;
	struct bpf_sock *sk = ctx->sk;
	__u32 addr[4] = {};
	__u8 family;
	__u16 port;

	if (!POLICY_HAS_SERVICES || !sk)
		return SYSCALL_ALLOW;
	family = read_user_address(ctx, hook_family, addr);
	port = ctx->user_port;
	translation = translation_of(sk, datagram, datagram ? bpf_get_socket_cookie(ctx) : 0, family, addr, port);
	if (translation)
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
	const struct translation *translation;
	struct flow_record *known;
	struct bpf_sock *sk;
	bool datagram;

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
	datagram = packet.key.protocol == IPPROTO_UDP;
	if (!datagram && !is_connection_request(&packet))
		return PACKET_PASS;
	if (datagram) {
		known = bpf_map_lookup_elem(&flows, &packet.key);
		if (known && recent(known->seen_ns, FLOW_REFRESH_NS))
			return PACKET_PASS;
	}

	record.src_identity = workload_of_socket(sk, true);
	if (record.src_identity == TOO_DEEP || record.src_identity == OUTSIDE_ATTACHMENT)
		return PACKET_PASS; /* refused at connect/sendmsg already */
	record.seen_ns = bpf_ktime_get_ns();
	/* Sent to a service? The backend's ingress judges it by the service. */
	translation = translation_of(sk, datagram, datagram ? bpf_get_socket_cookie(skb) : 0, packet.key.family,
				     packet.key.daddr, packet.key.dport);
	if (translation) {
		struct socket_note *note = datagram ? NULL : bpf_sk_storage_get(&socket_notes, sk, 0, 0);

		record.service = translation->service;
		__builtin_memcpy(record.vip, translation->vip, 16);
		record.vip_port = translation->vip_port;
		/* connect() judged this flow with this source address or, when no
		 * rule looks at source addresses, with any */
		if (note && (!POLICY_HAS_SRC(SIDE_KIND_CLASS) || same_address(note->src_addr, packet.key.saddr)))
			record.flags |= FLOW_RECORD_JUDGED;
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
	bool datagram;

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
	datagram = packet.key.protocol == IPPROTO_UDP;
	if (!datagram && !is_connection_request(&packet))
		return PACKET_PASS;
	if (datagram) {
		reverse_key(&packet.key, &reply_to);
		sender = bpf_map_lookup_elem(&flows, &reply_to);
		if (sender && recent(sender->seen_ns, UDP_REPLY_WINDOW_NS))
			return PACKET_PASS; /* an answer to what this workload sent */
		if (allowed_peer(bpf_get_socket_cookie(skb), packet.key.family, packet.key.saddr, packet.key.sport))
			return PACKET_PASS; /* the next datagram of a flow this socket allowed */
	}

	flow.family = packet.key.family;
	flow.protocol = packet.key.protocol;
	__builtin_memcpy(flow.src_addr, packet.key.saddr, 16);
	__builtin_memcpy(flow.dst_addr, packet.key.daddr, 16);
	flow.src_port = bpf_ntohs(packet.key.sport);
	flow.dst_port = bpf_ntohs(packet.key.dport);
	flow.flags = FLOW_SRC_ADDRESS_KNOWN | FLOW_DST_BY_CGROUP;
	flow.dst_identity = workload_of_socket(sk, true);
	if (flow.dst_identity == TOO_DEEP) {
		refuse_unidentified(&flow, sk);
		return PACKET_DROP;
	}
	if (flow.dst_identity == OUTSIDE_ATTACHMENT)
		return PACKET_PASS; /* cannot happen: the hook runs for sockets below the attach cgroup */

	sender = bpf_map_lookup_elem(&flows, &packet.key);
	if (sender && !recent(sender->seen_ns, FLOW_TRUST_NS))
		sender = NULL; /* stale: believe the address, not an old sender of this tuple */
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

	/* The sender's connect() already allowed exactly these two parties. */
	if (!(sender && (sender->flags & FLOW_RECORD_JUDGED) && sender->service)) {
		decide(&flow, &decision);
		report(&flow, &decision, cgroup_id_of_socket(sk), NULL, 0);
		if (decision.verdict != VERDICT_ALLOW)
			return PACKET_DROP;
	}
	if (datagram)
		allow_answers(bpf_get_socket_cookie(skb), &packet.key);
	return PACKET_PASS;
}

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
