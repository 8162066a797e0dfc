/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * UDP as a stateful firewall sees it: once a datagram between a socket and a
 * peer is allowed (either way), the two may go on talking, replies included,
 * for UDP_PEER_WINDOW_NS after the last datagram (either way), without a
 * verdict per datagram.
 *
 * The socket keeps its recent peers in its own storage (a few, direct-mapped:
 * it forgets under pressure, and is read in a few instructions). Each new
 * peer is also written, once, to udp_replies, an LRU map which costs a
 * microsecond to write but does not forget a live flow.
 */
#ifndef EBMESH_REPLIES_H
#define EBMESH_REPLIES_H

/* conntrack's default for an unreplied UDP flow */
#define UDP_PEER_WINDOW_NS (30ull * 1000 * 1000 * 1000)
/* How long a sender's record (the recorder's, across namespaces) is believed
 * at ingress. Every SYN and every UDP datagram older than FLOW_REFRESH_NS
 * rewrites it on its way out, so a live sender's record is always younger. */
#define FLOW_REFRESH_NS (1000ull * 1000 * 1000)
#define FLOW_TRUST_NS (2 * FLOW_REFRESH_NS)

static __always_inline bool recent(__u64 seen_ns, __u64 window_ns)
{
	return window_clock_ns() - seen_ns < window_ns;
}

static __always_inline __u32 peer_slot(__u8 family, const __u32 *addr, __u16 port)
{
	return mix32(mix_words(family, addr, 4), port) & (UDP_PEERS - 1);
}

/* Has `state`'s socket talked with (addr, port) lately? If so, this datagram
 * keeps the flow alive, as every packet does in conntrack: a stream that one
 * allowed datagram started may outlast the window. */
static __always_inline bool knows_peer(struct socket_state *state, __u8 family, const __u32 *addr, __u16 port)
{
	struct udp_peer *peer;
	__u64 now;

	if (!state)
		return false;
	peer = &state->peers[peer_slot(family, addr, port)];
	if (peer->family != family || peer->port != port || !same_words(peer->addr, addr, 4))
		return false;
	now = window_clock_ns();
	if (now - peer->seen_ns >= UDP_PEER_WINDOW_NS)
		return false;
	peer->seen_ns = now;
	return true;
}

static __always_inline struct socket_state *state_of(struct bpf_sock *sk, bool create)
{
	return bpf_sk_storage_get(&socket_states, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

static __always_inline void note_peer(struct socket_state *state, __u8 family, const __u32 *addr, __u16 port)
{
	struct udp_peer *peer;

	if (!state)
		return;
	peer = &state->peers[peer_slot(family, addr, port)];
	peer->family = family;
	peer->port = port;
	__builtin_memcpy(peer->addr, addr, 16);
	peer->seen_ns = window_clock_ns();
}

static __always_inline void fill_reply_key(struct reply_key *key, __u64 cookie, __u8 family, const __u32 *addr,
					   __u16 port)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->cookie = cookie;
	key->family = family;
	key->remote_port = port;
	__builtin_memcpy(key->remote_addr, addr, 16);
}

/* A peer the socket `cookie` was allowed to talk with lately (the store that does not forget). */
static __always_inline bool recorded_peer(__u64 cookie, __u8 family, const __u32 *addr, __u16 port)
{
	struct reply_key key;
	struct reply_value *reply;

	fill_reply_key(&key, cookie, family, addr, port);
	reply = bpf_map_lookup_elem(&udp_replies, &key);
	return reply && recent(reply->seen_ns, UDP_PEER_WINDOW_NS);
}

static __always_inline void record_peer(__u64 cookie, __u8 family, const __u32 *addr, __u16 port)
{
	struct reply_key key;
	struct reply_value reply = { .seen_ns = window_clock_ns() };

	fill_reply_key(&key, cookie, family, addr, port);
	bpf_map_update_elem(&udp_replies, &key, &reply, BPF_ANY);
}

#endif /* EBMESH_REPLIES_H */
