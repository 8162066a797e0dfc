/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reading the 5-tuple of a packet in a cgroup_skb program (data starts at the IP header). */
#ifndef EBMESH_PACKET_H
#define EBMESH_PACKET_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86dd
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* IPv6 next-header values of extension headers (uapi macros, not in vmlinux.h). */
#define IPV6_NEXT_HOP_BY_HOP 0
#define IPV6_NEXT_ROUTING 43
#define IPV6_NEXT_FRAGMENT 44
#define IPV6_NEXT_DESTINATION 60
#define MAX_IPV6_EXTENSION_HEADERS 6

struct packet {
	struct flow_key key; /* addresses and ports in network byte order */
	__u8 tcp_flags;
};

enum packet_kind {
	PACKET_L4,         /* TCP or UDP with its ports: L4 policy applies */
	PACKET_NOT_L4,     /* another protocol, or a fragment after the first */
	PACKET_UNREADABLE, /* headers that cannot be walked: treated as hostile */
};

#define NOT_READ_DIRECTLY (-1)

/* The common case read in place: IPv4 with no options, its TCP or UDP header in
 * the linear part of the packet. Two helper calls fewer than the general path
 * (bpf_skb_load_bytes per header), on every datagram a UDP socket receives.
 * NOT_READ_DIRECTLY when the packet is anything else. */
static __always_inline long read_ipv4_in_place(struct __sk_buff *skb, struct packet *packet)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data;

	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return NOT_READ_DIRECTLY;
	if (ip->frag_off & bpf_htons(0x1fff)) /* not the first fragment: no ports */
		return PACKET_NOT_L4;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);

		if ((void *)(udp + 1) > data_end)
			return NOT_READ_DIRECTLY;
		packet->key.sport = udp->source;
		packet->key.dport = udp->dest;
	} else if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);

		if ((void *)(tcp + 1) > data_end)
			return NOT_READ_DIRECTLY;
		packet->key.sport = tcp->source;
		packet->key.dport = tcp->dest;
		packet->tcp_flags = ((__u8 *)tcp)[13];
	} else {
		return NOT_READ_DIRECTLY; /* the general path says what it is */
	}
	packet->key.family = FAMILY_IPV4;
	packet->key.protocol = ip->protocol;
	packet->key.saddr[0] = ip->saddr;
	packet->key.daddr[0] = ip->daddr;
	return PACKET_L4;
}

/* Fills `packet` for TCP and UDP over IPv4/IPv6. Global: the headers it reads
 * sit on its own stack, not on the stack of the hook that also calls decide(). */
__noinline long read_packet(struct __sk_buff *skb, struct packet *packet)
{
	__u32 l4_offset, ether_type;
	__u8 protocol;
	long kind;

	if (!skb || !packet)
		return PACKET_UNREADABLE;
	__builtin_memset(packet, 0, sizeof(*packet));
	ether_type = skb->protocol; /* read once: the verifier wants ctx loads at fixed offsets */
	if (ether_type == bpf_htons(ETH_P_IP)) {
		kind = read_ipv4_in_place(skb, packet);
		if (kind != NOT_READ_DIRECTLY)
			return kind;
		__builtin_memset(packet, 0, sizeof(*packet));
	}
	if (ether_type == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return PACKET_UNREADABLE;
		if (ip.frag_off & bpf_htons(0x1fff)) /* not the first fragment: no ports */
			return PACKET_NOT_L4;
		protocol = ip.protocol;
		packet->key.family = FAMILY_IPV4;
		packet->key.saddr[0] = ip.saddr;
		packet->key.daddr[0] = ip.daddr;
		l4_offset = ip.ihl * 4;
	} else if (ether_type == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return PACKET_UNREADABLE;
		packet->key.family = FAMILY_IPV6;
		__builtin_memcpy(packet->key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(packet->key.daddr, &ip6.daddr, 16);
		l4_offset = sizeof(ip6);
		protocol = ip6.nexthdr;
		/* Step over extension headers: a TCP SYN behind a destination
		 * options header must not escape the policy. */
		for (int i = 0; i < MAX_IPV6_EXTENSION_HEADERS; i++) {
			struct ipv6_opt_hdr extension;

			if (protocol == IPV6_NEXT_FRAGMENT) {
				struct frag_hdr fragment;

				if (bpf_skb_load_bytes(skb, l4_offset, &fragment, sizeof(fragment)))
					return PACKET_UNREADABLE;
				if (fragment.frag_off & bpf_htons(0xfff8))
					return PACKET_NOT_L4; /* not the first fragment: no ports */
				protocol = fragment.nexthdr;
				l4_offset += sizeof(fragment);
				continue;
			}
			if (protocol != IPV6_NEXT_HOP_BY_HOP && protocol != IPV6_NEXT_ROUTING &&
			    protocol != IPV6_NEXT_DESTINATION)
				break;
			if (bpf_skb_load_bytes(skb, l4_offset, &extension, sizeof(extension)))
				return PACKET_UNREADABLE;
			protocol = extension.nexthdr;
			l4_offset += (extension.hdrlen + 1) * 8;
		}
		if (protocol == IPV6_NEXT_HOP_BY_HOP || protocol == IPV6_NEXT_ROUTING ||
		    protocol == IPV6_NEXT_DESTINATION || protocol == IPV6_NEXT_FRAGMENT)
			return PACKET_UNREADABLE;
	} else {
		return PACKET_NOT_L4;
	}

	packet->key.protocol = protocol;
	if (protocol == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, l4_offset, &tcp, sizeof(tcp)))
			return PACKET_UNREADABLE;
		packet->key.sport = tcp.source;
		packet->key.dport = tcp.dest;
		packet->tcp_flags = ((__u8 *)&tcp)[13];
		return PACKET_L4;
	}
	if (protocol == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, l4_offset, &udp, sizeof(udp)))
			return PACKET_UNREADABLE;
		packet->key.sport = udp.source;
		packet->key.dport = udp.dest;
		return PACKET_L4;
	}
	return PACKET_NOT_L4;
}

static __always_inline bool is_connection_request(const struct packet *packet)
{
	return (packet->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void reverse_key(const struct flow_key *key, struct flow_key *reversed)
{
	*reversed = *key;
	__builtin_memcpy(reversed->saddr, key->daddr, 16);
	__builtin_memcpy(reversed->daddr, key->saddr, 16);
	reversed->sport = key->dport;
	reversed->dport = key->sport;
}

#endif /* EBMESH_PACKET_H */
