/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The verdict for a flow, from the rule tables.
 *
 * A rule matches when its source side, its destination side and its ports
 * all match. Sides are looked up, not scanned: the source can match a rule
 * by its identity, by `any`, or by any rule prefix containing its address
 * (walked from the longest up); the same holds for the destination. Each
 * (source side, destination side) pair that names rules is one hash entry
 * whose port table already holds, per port interval, the earliest rule of
 * each kind. So the cost of a verdict depends on how deeply the policy nests
 * prefixes around the flow's addresses, never on how many rules it has.
 *
 * Order of a verdict (the contract, "What decides a verdict"):
 * a matching deny, else a matching allow, else the default; `mtls` allows
 * and `mtls required` destinations hold only for authenticated pairs; audit
 * rules only report; mode audit reports denials and lets them through.
 */
#ifndef EBMESH_DECIDE_H
#define EBMESH_DECIDE_H

#define SIDE_KIND_IDENTITY 0
#define SIDE_KIND_ANY 1
#define SIDE_KIND_CLASS 2
#define PAIR_KIND(src, dst) (1u << ((src) * 3 + (dst)))
#define POLICY_HAS_PAIRS(src, dst) ((POLICY_PAIR_KINDS & PAIR_KIND(src, dst)) != 0)
#define POLICY_HAS_SRC(kind) ((POLICY_PAIR_KINDS & (0x7u << ((kind) * 3))) != 0)
#define POLICY_HAS_DST(kind) ((POLICY_PAIR_KINDS & (0x49u << (kind))) != 0)

static __always_inline __u32 min_rule(__u32 a, __u32 b)
{
	return a < b ? a : b;
}

static __always_inline void merge_rule_set(struct rule_set *into, const struct rule_set *from)
{
	into->deny = min_rule(into->deny, from->deny);
	into->allow = min_rule(into->allow, from->allow);
	into->mtls = min_rule(into->mtls, from->mtls);
	into->audit = min_rule(into->audit, from->audit);
}

/* Binary search of one protocol's disjoint, sorted port intervals.
 * Global, like match_pair: the verifier checks each once, instead of once per
 * path through the nested side loops that call them. */
__noinline int match_port_intervals(__u32 first, __u32 count, __u32 port, struct rule_set *best)
{
	__u32 low = 0, high = count;

	if (!best)
		return 0;
	for (int step = 0; step < PORT_SEARCH_STEPS; step++) {
		if (low >= high)
			return 0;
		__u32 middle = (low + high) / 2;
		__u32 index = first + middle;
		struct port_interval *interval = bpf_map_lookup_elem(&port_intervals, &index);

		if (!interval)
			return 0;
		if (port < interval->low) {
			high = middle;
		} else if (port > interval->high) {
			low = middle + 1;
		} else {
			merge_rule_set(best, &interval->rules);
			return 1;
		}
	}
	return 0;
}

struct match_state {
	__u32 dst_identity;
	__u32 dst_class_start;
	__u32 proto_index;
	__u32 port;
	struct rule_set best;
};

/* The rules of one (source side, destination side) pair that cover the port. */
__noinline int match_pair(__u32 src_side, __u32 dst_side, __u32 proto_index, __u32 port, struct rule_set *best)
{
	struct rule_pair_key key = { .src = src_side, .dst = dst_side };
	struct port_table *table = bpf_map_lookup_elem(&rule_pairs, &key);

	if (!table || !best)
		return 0;
	proto_index &= 1;
	return match_port_intervals(table->first[proto_index], table->count[proto_index], port, best);
}

/* Every destination side of the flow against one source side. */
static __always_inline void match_source_side(__u32 src_kind, __u32 src_side, struct match_state *state)
{
	if (POLICY_HAS_PAIRS(src_kind, SIDE_KIND_IDENTITY) && state->dst_identity != NO_IDENTITY)
		match_pair(src_side, SIDE_IDENTITY | state->dst_identity, state->proto_index, state->port, &state->best);
	if (POLICY_HAS_PAIRS(src_kind, SIDE_KIND_ANY))
		match_pair(src_side, SIDE_ANY, state->proto_index, state->port, &state->best);
	if (POLICY_HAS_PAIRS(src_kind, SIDE_KIND_CLASS)) {
		__u32 class_id = state->dst_class_start;

		for (int depth = 0; depth < MAX_DST_PREFIX_NESTING; depth++) {
			if (!class_id)
				break;
			match_pair(src_side, SIDE_CLASS | class_id, state->proto_index, state->port, &state->best);
			struct class_links *links = bpf_map_lookup_elem(&class_links, &class_id);
			class_id = links ? links->dst_parent : 0;
		}
	}
}

/* Until when (src, dst) is authenticated; 0 if it is not. A pair with an end
 * on another host is looked up with that host's address: the end that is not
 * known by its cgroup. */
static __always_inline __u64 authenticated_until(const struct flow *flow)
{
	struct auth_key key = { .src = flow->src_identity, .dst = flow->dst_identity };
	struct auth_value *auth;
	__u64 now;

	if (flow->src_identity == NO_IDENTITY || flow->dst_identity == NO_IDENTITY)
		return 0;
	if (!(flow->flags & FLOW_SRC_BY_CGROUP)) {
		key.family = flow->family;
		__builtin_memcpy(key.host, flow->src_addr, 16);
	} else if (!(flow->flags & FLOW_DST_BY_CGROUP)) {
		key.family = flow->family;
		__builtin_memcpy(key.host, flow->dst_addr, 16);
	}
	auth = bpf_map_lookup_elem(&authenticated_pairs, &key);
	if (!auth)
		return 0;
	now = bpf_ktime_get_ns();
	return auth->expires_ns > now ? auth->expires_ns : 0;
}

/* Decide `flow` into `out`. Resolves the identities the flow asks to find by
 * address (FLOW_*_BY_ADDRESS) and writes them back into the flow.
 * A global function: the verifier checks it once, not once per hook. */
__noinline int decide(struct flow *flow, struct decision *out)
{
	const struct address_class *src_class = NULL, *dst_class;
	struct match_state state = {};
	__u32 verdict, rule = 0, flags = 0;

	if (!flow || !out)
		return 0;
	/* Field by field: a constant initializer would become a .rodata.cst32
	 * section, global data that libbpf 1.1 cannot always load. */
	state.best.deny = NO_RULE;
	state.best.allow = NO_RULE;
	state.best.mtls = NO_RULE;
	state.best.audit = NO_RULE;

	if (flow->flags & FLOW_SRC_ADDRESS_KNOWN)
		src_class = classify_address(flow->family, flow->src_addr);
	dst_class = classify_address(flow->family, flow->dst_addr);
	if (flow->flags & FLOW_SRC_BY_ADDRESS)
		flow->src_identity = src_class ? src_class->workload : NO_IDENTITY;
	if (flow->flags & FLOW_DST_BY_ADDRESS)
		flow->dst_identity = dst_class ? dst_class->workload : NO_IDENTITY;

	state.dst_identity = flow->dst_identity;
	state.dst_class_start = dst_class ? dst_class->dst_start : 0;
	state.proto_index = flow->protocol == IPPROTO_UDP ? PROTO_INDEX_UDP : PROTO_INDEX_TCP;
	state.port = flow->dst_port;

	if (POLICY_HAS_SRC(SIDE_KIND_IDENTITY) && flow->src_identity != NO_IDENTITY)
		match_source_side(SIDE_KIND_IDENTITY, SIDE_IDENTITY | flow->src_identity, &state);
	if (POLICY_HAS_SRC(SIDE_KIND_ANY))
		match_source_side(SIDE_KIND_ANY, SIDE_ANY, &state);
	if (POLICY_HAS_SRC(SIDE_KIND_CLASS)) {
		__u32 class_id = src_class ? src_class->src_start : 0;

		for (int depth = 0; depth < MAX_SRC_PREFIX_NESTING; depth++) {
			if (!class_id)
				break;
			match_source_side(SIDE_KIND_CLASS, SIDE_CLASS | class_id, &state);
			struct class_links *links = bpf_map_lookup_elem(&class_links, &class_id);
			class_id = links ? links->src_parent : 0;
		}
	}

	if (state.best.deny != NO_RULE) {
		verdict = VERDICT_DENY;
		rule = state.best.deny;
	} else if (state.best.allow != NO_RULE) {
		verdict = VERDICT_ALLOW;
		rule = state.best.allow;
	} else if (state.best.mtls != NO_RULE) {
		verdict = VERDICT_ALLOW;
		rule = state.best.mtls;
		flags |= DECISION_NEEDS_MTLS;
	} else {
		verdict = POLICY_DEFAULT_VERDICT;
		flags |= DECISION_BY_DEFAULT;
	}

	if (POLICY_HAS_MTLS_REQUIRED && verdict == VERDICT_ALLOW &&
	    (identity_flags(flow->dst_identity) & IDENTITY_MTLS_REQUIRED))
		flags |= DECISION_NEEDS_MTLS;
	out->auth_expires_ns = 0;
	if (flags & DECISION_NEEDS_MTLS) {
		__u64 until = authenticated_until(flow);

		if (until) {
			out->auth_expires_ns = until;
		} else {
			verdict = VERDICT_DENY;
			flags |= DECISION_UNAUTHENTICATED;
			out->auth_expires_ns = ~0ull; /* until the pairs change (auth_state.epoch) */
		}
	}

	if (POLICY_MODE_AUDIT && verdict == VERDICT_DENY) {
		verdict = VERDICT_ALLOW;
		flags |= DECISION_WOULD_DENY;
	}

	out->verdict = verdict;
	out->rule = rule;
	out->audit_rule = state.best.audit == NO_RULE ? 0 : state.best.audit;
	if (state.best.audit != NO_RULE)
		flags |= DECISION_AUDIT_MATCH;
	out->flags = flags;
	return 0;
}

#endif /* EBMESH_DECIDE_H */
