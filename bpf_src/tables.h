/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Direct-mapped tables over BPF arrays: the listener table and the verdict
 * cache (and the service index, which userspace fills the same way).
 *
 * Why by hand: an array lookup is inlined by the verifier into a few
 * instructions, while a hash map lookup calls into the kernel; on the hooks'
 * cold caches that is about 25 ns against 150 (docs/datapath.md). A slot
 * holds one key; a colliding key overwrites it, so these tables forget, and
 * every user of them has a slower path that does not. Slots written by the
 * hooks carry a check word over their contents: two CPUs writing one slot at
 * once leave a mix that reads as a miss.
 */
#ifndef EBMESH_TABLES_H
#define EBMESH_TABLES_H

static __always_inline __u32 mix32(__u32 hash, __u32 word)
{
	hash ^= word;
	hash *= 0x9e3779b1u; /* Fibonacci hashing: odd, and spreads low bits upward */
	return hash ^ (hash >> 16);
}

static __always_inline __u32 mix_words(__u32 hash, const __u32 *words, int count)
{
	for (int i = 0; i < count; i++)
		hash = mix32(hash, words[i]);
	return hash;
}

static __always_inline bool same_words(const __u32 *a, const __u32 *b, int count)
{
	__u32 diff = 0;

	for (int i = 0; i < count; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

#define WORDS(object) ((int)(sizeof(object) / sizeof(__u32)))

/* The clock of the freshness windows (listener entries, UDP peers, the
 * recorder's flows): CLOCK_MONOTONIC_COARSE, a tick's resolution (4 ms at
 * HZ=250) for windows of a second and more. bpf_ktime_get_ns() reads the
 * TSC, about 50 ns on this VM: a third of connect()'s work, measured in
 * docs/datapath.md. What must be exact (mTLS expiry, event timestamps)
 * keeps bpf_ktime_get_ns(). */
static __always_inline __u64 window_clock_ns(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* ---- the service index ------------------------------------------------------------ */

static __always_inline __u32 service_key_hash(const struct service_key *key)
{
	return mix_words(0x5e41ce5u, (const __u32 *)key, WORDS(*key));
}

/* The service at (family, protocol, addr, port), or NULL: one array probe for
 * every address that is not a VIP. */
static __always_inline const struct service_entry *service_at(const struct flow *flow)
{
	struct service_key key = {
		.family = flow->family,
		.protocol = flow->protocol,
		.port = bpf_htons(flow->dst_port),
	};
	struct service_slot *slot;
	__u32 index, *found;

	__builtin_memcpy(key.addr, flow->dst_addr, 16);
	index = service_key_hash(&key) & CONFIG.service_index_mask;
	slot = bpf_map_lookup_elem(&service_index, &index);
	if (!slot || !(slot->flags & SERVICE_SLOT_USED))
		return NULL;
	if (same_words((const __u32 *)&slot->key, (const __u32 *)&key, WORDS(key))) {
		index = slot->index;
	} else {
		if (!(slot->flags & SERVICE_SLOT_OVERFLOW))
			return NULL;
		found = bpf_map_lookup_elem(&services, &key);
		if (!found)
			return NULL;
		index = *found;
	}
	return bpf_map_lookup_elem(&service_entries, &index);
}

static __always_inline const struct service_entry *service_by_index(__u32 index)
{
	return bpf_map_lookup_elem(&service_entries, &index);
}

/* ---- listeners ---------------------------------------------------------------------- */

/* How long a listener entry is believed before connect() looks again. */
#define LISTENER_FRESH_NS (10ull * 1000 * 1000 * 1000)

static __always_inline void fill_listener_key(struct listener_key *key, __u32 netns, __u8 family, __u8 protocol,
					      const __u32 *addr, __u16 port)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->netns = netns;
	key->family = family;
	key->protocol = protocol;
	key->port = port;
	__builtin_memcpy(key->addr, addr, 16);
}

static __always_inline __u32 listener_key_hash(const struct listener_key *key)
{
	return mix_words(0x115e7e4u, (const __u32 *)key, WORDS(*key));
}

/* The check word of a slot whose key hashes to `key_hash`: the key's hash (the
 * one that chose the slot, so a reader whose key matches need not hash it
 * again) carried on over the value. */
static __always_inline __u32 listener_check(__u32 key_hash, const struct listener_slot *slot)
{
	__u32 hash = mix32(key_hash, (__u32)slot->cookie);

	hash = mix32(hash, (__u32)(slot->cookie >> 32));
	return mix32(hash, slot->identity);
}

static __always_inline struct listener_slot *listener_slot_at(__u32 key_hash)
{
	__u32 index = key_hash & (LISTENER_SLOTS - 1);

	return bpf_map_lookup_elem(&listeners, &index);
}

/* The listener last seen at `key`, if its entry is whole and fresh. */
static __always_inline const struct listener_slot *known_listener(const struct listener_key *key)
{
	__u32 key_hash = listener_key_hash(key);
	struct listener_slot *slot = listener_slot_at(key_hash);

	if (!slot || !slot->cookie || !same_words((const __u32 *)&slot->key, (const __u32 *)key, WORDS(*key)))
		return NULL;
	if (slot->check != listener_check(key_hash, slot) || window_clock_ns() - slot->seen_ns > LISTENER_FRESH_NS)
		return NULL;
	return slot;
}

static __always_inline void remember_listener(const struct listener_key *key, __u64 cookie, __u32 identity)
{
	__u32 key_hash = listener_key_hash(key);
	struct listener_slot *slot = listener_slot_at(key_hash);

	if (!slot)
		return;
	slot->key = *key;
	slot->cookie = cookie;
	slot->identity = identity;
	slot->seen_ns = window_clock_ns();
	slot->check = listener_check(key_hash, slot);
}

/* ---- the verdict cache ------------------------------------------------------------- */

#define VERDICT_HASH_SEED 0xdec1de5u

/* Of the flow's flags, those decide() reads. */
#define VERDICT_INPUT_FLAGS (FLOW_SRC_ADDRESS_KNOWN | FLOW_SRC_BY_ADDRESS | FLOW_DST_BY_ADDRESS | \
			     FLOW_DST_IS_SERVICE | FLOW_SRC_BY_CGROUP | FLOW_DST_BY_CGROUP)

/* decide()'s inputs, with the addresses it would not look at left out, so that
 * (say) every connection of one client to one server shares an entry. Written
 * straight into the cache's slot, and hashed and compared from the flow
 * without a copy on the stack, which the hooks have little of left. */
static __always_inline bool verdict_uses_src_addr(__u32 flags)
{
	return (flags & FLOW_SRC_ADDRESS_KNOWN) &&
	       (POLICY_HAS_MTLS || POLICY_HAS_SRC(SIDE_KIND_CLASS) || (flags & FLOW_SRC_BY_ADDRESS));
}

static __always_inline bool verdict_uses_dst_addr(__u32 flags)
{
	return POLICY_HAS_MTLS || POLICY_HAS_DST(SIDE_KIND_CLASS) || (flags & FLOW_DST_BY_ADDRESS);
}

static __always_inline __u32 verdict_port_word(const struct flow *flow)
{
	/* dst_port, protocol, family as they sit in struct verdict_key */
	return flow->dst_port | (__u32)flow->protocol << 16 | (__u32)flow->family << 24;
}

static __always_inline __u32 verdict_hash(const struct flow *flow)
{
	__u32 flags = flow->flags & VERDICT_INPUT_FLAGS;
	__u32 hash = mix32(mix32(VERDICT_HASH_SEED, flow->src_identity), flow->dst_identity);

	for (int i = 0; i < 4; i++)
		hash = mix32(hash, verdict_uses_src_addr(flags) ? flow->src_addr[i] : 0);
	for (int i = 0; i < 4; i++)
		hash = mix32(hash, verdict_uses_dst_addr(flags) ? flow->dst_addr[i] : 0);
	hash = mix32(hash, verdict_port_word(flow));
	return mix32(hash, flags);
}

static __always_inline bool verdict_key_matches(const struct verdict_key *key, const struct flow *flow)
{
	__u32 flags = flow->flags & VERDICT_INPUT_FLAGS;
	__u32 diff = (key->src_identity ^ flow->src_identity) | (key->dst_identity ^ flow->dst_identity) |
		     (key->flags ^ flags);

	diff |= (key->dst_port | (__u32)key->protocol << 16 | (__u32)key->family << 24) ^ verdict_port_word(flow);
	for (int i = 0; i < 4; i++) {
		diff |= key->src_addr[i] ^ (verdict_uses_src_addr(flags) ? flow->src_addr[i] : 0);
		diff |= key->dst_addr[i] ^ (verdict_uses_dst_addr(flags) ? flow->dst_addr[i] : 0);
	}
	return diff == 0;
}

static __always_inline void fill_verdict_key(struct verdict_key *key, const struct flow *flow)
{
	__u32 flags = flow->flags & VERDICT_INPUT_FLAGS;

	key->src_identity = flow->src_identity;
	key->dst_identity = flow->dst_identity;
	key->dst_port = flow->dst_port;
	key->protocol = flow->protocol;
	key->family = flow->family;
	key->flags = flags;
	for (int i = 0; i < 4; i++) {
		key->src_addr[i] = verdict_uses_src_addr(flags) ? flow->src_addr[i] : 0;
		key->dst_addr[i] = verdict_uses_dst_addr(flags) ? flow->dst_addr[i] : 0;
	}
}

/* The check word of an entry whose key hashes to `key_hash`, carried on over
 * the value. verdict_hash() of a flow is mix_words() over the words of its
 * verdict_key, seed included, so a reader whose flow matches the entry's key
 * starts from the hash that found the slot. */
static __always_inline __u32 verdict_check(__u32 key_hash, const struct verdict_entry *entry)
{
	__u32 hash = mix_words(key_hash, (const __u32 *)&entry->decision, WORDS(entry->decision));

	hash = mix32(hash, entry->src_identity);
	hash = mix32(hash, entry->dst_identity);
	return mix32(hash, entry->auth_epoch);
}

static __always_inline __u32 current_auth_epoch(void)
{
	__u32 zero = 0;
	struct auth_state *state = bpf_map_lookup_elem(&auth_state, &zero);

	return state ? state->epoch : 0;
}

#define NO_VERDICT_SLOT 0xffffffffu

/* The cached decision for `flow`: fills `out` (and the identities decide()
 * resolved) and returns 0 on a hit. On a miss, claims the flow's slot (writes
 * the key, and the auth epoch decide() is about to see) and returns its index
 * + 1, for verdict_fill() once decide() has answered (NO_VERDICT_SLOT: decide
 * without the cache). Global, like the two
 * below: verified once, and off the stack of the calls into decide(). */
__noinline __u32 verdict_lookup(struct flow *flow, struct decision *out)
{
	struct verdict_entry *entry;
	__u32 key_hash, index;

	if (!flow || !out)
		return NO_VERDICT_SLOT;
	key_hash = verdict_hash(flow);
	index = key_hash & (VERDICT_SLOTS - 1);
	entry = bpf_map_lookup_elem(&verdicts, &index);
	if (!entry)
		return NO_VERDICT_SLOT;
	if (verdict_key_matches(&entry->key, flow) && entry->check == verdict_check(key_hash, entry) &&
	    (!(entry->decision.flags & DECISION_NEEDS_MTLS) ||
	     (entry->auth_epoch == current_auth_epoch() && bpf_ktime_get_ns() < entry->expires_ns))) {
		*out = entry->decision;
		flow->src_identity = entry->src_identity;
		flow->dst_identity = entry->dst_identity;
		return 0;
	}
	entry->auth_epoch = current_auth_epoch();
	fill_verdict_key(&entry->key, flow); /* before decide() writes the flow's identities */
	return index + 1;
}

__noinline int verdict_fill(__u32 index, const struct flow *flow, const struct decision *decision)
{
	struct verdict_entry *entry = bpf_map_lookup_elem(&verdicts, &index);

	if (!entry || !flow || !decision)
		return 0;
	entry->decision = *decision;
	entry->src_identity = flow->src_identity;
	entry->dst_identity = flow->dst_identity;
	entry->expires_ns = decision->auth_expires_ns;
	entry->check = verdict_check(mix_words(VERDICT_HASH_SEED, (const __u32 *)&entry->key, WORDS(entry->key)), entry);
	return 0;
}

/* decide(), through the cache. Same contract: fills `out`, and writes the
 * identities it resolved by address back into the flow. */
static __always_inline void decide_cached(struct flow *flow, struct decision *out)
{
	__u32 slot = verdict_lookup(flow, out);

	if (!slot)
		return;
	decide(flow, out);
	if (slot != NO_VERDICT_SLOT)
		verdict_fill(slot - 1, flow, out);
}

#endif /* EBMESH_TABLES_H */
