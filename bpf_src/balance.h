/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Weighted backend choice for services, and what a socket was translated to. */
#ifndef EBMESH_BALANCE_H
#define EBMESH_BALANCE_H

static __always_inline const struct backend *live_backend(__u32 id, __u32 service)
{
	const struct backend *backend = bpf_map_lookup_elem(&backends, &id);

	if (!backend || !(backend->flags & BACKEND_LIVE) || backend->service != service)
		return NULL;
	return backend;
}

/* Walker's alias method: a uniform slot (Lemire's multiply-shift, no
 * division), then its primary or its alias by a second uniform draw. */
static __always_inline const struct backend *pick_backend(const struct service_entry *service, __u32 *id)
{
	struct slot_key key = {
		.service = service->identity,
		.generation = service->generation,
	};
	const struct backend_slot *slot;

	if (!service->slot_count)
		return NULL;
	key.slot = ((__u64)bpf_get_prandom_u32() * service->slot_count) >> 32;
	slot = bpf_map_lookup_elem(&backend_slots, &key);
	if (!slot)
		return NULL;
	*id = bpf_get_prandom_u32() < slot->threshold ? slot->primary : slot->alias;
	return live_backend(*id, service->identity);
}

static __always_inline void count_backend(__u32 id)
{
	__u64 *connections = bpf_map_lookup_elem(&backend_counters, &id);

	if (connections)
		(*connections)++;
}

/* The backend of an unconnected UDP socket's earlier datagrams to this
 * service, while it is still one of the service's backends. */
static __always_inline const struct backend *remembered_backend(__u64 cookie, __u32 service, __u32 *id)
{
	struct affinity_key key = { .cookie = cookie, .service = service };
	struct affinity *affinity = bpf_map_lookup_elem(&udp_affinity, &key);

	if (!affinity)
		return NULL;
	*id = affinity->backend;
	return live_backend(*id, service);
}

static __always_inline void remember_backend(__u64 cookie, __u32 service, __u32 id)
{
	struct affinity_key key = { .cookie = cookie, .service = service };
	struct affinity affinity = { .backend = id };

	bpf_map_update_elem(&udp_affinity, &key, &affinity, BPF_ANY);
}

static __always_inline bool translation_matches(const struct translation *translation, __u8 family,
						const __u32 *addr, __u16 port)
{
	return translation->family == family && translation->backend_port == port &&
	       same_address(translation->backend_addr, addr);
}

static __always_inline void fill_udp_translation_key(struct udp_translation_key *key, __u64 cookie, __u8 family,
						     const __u32 *backend_addr, __u16 backend_port)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->cookie = cookie;
	key->family = family;
	key->backend_port = backend_port;
	__builtin_memcpy(key->backend_addr, backend_addr, 16);
}

/* The service an unconnected UDP socket sent to (addr, port) through, if it did. */
static __always_inline const struct translation *udp_translation_of(__u64 cookie, __u8 family, const __u32 *addr,
								   __u16 port)
{
	const struct translation *translation;
	struct udp_translation_key key;

	if (!POLICY_HAS_SERVICES)
		return NULL;
	fill_udp_translation_key(&key, cookie, family, addr, port);
	translation = bpf_map_lookup_elem(&udp_translations, &key);
	if (translation && translation_matches(translation, family, addr, port))
		return translation;
	return NULL;
}

/* ---- a connected socket's service, in its priority (see PRIORITY_SERVICE_TAG) ---- */

static __always_inline __u32 priority_with_service(__u32 priority, __u32 index)
{
	return PRIORITY_SERVICE_TAG | ((index + 1) << PRIORITY_SERVICE_SHIFT) | (priority & 0xffffu);
}

/* The service a connected socket was translated from, or NULL. */
static __always_inline const struct service_entry *service_of_socket(const struct bpf_sock *sk)
{
	__u32 priority = sk->priority;
	__u32 index;

	if (!POLICY_HAS_SERVICES || (priority & PRIORITY_SERVICE_MASK) != PRIORITY_SERVICE_TAG)
		return NULL;
	index = (priority >> PRIORITY_SERVICE_SHIFT) & PRIORITY_SERVICE_INDEX;
	return index ? service_by_index(index - 1) : NULL;
}

#endif /* EBMESH_BALANCE_H */
