/* The control of the datapath-cost figures: one program per cgroup hook ebmesh
 * may attach, each doing nothing but letting the operation through. bench/cost.py
 * loads only those of the hooks the measured attachment actually attached
 * (found by querying its cgroup) and attaches them to a cgroup of their own, so
 * "over the bare hooks" is ebmesh's time minus these programs' time, in the same
 * run, under the same traffic.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define PASS(section, name, context) \
	SEC(section) int name(context *ctx) { return 1; }

PASS("cgroup_skb/ingress", empty_ingress, struct __sk_buff)
PASS("cgroup_skb/egress", empty_egress, struct __sk_buff)
PASS("cgroup/connect4", empty_connect4, struct bpf_sock_addr)
PASS("cgroup/connect6", empty_connect6, struct bpf_sock_addr)
PASS("cgroup/sendmsg4", empty_sendmsg4, struct bpf_sock_addr)
PASS("cgroup/sendmsg6", empty_sendmsg6, struct bpf_sock_addr)
PASS("cgroup/recvmsg4", empty_recvmsg4, struct bpf_sock_addr)
PASS("cgroup/recvmsg6", empty_recvmsg6, struct bpf_sock_addr)
PASS("cgroup/getpeername4", empty_getpeername4, struct bpf_sock_addr)
PASS("cgroup/getpeername6", empty_getpeername6, struct bpf_sock_addr)
PASS("cgroup/getsockname4", empty_getsockname4, struct bpf_sock_addr)
PASS("cgroup/getsockname6", empty_getsockname6, struct bpf_sock_addr)
PASS("cgroup/bind4", empty_bind4, struct bpf_sock_addr)
PASS("cgroup/bind6", empty_bind6, struct bpf_sock_addr)
PASS("cgroup/post_bind4", empty_post_bind4, struct bpf_sock)
PASS("cgroup/post_bind6", empty_post_bind6, struct bpf_sock)
PASS("cgroup/sock_create", empty_sock_create, struct bpf_sock)
PASS("cgroup/sock_release", empty_sock_release, struct bpf_sock)
PASS("sockops", empty_sockops, struct bpf_sock_ops)

char LICENSE[] SEC("license") = "GPL";
