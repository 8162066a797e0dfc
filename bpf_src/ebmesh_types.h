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
#define DECISION_UNAUTHENTICATED (1u << 6) /* refused for want of authentication (NEEDS_MTLS) */

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
 * change fills the idle one and then flips service_entry.generation, so a
 * connect sees either the old table or the new one, never half of each.
 *
 * Every connect asks "is this a VIP?", so the answer must be cheap: services
 * are numbered 0..N-1 (their index), and service_index is a direct-mapped
 * array over a hash of the key: a slot holding another key, with no
 * SERVICE_SLOT_OVERFLOW, means "not a service" without a second probe. Keys
 * that collide go to the services hash as well (userspace decides). */
struct service_key {
	__u8 family;
	__u8 protocol;
	__u16 port; /* network byte order */
	__u32 addr[4];
};

#define SERVICE_SLOT_USED     (1u << 0)
#define SERVICE_SLOT_OVERFLOW (1u << 1) /* some key hashing here lives in `services` */

struct service_slot {
	struct service_key key;
	__u32 index; /* into service_entries */
	__u32 flags; /* SERVICE_SLOT_* */
};

struct service_entry {
	struct service_key key;
	__u32 identity;
	__u32 generation; /* which slot table is live: 0 or 1 */
	__u32 slot_count; /* slots in it; 0: no backend of nonzero weight */
	__u32 index;      /* its own index in service_entries */
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
	__u32 service;      /* its index */
	__u8 family;
	__u8 reserved[3];
};

/* A socket connected to a service (TCP, or UDP after connect()) carries the
 * service in the upper half of its SO_PRIORITY (TC_H_MAJ), which
 * getpeername and the backend's ingress read back: creating socket storage
 * for it costs about a microsecond, setting the priority a tenth of that.
 * The lower half, all that qdiscs' priority maps read, keeps its value. */
#define PRIORITY_SERVICE_TAG   0xe0000000u /* TC handles 0xe000: to 0xefff: are ebmesh's */
#define PRIORITY_SERVICE_MASK  0xf0000000u
#define PRIORITY_SERVICE_SHIFT 16
#define PRIORITY_SERVICE_INDEX 0x0fffu     /* service index + 1 in bits 16..27 */

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
 * Within a network namespace, ingress finds a local sender by its socket.
 * Across namespaces of one host it cannot: there the recorder (cgroup_skb
 * egress, attached only when the mesh spans namespaces) writes each new
 * flow's 5-tuple with the sender's identity, and ingress looks it up. */
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

/* ---- who a socket is: cgroup -> identity ---------------------------------------
 * Userspace maps every cgroup below the attach cgroup to its identity (the
 * nearest workload cgroup at or above it; NO_IDENTITY for none) in a
 * direct-mapped array indexed by the cgroup id's low bits, so the hooks
 * resolve a socket in one array probe; a cgroup whose slot is taken goes to
 * the cgroup_workloads hash instead. A cgroup not mapped yet (just created)
 * is resolved through its parents. */
struct cgroup_slot {
	__u64 cgroup_id;
	__u32 identity;
	__u32 reserved;
};

/* ---- where a connect goes: local listeners ----------------------------------------
 * A direct-mapped table of the listeners ingress has seen (and connect() has
 * looked up), so that connect() knows a local destination's workload without
 * a socket lookup. Written by the hooks themselves, so entries are checked:
 * `check` covers key and value (a torn write reads as a miss), `cookie` names
 * the listening socket (ingress compares it with its own), `seen_ns` ages an
 * entry out. */
struct listener_key {
	__u32 netns;  /* the namespace's inode number */
	__u8 family;
	__u8 protocol;
	__u16 port;   /* network byte order */
	__u32 addr[4];
};

struct listener_slot {
	struct listener_key key;
	__u64 cookie;
	__u64 seen_ns;
	__u32 identity;
	__u32 check;
};

/* ---- UDP: which peers a socket may talk to ---------------------------------------
 * A UDP server answers with sendmsg(), which is egress like any other. An
 * allowed datagram, in or out, lets the socket and that peer keep talking for
 * a while (UDP_PEER_WINDOW_NS), as a stateful firewall would: the socket keeps
 * its recent peers in its own storage (freed with it), and every peer is also
 * kept in udp_replies, which does not forget under pressure. */
#define UDP_PEERS 8

struct udp_peer {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 family;
	__u8 reserved;
	__u32 reserved2;
	__u64 seen_ns;
};

struct socket_state {
	struct udp_peer peers[UDP_PEERS];
};

struct reply_key {
	__u64 cookie; /* the local socket's */
	__u32 remote_addr[4];
	__u16 remote_port; /* network byte order */
	__u8 family;
	__u8 reserved;
	__u32 reserved2;
};

struct reply_value {
	__u64 seen_ns;
};

/* ---- mTLS: authenticated (source, destination) identity pairs -------------------
 * A pair between two local workloads has a zero host; a pair with a workload
 * on another host is bound to that host's address too, so that an address
 * reused or spoofed elsewhere does not ride it. */
struct auth_key {
	__u32 src;
	__u32 dst;
	__u32 host[4];
	__u8 family; /* 0 for a local pair */
	__u8 reserved[3];
};

struct auth_value {
	__u64 expires_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
};

/* Bumped by userspace whenever authenticated_pairs changes: cached verdicts
 * that depended on authentication are then taken afresh. */
struct auth_state {
	__u32 epoch;
	__u32 reserved;
};

/* ---- notices: what the datapath asks of userspace -----------------------------------
 * A connection refused for want of authentication (the authenticator
 * should authenticate the pair), and the first socket of the mesh seen in
 * another network namespace (the recorder is needed). */
#define NOTICE_AUTH_NEEDED     1
#define NOTICE_FOREIGN_NETNS   2

struct notice {
	__u32 kind;
	__u32 src;
	__u32 dst;
	__u32 netns;
	__u32 host[4];
	__u8 family;
	__u8 reserved[3];
	__u32 reserved2;
};

#define SIGNAL_FOREIGN_NETNS_SEEN (1u << 0)

struct datapath_signals {
	__u32 flags; /* SIGNAL_* already sent */
	__u32 reserved;
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
	__u32 reserved2;
};

struct decision {
	__u32 verdict;    /* enum verdict: what the kernel does */
	__u32 rule;       /* deciding rule id, 0 when the default decided */
	__u32 audit_rule; /* earliest matching audit rule, 0 if none */
	__u32 flags;      /* DECISION_* */
	__u64 auth_expires_ns; /* with NEEDS_MTLS: until when the verdict holds (CLOCK_MONOTONIC) */
};

/* ---- verdict cache ------------------------------------------------------------------
 * decide()'s answer for its inputs, per CPU, direct-mapped over a hash of them.
 * A hit skips the address classification and the rule lookups. Decisions that
 * needed authentication are valid while their pair's authentication is
 * (auth_epoch, expires_ns). */
struct verdict_key {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 src_addr[4];
	__u32 dst_addr[4];
	__u16 dst_port;
	__u8 protocol;
	__u8 family;
	__u32 flags; /* the FLOW_* that decide() reads */
};

struct verdict_entry {
	struct verdict_key key;
	struct decision decision;
	__u32 src_identity; /* as decide() resolved them */
	__u32 dst_identity;
	__u32 auth_epoch;
	__u32 check;
	__u64 expires_ns;
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
	__u32 events;             /* EVENTS_* */
	__u32 home_netns;         /* inode number of the namespace ebmesh attached from */
	__u32 cgroup_index_mask;  /* cgroup_index has mask + 1 slots */
	__u32 service_index_mask; /* service_index has mask + 1 slots */
	__u8 v4_length_count;
	__u8 v6_length_count;
	__u8 reserved[2];
	__u8 v4_lengths[36];      /* ascending; the first v4_length_count count */
	__u8 v6_lengths[132];
	__u32 reserved2;
};

#define EVENTS_NONE 0
#define EVENTS_DENIED 1 /* denials, would-be denials and audit matches */
#define EVENTS_ALL 2

#endif /* EBMESH_TYPES_H */
