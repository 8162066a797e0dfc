/* Shared by the toolchain test program; the cache tests edit a copy of it. */
#ifndef SAMPLE_POLICY_H
#define SAMPLE_POLICY_H

#define VERDICT_DENY 0
#define VERDICT_ALLOW 1
#define AF_INET 2
#define AF_INET6 10

struct lpm_v4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct flow_event {
	__u64 cookie;
	__u32 addr;
	__u16 port;
	__u8 verdict;
	__u8 family;
};

#endif
