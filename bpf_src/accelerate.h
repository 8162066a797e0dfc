/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * `accelerate on`: TCP between two local workloads of one network namespace
 * takes a socket-level shortcut. Once a connection is established (so its
 * connect() and its listener's ingress allowed it), both of its sockets enter
 * the `shortcuts` sockhash; a message sent on one is then put straight on
 * its peer's receive queue (sk_msg redirect), past the TCP/IP stack of both.
 *
 * Policy is never bypassed: only established connections enter, and a
 * connection's verdict was taken on its SYN, shortcut or not. A socket whose
 * peer is not in the map (outside the mesh, on another host, in another
 * namespace, or left out because the map was full) simply uses the stack.
 * When the attachment goes, the map goes with it, and its sockets go back to
 * the stack with their connections intact.
 */
#ifndef EBMESH_ACCELERATE_H
#define EBMESH_ACCELERATE_H

struct shortcut_key {
	__u64 netns;       /* the namespace's cookie: a shortcut never crosses namespaces */
	__u32 family;
	__u32 local_port;  /* host byte order */
	__u32 remote_port; /* host byte order */
	__u32 reserved;
	__u32 local[4];
	__u32 remote[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, struct shortcut_key);
	__type(value, __u64);
} shortcuts SEC(".maps");

/* Messages the shortcut carried (index 0), and messages on sockets of the map
 * whose peer was not there (index 1), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} shortcut_counters SEC(".maps");

#define SK_MSG_PASS 1
#define AF_INET 2 /* include/linux/socket.h (a macro: not in vmlinux.h) */

/* Once established, a connection of the mesh's sockets may take the shortcut. */
SEC("sockops")
int ebmesh_sockops(struct bpf_sock_ops *ops)
{
	struct shortcut_key key = {};
	struct bpf_sock *sk;

	if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	sk = ops->sk;
	if (!sk)
		return 1;
	key.netns = bpf_get_netns_cookie(ops);
	key.family = ops->family;
	key.local_port = ops->local_port;
	key.remote_port = bpf_ntohl(ops->remote_port);
	if (ops->family == AF_INET) {
		key.local[0] = ops->local_ip4;
		key.remote[0] = ops->remote_ip4;
	} else {
		key.local[0] = ops->local_ip6[0];
		key.local[1] = ops->local_ip6[1];
		key.local[2] = ops->local_ip6[2];
		key.local[3] = ops->local_ip6[3];
		key.remote[0] = ops->remote_ip6[0];
		key.remote[1] = ops->remote_ip6[1];
		key.remote[2] = ops->remote_ip6[2];
		key.remote[3] = ops->remote_ip6[3];
	}
	/* Full, or a socket already there: this connection keeps to the stack. */
	bpf_sock_hash_update(ops, &shortcuts, &key, BPF_NOEXIST);
	return 1;
}

/* A message on a socket of the map: to its peer's receive queue, if the peer is there. */
SEC("sk_msg")
int ebmesh_shortcut(struct sk_msg_md *msg)
{
	struct shortcut_key peer = {};

	peer.netns = bpf_get_netns_cookie(msg);
	peer.family = msg->family;
	peer.local_port = bpf_ntohl(msg->remote_port);
	peer.remote_port = msg->local_port;
	if (msg->family == AF_INET) {
		peer.local[0] = msg->remote_ip4;
		peer.remote[0] = msg->local_ip4;
	} else {
		peer.local[0] = msg->remote_ip6[0];
		peer.local[1] = msg->remote_ip6[1];
		peer.local[2] = msg->remote_ip6[2];
		peer.local[3] = msg->remote_ip6[3];
		peer.remote[0] = msg->local_ip6[0];
		peer.remote[1] = msg->local_ip6[1];
		peer.remote[2] = msg->local_ip6[2];
		peer.remote[3] = msg->local_ip6[3];
	}
	/* Its answer is SK_DROP when the peer is not in the map, and the redirect
	 * is not set: passing then sends the message the usual way. */
	__u32 outcome = bpf_msg_redirect_hash(msg, &shortcuts, &peer, BPF_F_INGRESS) == SK_MSG_PASS ? 0 : 1;
	__u64 *counter = bpf_map_lookup_elem(&shortcut_counters, &outcome);

	if (counter)
		(*counter)++;
	return SK_MSG_PASS;
}

#endif /* EBMESH_ACCELERATE_H */
