/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reading the 5-tuple of a packet in a cgroup_skb program (data starts at the IP header). */
#ifndef EBMESH_PACKET_H
#define EBMESH_PACKET_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86dd
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

struct packet {
	struct flow_key key; /* addresses and ports in network byte order */
	__u8 tcp_flags;
};

/* Fills `packet` for TCP and UDP over IPv4/IPv6; false for anything else
 * (other protocols, IPv6 extension headers, fragments after the first). */
static __always_inline bool read_packet(struct __sk_buff *skb, struct packet *packet)
{
	__u32 l4_offset;
	__u8 protocol;

	__builtin_memset(packet, 0, sizeof(*packet));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return false;
		if (ip.frag_off & bpf_htons(0x1fff)) /* not the first fragment: no ports */
			return false;
		protocol = ip.protocol;
		packet->key.family = FAMILY_IPV4;
		packet->key.saddr[0] = ip.saddr;
		packet->key.daddr[0] = ip.daddr;
		l4_offset = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return false;
		protocol = ip6.nexthdr;
		packet->key.family = FAMILY_IPV6;
		__builtin_memcpy(packet->key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(packet->key.daddr, &ip6.daddr, 16);
		l4_offset = sizeof(ip6);
	} else {
		return false;
	}

	packet->key.protocol = protocol;
	if (protocol == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, l4_offset, &tcp, sizeof(tcp)))
			return false;
		packet->key.sport = tcp.source;
		packet->key.dport = tcp.dest;
		packet->tcp_flags = ((__u8 *)&tcp)[13];
		return true;
	}
	if (protocol == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, l4_offset, &udp, sizeof(udp)))
			return false;
		packet->key.sport = udp.source;
		packet->key.dport = udp.dest;
		return true;
	}
	return false;
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
