/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Which workload a socket belongs to: the one whose cgroup is the socket's
 * cgroup or its nearest ancestor (the most specific), found by walking up the
 * socket's cgroup hierarchy to the cgroup the policy is attached to.
 *
 * The socket's own cgroup (not the current task's) decides: a socket created
 * in a workload and handed to another process stays that workload's. The walk
 * reads kernel structs through CO-RE, so field offsets follow the running
 * kernel.
 */
#ifndef EBMESH_IDENTITY_H
#define EBMESH_IDENTITY_H

extern void *bpf_rdonly_cast(void *obj, __u32 btf_id) __ksym;

/* How deep below the attach cgroup a socket's cgroup may sit and still be
 * told apart. A socket deeper than that is refused (TOO_DEEP): a process that
 * nests itself out of reach must not escape its workload's rules. */
#define MAX_CGROUP_NESTING 32

static __always_inline struct cgroup *parent_cgroup(struct cgroup *cgrp)
{
	struct cgroup_subsys_state *parent = cgrp->self.parent;

	if (!parent)
		return NULL;
	/* self is the cgroup's embedded css: the parent css sits inside the parent cgroup */
	return bpf_rdonly_cast((void *)parent - bpf_core_field_offset(struct cgroup, self),
			       bpf_core_type_id_kernel(struct cgroup));
}

/* A workload identity; NO_IDENTITY for a socket below the attach cgroup but in
 * no workload. When the walk runs out: TOO_DEEP for a socket known to be below
 * the attach cgroup (`ours`: the one a hook runs for), else OUTSIDE_ATTACHMENT
 * (a socket found by lookup, which may belong anywhere). */
static __always_inline __u32 workload_of_socket(struct bpf_sock *socket, bool ours)
{
	struct sock *sk = bpf_rdonly_cast(socket, bpf_core_type_id_kernel(struct sock));
	struct cgroup *cgrp = sk->sk_cgrp_data.cgroup;
	__u64 attach_id = CONFIG.attach_cgroup_id;

	for (int depth = 0; depth <= MAX_CGROUP_NESTING; depth++) {
		if (!cgrp)
			break;
		__u64 id = cgrp->kn->id;
		if (id == attach_id)
			return NO_IDENTITY;
		__u32 *identity = bpf_map_lookup_elem(&cgroup_workloads, &id);
		if (identity)
			return *identity;
		cgrp = parent_cgroup(cgrp);
	}
	return ours && cgrp ? TOO_DEEP : OUTSIDE_ATTACHMENT;
}

static __always_inline __u64 cgroup_id_of_socket(struct bpf_sock *socket)
{
	struct sock *sk = bpf_rdonly_cast(socket, bpf_core_type_id_kernel(struct sock));
	struct cgroup *cgrp = sk->sk_cgrp_data.cgroup;

	return cgrp ? cgrp->kn->id : 0;
}

static __always_inline __u32 identity_flags(__u32 identity)
{
	struct identity_info *info = bpf_map_lookup_elem(&identities, &identity);

	return info ? info->flags : 0;
}

#endif /* EBMESH_IDENTITY_H */
