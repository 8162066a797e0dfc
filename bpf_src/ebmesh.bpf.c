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
 *   ingress cgroup_skb/ingress  judges new flows entering a local workload
 *           cgroup_skb/egress   the recorder: notes who sent each new flow that
 *                               leaves the namespace, for a local receiver in
 *                               another one (attached only when needed)
 *   shortcut sockops, sk_msg     `accelerate on`: established TCP between local
 *                               workloads goes socket to socket (accelerate.h)
 *   test    syscall             `evaluate`: the same decision for a given flow
 *
 * A connection between two local workloads of one namespace is decided once,
 * at connect(); ingress finds the sender by its socket and sees that its
 * connect() decided with what ingress knows. Userspace attaches only the
 * hooks a policy needs (ebmesh/datapath/programs.py).
 *
 * policy.h is generated from the policy: its shape (default, mode, nesting
 * depths, which kinds of rules exist) and, in comments, where each rule was
 * written. The rules themselves live in maps.
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
#include "tables.h"
#include "report.h"
#include "packet.h"
#include "replies.h"
#include "sockaddr.h"
#include "balance.h"
#include "accelerate.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SYSCALL_ALLOW 1
#define SYSCALL_DENY 0
#define PACKET_PASS 1
#define PACKET_DROP 0
#define ECONNREFUSED 111
#define LOOPBACK_IFINDEX 1 /* lo is interface 1 in every network namespace */
#define SOCK_BINDADDR_LOCK 4 /* include/net/sock.h: the user bound the socket's address */
#define SOL_SOCKET 1
#define SO_PRIORITY 12

/* ---- what the hooks tell userspace ----------------------------------------------------- */

static __always_inline void notify(__u32 kind, const struct flow *flow, __u32 netns)
{
	struct notice *notice = bpf_ringbuf_reserve(&notices, sizeof(*notice), 0);

	if (!notice)
		return;
	__builtin_memset(notice, 0, sizeof(*notice));
	notice->kind = kind;
	notice->netns = netns;
	if (flow) {
		notice->src = flow->src_identity;
		notice->dst = flow->dst_identity;
		/* the host of a remote end, as authenticated_until() looks it up */
		if (!(flow->flags & FLOW_SRC_BY_CGROUP)) {
			notice->family = flow->family;
			__builtin_memcpy(notice->host, flow->src_addr, 16);
		} else if (!(flow->flags & FLOW_DST_BY_CGROUP)) {
			notice->family = flow->family;
			__builtin_memcpy(notice->host, flow->dst_addr, 16);
		}
	}
	bpf_ringbuf_submit(notice, 0);
}

/* A socket of the mesh outside the namespace ebmesh attached from: from now
 * on new flows may cross namespaces of this host, and the recorder is needed
 * for the receiver to know the sender. Said once. */
static __always_inline void note_namespace(__u32 netns)
{
	struct datapath_signals *signals_sent;
	__u32 zero = 0;

	if (netns == CONFIG.home_netns)
		return;
	signals_sent = bpf_map_lookup_elem(&signals, &zero);
	if (!signals_sent || (signals_sent->flags & SIGNAL_FOREIGN_NETNS_SEEN))
		return;
	__sync_fetch_and_or(&signals_sent->flags, SIGNAL_FOREIGN_NETNS_SEEN);
	notify(NOTICE_FOREIGN_NETNS, NULL, netns);
}

static __always_inline void report_decision(const struct flow *flow, const struct decision *decision,
					    struct bpf_sock *sk)
{
	report(flow, decision, cgroup_id_of_socket(sk), NO_BACKEND_ID);
	if (decision->flags & DECISION_UNAUTHENTICATED)
		notify(NOTICE_AUTH_NEEDED, flow, 0);
}

/* A denial at the socket that names no rule: the socket's cgroup is nested
 * too deep below the attach cgroup to be told apart. */
static __always_inline int refuse_unidentified(struct flow *flow, struct bpf_sock *sk)
{
	struct decision decision = {};

	/* field by field: a designated initializer leaves an unused constant copy of it
	 * in .rodata, which libbpf would load as a map of its own */
	decision.verdict = VERDICT_DENY;
	decision.flags = DECISION_TOO_DEEP;
	report(flow, &decision, cgroup_id_of_socket(sk), NO_BACKEND_ID);
	return SYSCALL_DENY;
}

/* ---- egress at the socket -------------------------------------------------------------- */

/*
 * An allowed connection or datagram to a service: send it to a backend.
 * A connected socket carries the service in its priority; an unconnected UDP
 * socket keeps its backend per service, and the translation per backend, in
 * LRU maps keyed by its cookie.
 */
static __always_inline int balance(struct bpf_sock_addr *ctx, __u8 hook_family, bool sendmsg,
				   struct bpf_sock *sk, const struct flow *flow, struct decision *decision,
				   const struct service_entry *service)
{
	struct translation translation = {
		.vip_port = bpf_htons(flow->dst_port),
		.service = service->index,
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
		report(flow, decision, cgroup_id_of_socket(sk), NO_BACKEND_ID);
		bpf_set_retval(-ECONNREFUSED);
		return SYSCALL_DENY;
	}

	write_user_address(ctx, hook_family, backend->addr, backend->family, backend->port);
	if (!sendmsg) {
		int priority = priority_with_service(sk->priority, service->index);

		bpf_setsockopt(ctx, SOL_SOCKET, SO_PRIORITY, &priority, sizeof(priority));
	} else {
		/* The backend's answers come in to the socket: it may hear from it. */
		note_peer(state_of(sk, true), backend->family, backend->addr, backend->port);
	}
	if (sendmsg && chosen_now) {
		struct udp_translation_key key;

		__builtin_memcpy(translation.vip, flow->dst_addr, 16);
		__builtin_memcpy(translation.backend_addr, backend->addr, 16);
		translation.backend_port = backend->port;
		fill_udp_translation_key(&key, cookie, backend->family, backend->addr, backend->port);
		bpf_map_update_elem(&udp_translations, &key, &translation, BPF_ANY);
		remember_backend(cookie, service->identity, id);
		record_peer(cookie, backend->family, backend->addr, backend->port);
	}
	if (chosen_now)
		count_backend(id);
	report(flow, decision, cgroup_id_of_socket(sk), id);
	return SYSCALL_ALLOW;
}

/* The destination of a flow from a local workload: a service, a local
 * listener's workload (by cgroup), or whatever its address says. */
static __always_inline void find_destination(struct bpf_sock_addr *ctx, struct flow *flow, __u32 netns,
					     __u32 use_table, __u32 *from_table)
{
	__u32 destination = local_destination(ctx, flow, netns, use_table, from_table);

	flow->flags &= ~(FLOW_DST_BY_ADDRESS | FLOW_DST_BY_CGROUP);
	if (destination == OUTSIDE_ATTACHMENT) {
		flow->dst_identity = NO_IDENTITY;
		flow->flags |= FLOW_DST_BY_ADDRESS;
	} else {
		flow->dst_identity = destination;
		flow->flags |= FLOW_DST_BY_CGROUP;
	}
}

/* Egress at the socket: connect() of TCP and UDP, sendmsg() of unconnected UDP. */
static __always_inline int judge_sock_addr(struct bpf_sock_addr *ctx, __u8 family, bool sendmsg)
{
	struct bpf_sock *sk = ctx->sk;
	struct flow flow = { .direction = DIRECTION_EGRESS };
	struct decision decision = {};
	const struct service_entry *service = NULL;
	struct socket_state *state = NULL;
	__u32 from_table = 0;
	__u32 netns;

	if (!sk)
		return SYSCALL_ALLOW;
	flow.protocol = policy_protocol(ctx->protocol);
	if (!flow.protocol)
		return SYSCALL_ALLOW;

	flow.family = read_user_address(ctx, family, flow.dst_addr);
	flow.dst_port = bpf_ntohs(ctx->user_port);
	if (sendmsg) {
		/* An answer to a peer that may talk to us, or the next datagram of an allowed flow. */
		state = state_of(sk, false);
		if (knows_peer(state, flow.family, flow.dst_addr, ctx->user_port))
			return SYSCALL_ALLOW;
	}
	read_source_address(ctx, sk, family, sendmsg, &flow);
	flow.src_port = sk->src_port;
	if (!address_is_zero(flow.src_addr))
		flow.flags |= FLOW_SRC_ADDRESS_KNOWN;

	flow.src_identity = workload_of_socket(sk, true);
	if (flow.src_identity == TOO_DEEP)
		return refuse_unidentified(&flow, sk);
	if (flow.src_identity == OUTSIDE_ATTACHMENT)
		return SYSCALL_ALLOW; /* cannot happen: the hook runs for sockets below the attach cgroup */
	flow.flags |= FLOW_SRC_BY_CGROUP;
	netns = netns_of_socket(sk);
	note_namespace(netns);

	if (POLICY_HAS_SERVICES)
		service = service_at(&flow);
	if (service) {
		flow.dst_identity = service->identity;
		flow.flags |= FLOW_DST_IS_SERVICE;
	} else {
		find_destination(ctx, &flow, netns, 1, &from_table);
	}

	decide_cached(&flow, &decision);
	if (decision.verdict != VERDICT_ALLOW && from_table) {
		/* The listener table may be out of date: look again before refusing. */
		find_destination(ctx, &flow, netns, 0, &from_table);
		decide_cached(&flow, &decision);
	}
	if (decision.verdict != VERDICT_ALLOW && sendmsg &&
	    recorded_peer(bpf_get_socket_cookie(ctx), flow.family, flow.dst_addr, ctx->user_port))
		return SYSCALL_ALLOW; /* an answer to a peer its own storage forgot */
	if (decision.verdict != VERDICT_ALLOW) {
		report_decision(&flow, &decision, sk);
		return SYSCALL_DENY;
	}
	if (service)
		return balance(ctx, family, sendmsg, sk, &flow, &decision, service);
	if (POLICY_HAS_SERVICES && !sendmsg && (sk->priority & PRIORITY_SERVICE_MASK) == PRIORITY_SERVICE_TAG) {
		/* connected again, and not to a service this time */
		int priority = sk->priority & 0xffff;

		bpf_setsockopt(ctx, SOL_SOCKET, SO_PRIORITY, &priority, sizeof(priority));
	}
	if (sendmsg) {
		/* The peer may answer, and this socket send on, without a verdict each. */
		note_peer(state ? state : state_of(sk, true), flow.family, flow.dst_addr, ctx->user_port);
		record_peer(bpf_get_socket_cookie(ctx), flow.family, flow.dst_addr, ctx->user_port);
	}
	report_decision(&flow, &decision, sk);
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

/* ---- the application sees the VIP as its peer, not the backend it talks to ---------------- */

static __always_inline int translate_back(struct bpf_sock_addr *ctx, __u8 hook_family, bool datagram)
{
	const struct service_entry *service;
	const struct translation *translation;
	struct bpf_sock *sk = ctx->sk;
	__u32 addr[4] = {};
	__u8 family;

	if (!sk)
		return SYSCALL_ALLOW;
	service = service_of_socket(sk);
	if (service) {
		write_user_address(ctx, hook_family, service->key.addr, service->key.family, service->key.port);
		return SYSCALL_ALLOW;
	}
	if (!datagram)
		return SYSCALL_ALLOW;
	family = read_user_address(ctx, hook_family, addr);
	translation = udp_translation_of(bpf_get_socket_cookie(ctx), family, addr, ctx->user_port);
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

/* ---- the recorder: who sent a flow that leaves the namespace -------------------------------- */

/* Attached only when the mesh spans network namespaces of this host. Within a
 * namespace (out through lo) ingress finds the sender itself; the packets of
 * an established TCP connection pass without being parsed. */
SEC("cgroup_skb/egress")
int ebmesh_recorder(struct __sk_buff *skb)
{
	struct packet packet;
	struct flow_record record = {};
	const struct service_entry *service = NULL;
	const struct translation *translation;
	struct flow_record *known;
	struct bpf_sock *sk;
	bool datagram;

	if (skb->ifindex == LOOPBACK_IFINDEX)
		return PACKET_PASS;
	sk = skb->sk;
	if (!sk)
		return PACKET_PASS;
	sk = bpf_sk_fullsock(sk); /* request and timewait sockets start no flow */
	if (!sk)
		return PACKET_PASS;
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
	record.seen_ns = window_clock_ns();
	/* Sent to a service? The backend's ingress judges it by the service. */
	service = service_of_socket(sk);
	if (!service && datagram) {
		translation = udp_translation_of(bpf_get_socket_cookie(skb), packet.key.family, packet.key.daddr,
						 packet.key.dport);
		if (translation)
			service = service_by_index(translation->service);
	}
	if (service) {
		__builtin_memcpy(record.vip, service->key.addr, 16);
		record.vip_port = service->key.port;
		record.service = service->identity;
	}
	/* connect() judged a service flow with the source address it ended up
	 * using when the socket was bound, or when no rule looks at source addresses */
	if (record.service &&
	    (!POLICY_HAS_SRC(SIDE_KIND_CLASS) || (kernel_sock(sk)->sk_userlocks & SOCK_BINDADDR_LOCK)))
		record.flags |= FLOW_RECORD_JUDGED;
	bpf_map_update_elem(&flows, &packet.key, &record, BPF_ANY);
	return PACKET_PASS;
}

/* ---- ingress --------------------------------------------------------------------------------- */

/* The local socket that sent `packet` (it arrived on lo): the one whose
 * address and port are the packet's source and whose peer is its
 * destination; for TCP, still connecting. NULL if there is none. */
static __always_inline struct bpf_sock *local_sender(struct __sk_buff *skb, const struct packet *packet)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sender;
	__u32 size;

	if (packet->key.family == FAMILY_IPV4) {
		tuple.ipv4.saddr = packet->key.daddr[0];
		tuple.ipv4.daddr = packet->key.saddr[0];
		tuple.ipv4.sport = packet->key.dport;
		tuple.ipv4.dport = packet->key.sport;
		size = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, packet->key.daddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, packet->key.saddr, 16);
		tuple.ipv6.sport = packet->key.dport;
		tuple.ipv6.dport = packet->key.sport;
		size = sizeof(tuple.ipv6);
	}
	if (packet->key.protocol == IPPROTO_UDP)
		return bpf_sk_lookup_udp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	sender = bpf_sk_lookup_tcp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (sender && sender->state != BPF_TCP_SYN_SENT) {
		bpf_sk_release(sender);
		return NULL;
	}
	return sender;
}

/*
 * Did the local sender's connect() or sendmsg() decide this very flow, with
 * what ingress knows? Then ingress does not decide it again. That is so when
 * connect() judged it by the service it was sent to, or by this listener
 * (the listener table names this socket: connect() read it, or looked the
 * same socket up), and when it knew the source address, or no rule looks at
 * source addresses.
 */
static __always_inline bool sender_decided(struct bpf_sock *sender, const struct listener_key *key, __u64 cookie,
					   bool by_service)
{
	const struct listener_slot *known;

	if (POLICY_HAS_SRC(SIDE_KIND_CLASS) && !(kernel_sock(sender)->sk_userlocks & SOCK_BINDADDR_LOCK))
		return false;
	if (by_service)
		return true;
	known = known_listener(key);
	return known && known->cookie == cookie;
}

/* The service a local sender sent this packet to, if it went through one. */
static __always_inline const struct service_entry *service_sent_to(struct bpf_sock *sender,
								   const struct packet *packet, const struct flow *flow)
{
	const struct service_entry *service = service_of_socket(sender);
	const struct translation *translation;

	if (service || !POLICY_HAS_SERVICES || packet->key.protocol != IPPROTO_UDP)
		return service;
	/* An unconnected UDP socket: its translations are kept by its cookie,
	 * which its sendmsg() made. */
	translation = udp_translation_of(kernel_sock(sender)->__sk_common.skc_cookie.counter, flow->family,
					 packet->key.daddr, packet->key.dport);
	return translation ? service_by_index(translation->service) : NULL;
}

/*
 * A packet that arrived on lo: it comes from a socket of this namespace, and
 * only that socket's cgroup says who sent it (its address says nothing:
 * every local socket may use every local address). Fills in the flow's
 * source (a local process of no workload if there is no such socket, or it
 * is outside the mesh) and, for service traffic, its destination. Returns
 * whether the sender's connect()/sendmsg() already decided it.
 * Global: the lookup's tuple stays off the stack of the hook.
 */
__noinline int identify_local_sender(struct __sk_buff *skb, const struct packet *packet, struct flow *flow,
				     const struct listener_key *key, __u64 cookie)
{
	const struct service_entry *service;
	struct bpf_sock *sender;
	__u32 identity;
	int decided = 0;

	if (!skb || !packet || !flow || !key)
		return 0;
	sender = local_sender(skb, packet);
	if (!sender)
		return 0;
	identity = workload_of_socket(sender, false);
	if (identity != OUTSIDE_ATTACHMENT) {
		flow->src_identity = identity;
		flow->flags |= FLOW_SRC_BY_CGROUP;
		service = service_sent_to(sender, packet, flow);
		if (service) {
			/* Traffic to a service is judged by the service, at its backend too. */
			flow->dst_identity = service->identity;
			__builtin_memcpy(flow->dst_addr, service->key.addr, 16);
			flow->dst_port = bpf_ntohs(service->key.port);
			flow->flags = (flow->flags & ~FLOW_DST_BY_CGROUP) | FLOW_DST_IS_SERVICE;
		}
		decided = sender_decided(sender, key, cookie, service != NULL);
	}
	bpf_sk_release(sender);
	return decided;
}

/* Ingress: a new flow entering a local workload (a TCP SYN, a UDP datagram
 * from a peer the socket is not already talking with). */
SEC("cgroup_skb/ingress")
int ebmesh_ingress(struct __sk_buff *skb)
{
	struct packet packet;
	struct flow flow = { .direction = DIRECTION_INGRESS };
	struct decision decision = {};
	struct flow_record *record;
	struct socket_state *state = NULL;
	struct listener_key key;
	struct bpf_sock *sk;
	__u64 cookie;
	__u32 netns;
	bool datagram, decided = false;

	/* A new TCP connection knocks at a listener, and a new UDP flow at an
	 * unconnected socket (state CLOSE): the packets of an established
	 * connection, and those of a connected UDP socket, which only ever
	 * receives from the peer its connect() judged, pass on the state alone,
	 * read before anything else (it is in the socket's common part). */
	sk = skb->sk;
	if (!sk || (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_CLOSE))
		return PACKET_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk || (sk->protocol == IPPROTO_TCP && sk->state != BPF_TCP_LISTEN))
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
		state = state_of(sk, false);
		if (knows_peer(state, packet.key.family, packet.key.saddr, packet.key.sport))
			return PACKET_PASS;
	}
	cookie = bpf_get_socket_cookie(skb);
	if (datagram) {
		if (recorded_peer(cookie, packet.key.family, packet.key.saddr, packet.key.sport)) {
			note_peer(state ? state : state_of(sk, true), packet.key.family, packet.key.saddr, packet.key.sport);
			return PACKET_PASS;
		}
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
	netns = netns_of_socket(sk);
	note_namespace(netns);
	fill_listener_key(&key, netns, flow.family, flow.protocol, packet.key.daddr, packet.key.dport);

	if (skb->ingress_ifindex == LOOPBACK_IFINDEX) {
		decided = identify_local_sender(skb, &packet, &flow, &key, cookie);
	} else {
		/* From a network device: a local workload in another namespace
		 * (the recorder wrote down who), or another host, known by address. */
		record = bpf_map_lookup_elem(&flows, &packet.key);
		if (record && recent(record->seen_ns, FLOW_TRUST_NS)) {
			flow.src_identity = record->src_identity;
			flow.flags |= FLOW_SRC_BY_CGROUP;
			if (record->service) {
				flow.dst_identity = record->service;
				__builtin_memcpy(flow.dst_addr, record->vip, 16);
				flow.dst_port = bpf_ntohs(record->vip_port);
				flow.flags = (flow.flags & ~FLOW_DST_BY_CGROUP) | FLOW_DST_IS_SERVICE;
				decided = record->flags & FLOW_RECORD_JUDGED;
			}
		} else {
			flow.flags |= FLOW_SRC_BY_ADDRESS;
		}
	}
	/* Connections reached this listener at this address: connect() may know it so. */
	if (!(flow.flags & FLOW_DST_IS_SERVICE)) {
		const struct listener_slot *known = known_listener(&key);

		if (!known || known->cookie != cookie)
			remember_listener(&key, cookie, flow.dst_identity);
	}

	if (!decided) {
		decide_cached(&flow, &decision);
		report_decision(&flow, &decision, sk);
		if (decision.verdict != VERDICT_ALLOW)
			return PACKET_DROP;
	}
	if (datagram) {
		note_peer(state ? state : state_of(sk, true), packet.key.family, packet.key.saddr, packet.key.sport);
		record_peer(cookie, packet.key.family, packet.key.saddr, packet.key.sport);
	}
	return PACKET_PASS;
}

SEC("syscall")
int ebmesh_evaluate(struct evaluate_request *request)
{
	struct flow flow = request->flow;
	struct decision decision = {};
	const struct service_entry *service;

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
