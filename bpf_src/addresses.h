/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Addresses: classification by longest prefix, and small predicates. */
#ifndef EBMESH_ADDRESSES_H
#define EBMESH_ADDRESSES_H

/* The mask of a prefix of `length` bits over the 32-bit word `word` of an
 * address, in network byte order like the address itself. */
static __always_inline __u32 prefix_mask_word(__u32 length, __u32 word)
{
	__u32 start = word * 32;

	if (length <= start)
		return 0;
	if (length >= start + 32)
		return 0xffffffffu;
	return bpf_htonl(0xffffffffu << (32 - (length - start)));
}

static __always_inline const struct address_class *
lookup_prefix(__u8 family, const __u32 *addr, __u8 length)
{
	struct address_key key = {
		.family = family,
		.length = length,
	};

	for (__u32 word = 0; word < 4; word++)
		key.addr[word] = addr[word] & prefix_mask_word(length, word);
	return bpf_map_lookup_elem(&address_prefixes, &key);
}

/* Steps of the binary search over at most 129 prefix lengths. */
#define MAX_LENGTH_PROBES 8

/* The class record of the longest policy prefix containing addr, or NULL.
 * A hit (a prefix or a marker) sends the search to longer lengths, a miss to
 * shorter ones; every hit carries the best real match at or above it. */
static __always_inline const struct address_class *
search_lengths(__u8 family, const __u32 *addr, const volatile __u8 *lengths, __u32 count, __u32 capacity)
{
	const struct address_class *best = NULL, *found;
	__u32 low = 0, high = count; /* the lengths still possible: [low, high) */

	for (int step = 0; step < MAX_LENGTH_PROBES; step++) {
		if (low >= high)
			break;
		__u32 middle = (low + high) / 2;

		if (middle >= capacity)
			break;
		found = lookup_prefix(family, addr, lengths[middle]);
		if (found) {
			if (found->class_id)
				best = found;
			low = middle + 1;
		} else {
			high = middle;
		}
	}
	return best;
}

static __always_inline const struct address_class *classify_address(__u8 family, const __u32 *addr)
{
	if (family == FAMILY_IPV4)
		return search_lengths(FAMILY_IPV4, addr, CONFIG.v4_lengths, CONFIG.v4_length_count,
				      MAX_PREFIX_LENGTHS_V4);
	return search_lengths(FAMILY_IPV6, addr, CONFIG.v6_lengths, CONFIG.v6_length_count,
			      MAX_PREFIX_LENGTHS_V6);
}

static __always_inline bool is_v4_mapped(const __u32 *addr6)
{
	return addr6[0] == 0 && addr6[1] == 0 && addr6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool is_loopback(__u8 family, const __u32 *addr)
{
	if (family == FAMILY_IPV4)
		return (bpf_ntohl(addr[0]) >> 24) == 127;
	return addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == bpf_htonl(1);
}

static __always_inline bool same_address(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

#endif /* EBMESH_ADDRESSES_H */
