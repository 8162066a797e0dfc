/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-rule counters and the verdict event stream. */
#ifndef EBMESH_REPORT_H
#define EBMESH_REPORT_H

static __always_inline void count_decision(const struct decision *decision)
{
	__u32 rule = decision->rule; /* 0: the default */
	struct rule_counter *counter = bpf_map_lookup_elem(&rule_counters, &rule);

	if (counter)
		counter->decided++;
	if (decision->flags & DECISION_AUDIT_MATCH) {
		rule = decision->audit_rule;
		counter = bpf_map_lookup_elem(&rule_counters, &rule);
		if (counter)
			counter->audited++;
	}
}

static __always_inline bool worth_an_event(const struct decision *decision)
{
	__u32 level = CONFIG.events;

	if (level == EVENTS_ALL)
		return true;
	if (level == EVENTS_NONE)
		return false;
	return decision->verdict == VERDICT_DENY ||
	       (decision->flags & (DECISION_WOULD_DENY | DECISION_AUDIT_MATCH));
}

#define NO_BACKEND_ID 0xffffffffu

/* Count the decision, and write its event if the event level wants it.
 * `backend_id`: where a connection to a service went, or NO_BACKEND_ID.
 * Global: every hook reports, and the verifier checks this once. */
__noinline int report(const struct flow *flow, const struct decision *decision, __u64 cgroup_id, __u32 backend_id)
{
	const struct backend *backend = NULL;
	struct verdict_event *event;

	if (!flow || !decision)
		return 0;
	count_decision(decision);
	if (!worth_an_event(decision))
		return 0;
	if (backend_id != NO_BACKEND_ID)
		backend = bpf_map_lookup_elem(&backends, &backend_id);
	event = bpf_ringbuf_reserve(&verdict_events, sizeof(*event), 0);
	if (!event) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&lost_events, &zero);

		if (lost)
			(*lost)++;
		return 0;
	}
	event->timestamp_ns = bpf_ktime_get_ns();
	event->cgroup_id = cgroup_id;
	event->flow = *flow;
	event->decision = *decision;
	if (backend) {
		__builtin_memcpy(event->backend_addr, backend->addr, 16);
		event->backend_port = bpf_ntohs(backend->port);
	} else {
		__builtin_memset(event->backend_addr, 0, 16);
		event->backend_port = 0;
	}
	event->reserved = 0;
	event->backend = backend ? backend_id : 0;
	bpf_ringbuf_submit(event, 0);
	return 0;
}

#endif /* EBMESH_REPORT_H */
