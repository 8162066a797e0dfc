/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the datapath and userspace.
 *
 * Every struct here that crosses the user/kernel boundary (map keys and
 * values, events, the evaluate request) is mirrored field for field in
 * ebmesh/datapath/abi.py; a test compares both against this object's BTF.
 * Fields are ordered so that no struct has implicit padding.
 */
#ifndef EBMESH_TYPES_H
#define EBMESH_TYPES_H

/* Identity 0 is "no workload"; workloads and services are numbered from 1. */
#define NO_IDENTITY 0
/* A socket whose cgroup is not below the attach cgroup (cannot happen for the
 * socket a hook runs for, but can for a socket found by lookup). */
#define OUTSIDE_ATTACHMENT 0xffffffffu
/* A socket whose cgroup sits too deep below the attach cgroup to be told apart. */
#define TOO_DEEP 0xfffffffeu

/* Rule ids are 1-based source order; tables use NO_RULE for "none" so that
 * "the earliest matching rule" is a plain minimum. */
#define NO_RULE 0xffffffffu

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

enum verdict {
	VERDICT_DENY = 0,
	VERDICT_ALLOW = 1,
};

enum direction {
	DIRECTION_EGRESS = 0,
	DIRECTION_INGRESS = 1,
};

/* decision.flags */
#define DECISION_BY_DEFAULT      (1u << 0) /* no rule matched: the default decided */
#define DECISION_WOULD_DENY      (1u << 1) /* mode audit let through what enforce denies */
#define DECISION_NEEDS_MTLS      (1u << 2) /* allowed only once the pair is authenticated */
#define DECISION_AUDIT_MATCH     (1u << 3) /* an audit rule matched (decision.audit_rule) */
#define DECISION_NO_BACKEND      (1u << 4) /* allowed to a service that has no backend: refused */
#define DECISION_TOO_DEEP        (1u << 5) /* the local socket's cgroup is nested too deep: refused */

/* flow.flags */
#define FLOW_SRC_ADDRESS_KNOWN   (1u << 0) /* src_addr is meaningful */
#define FLOW_SRC_BY_ADDRESS      (1u << 1) /* src_identity is to be found from src_addr */
#define FLOW_DST_BY_ADDRESS      (1u << 2) /* dst_identity is to be found from dst_addr */
#define FLOW_DST_IS_SERVICE      (1u << 3) /* dst_identity is a service, dst_addr its VIP */
#define FLOW_SRC_BY_CGROUP       (1u << 4) /* src_identity came from the sender's cgroup */
#define FLOW_DST_BY_CGROUP       (1u << 5) /* dst_identity came from the receiver's cgroup */

/* Keys of rule_pairs name one side of a rule: any, an identity, or an
 * address class (a prefix the policy mentions). The kind sits in the top bits. */
#define SIDE_ANY       0x40000000u
#define SIDE_IDENTITY  0x80000000u
#define SIDE_CLASS     0xc0000000u
#define SIDE_VALUE_MASK 0x3fffffffu

/* identity_info.flags */
#define IDENTITY_MTLS_REQUIRED (1u << 0)

/* ---- address classes -------------------------------------------------------
 * Every prefix the policy mentions is an address class. An address belongs to
 * the class of the longest prefix containing it, found by a binary search on
 * prefix lengths (Waldvogel et al., SIGCOMM '97): one hash probe per step,
 * markers on the way to longer prefixes, each entry carrying the best match
 * so far. At most 6 probes for IPv4 and 8 for IPv6, however many prefixes. */
struct address_key {
	__u8 family;
	__u8 length;
	__u16 reserved;
	__u32 addr[4]; /* network byte order, host bits cleared */
};

struct address_class {
	__u32 class_id;  /* 0 in a marker with no real prefix above it */
	__u32 workload;  /* most specific workload whose address contains the class */
	__u32 src_start; /* longest source-side rule prefix containing it (a class id) */
	__u32 dst_start; /* same for rule destinations */
};

/* Per class: the next-shorter rule prefix containing it, per side. */
struct class_links {
	__u32 src_parent;
	__u32 dst_parent;
};

/* ---- rules -------------------------------------------------------------------
 * Rules are expanded to (source side, destination side) pairs. Each pair holds
 * a port table: for each protocol, a run of disjoint port intervals in
 * port_intervals, each carrying the earliest matching rule of each kind. */
struct rule_pair_key {
	__u32 src;
	__u32 dst;
};

#define PROTO_INDEX_TCP 0
#define PROTO_INDEX_UDP 1

struct port_table {
	__u32 first[2]; /* index into port_intervals, per protocol */
	__u32 count[2]; /* number of intervals, per protocol */
};

struct rule_set {
	__u32 deny;  /* earliest enforcing deny rule, or NO_RULE */
	__u32 allow; /* earliest plain allow */
	__u32 mtls;  /* earliest allow ... mtls */
	__u32 audit; /* earliest deny ... audit */
};

struct port_interval {
	__u16 low;
	__u16 high;
	__u32 reserved;
	struct rule_set rules;
};

struct identity_info {
	__u32 flags;
};

/* ---- services: weighted load balancing at the socket ---------------------------
 * A connect (TCP) or datagram (UDP) to a VIP goes to one backend, chosen with
 * probability weight/sum(weights) by Walker's alias method: a uniform slot,
 * then the slot's primary or its alias by a second coin. O(1) whatever the
 * number of backends. Each service has two slot tables (generations); a live
 * change fills the idle one and then flips service_info.generation, so a
 * connect sees either the old table or the new one, never half of each. */
struct service_key {
	__u8 family;
	__u8 protocol;
	__u16 port; /* network byte order */
	__u32 addr[4];
};

struct service_info {
	__u32 identity;
	__u32 reserved;
	__u32 generation; /* which slot table is live: 0 or 1 */
	__u32 slot_count; /* slots in it; 0: no backend of nonzero weight */
};

struct slot_key {
	__u32 service;    /* the service's identity */
	__u32 generation;
	__u32 slot;
};

struct backend_slot {
	__u32 primary;   /* backend id */
	__u32 alias;     /* backend id */
	__u32 threshold; /* keep primary when a uniform u32 is below this */
	__u32 reserved;
};

#define BACKEND_LIVE (1u << 0) /* in its service's current backend list */

struct backend {
	__u32 addr[4];
	__u16 port;    /* network byte order */
	__u8 family;
	__u8 flags;    /* BACKEND_* */
	__u32 service; /* identity of the service it serves */
};

/* What a socket was translated to: kept per connected socket (socket
 * storage) and per (socket, backend) for unconnected UDP. Reverse translation
 * (getpeername, recvmsg) and the backend's ingress read it. */
struct translation {
	__u32 vip[4];
	__u32 backend_addr[4];
	__u16 vip_port;     /* network byte order */
	__u16 backend_port; /* network byte order */
	__u32 service;
	__u8 family;
	__u8 reserved[3];
};

/* Kept with each socket connected to a service (socket storage, freed with
 * the socket). Its egress passes on that connect() judged the flow, so the
 * backend's ingress, seeing the same two parties, does not judge it again. */
struct socket_note {
	struct translation translation;
	__u32 src_identity;
	__u32 src_addr[4]; /* the source address connect() judged with; zero if unknown then */
	__u32 reserved;
};

struct udp_translation_key {
	__u64 cookie; /* the socket's */
	__u32 backend_addr[4];
	__u16 backend_port; /* network byte order */
	__u8 family;
	__u8 reserved;
	__u32 reserved2;
};

/* An unconnected UDP socket keeps one backend per service for its life. */
struct affinity_key {
	__u64 cookie;
	__u32 service;
	__u32 reserved;
};

struct affinity {
	__u32 backend;
	__u32 reserved;
};

/* ---- flows: what a sender's egress tells the receiver's ingress ----------------
 * On one host every loopback connection comes from 127.0.0.1; the sender's
 * cgroup is the only thing that tells who it is. Its egress records the
 * packet's 5-tuple with the sender's identity; ingress looks it up. */
struct flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport; /* network byte order */
	__u16 dport;
	__u8 family;
	__u8 protocol;
	__u16 reserved;
};

#define FLOW_RECORD_JUDGED (1u << 0) /* the sender's connect() judged it, for its service */

struct flow_record {
	__u32 src_identity;
	__u32 service;     /* the service the sender addressed (0: none) */
	__u64 seen_ns;
	__u32 vip[4];      /* and its VIP, which the flow is judged by */
	__u16 vip_port;    /* network byte order */
	__u16 flags;       /* FLOW_RECORD_* */
	__u32 reserved;
};

/* ---- UDP replies ------------------------------------------------------------------
 * A UDP server answers with sendmsg(), which is egress like any other. An
 * allowed datagram entering a workload lets the receiving socket answer its
 * sender for a while, as a stateful firewall would. The socket is named by its
 * cookie: its local address may be a wildcard, unknown at sendmsg time. */
struct reply_key {
	__u64 cookie; /* the receiving socket's */
	__u32 remote_addr[4];
	__u16 remote_port; /* network byte order */
	__u8 family;
	__u8 reserved;
	__u32 reserved2;
};

struct reply_value {
	__u64 seen_ns;
};

/* ---- mTLS: authenticated (source, destination) identity pairs ------------------- */
struct auth_key {
	__u32 src;
	__u32 dst;
};

struct auth_value {
	__u64 expires_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
};

/* ---- decision ---------------------------------------------------------------------- */
struct flow {
	__u32 src_addr[4];
	__u32 dst_addr[4];
	__u32 src_identity;
	__u32 dst_identity;
	__u16 src_port; /* host byte order; 0 when not known yet */
	__u16 dst_port; /* host byte order */
	__u8 family;
	__u8 protocol;
	__u8 direction;
	__u8 reserved;
	__u32 flags; /* FLOW_* */
};

struct decision {
	__u32 verdict;    /* enum verdict: what the kernel does */
	__u32 rule;       /* deciding rule id, 0 when the default decided */
	__u32 audit_rule; /* earliest matching audit rule, 0 if none */
	__u32 flags;      /* DECISION_* */
};

/* One verdict, as userspace reads it from the verdict_events ring buffer. */
struct verdict_event {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC */
	__u64 cgroup_id;    /* the local socket's cgroup */
	struct flow flow;
	struct decision decision;
	__u32 backend_addr[4]; /* where a connection to a service went */
	__u16 backend_port;    /* host byte order; 0: no backend */
	__u16 reserved;
	__u32 backend;         /* backend id */
};

/* Per rule id (index 0: the default). Per CPU; userspace sums. */
struct rule_counter {
	__u64 decided;  /* verdicts this rule decided */
	__u64 audited;  /* matches as an audit rule (reported, not enforced) */
};

/* The request a SEC("syscall") test run of `evaluate` reads and answers in place. */
struct evaluate_request {
	struct flow flow;
	struct decision decision;
};

/* Set once per loaded instance, before load (it lives in .rodata.config, so
 * the verifier sees it as constant). The prefix lengths are the policy's:
 * they are here, not in generated C, so that policies differing only in
 * their addresses share one compiled object. */
#define MAX_PREFIX_LENGTHS_V4 33  /* /0 to /32 */
#define MAX_PREFIX_LENGTHS_V6 129 /* /0 to /128 */

struct runtime_config {
	__u64 attach_cgroup_id;
	__u32 events;            /* EVENTS_* */
	__u8 v4_length_count;
	__u8 v6_length_count;
	__u8 reserved[2];
	__u8 v4_lengths[36];     /* ascending; the first v4_length_count count */
	__u8 v6_lengths[132];
};

#define EVENTS_NONE 0
#define EVENTS_DENIED 1 /* denials, would-be denials and audit matches */
#define EVENTS_ALL 2

#endif /* EBMESH_TYPES_H */
