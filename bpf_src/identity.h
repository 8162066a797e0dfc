/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Which workload a socket belongs to: the one whose cgroup is the socket's
 * cgroup or its nearest ancestor (the most specific).
 *
 * The socket's own cgroup (not the current task's) decides: a socket created
 * in a workload and handed to another process stays that workload's. Kernel
 * structs are read through CO-RE, so field offsets follow the running kernel.
 *
 * Userspace maps every cgroup below the attach cgroup, so the common case is
 * one probe of cgroup_index (an array, inlined by the verifier: a hash map
 * lookup costs several times more here, measured in docs/datapath.md). A
 * cgroup created since is resolved through its parents, which are mapped.
 */
#ifndef EBMESH_IDENTITY_H
#define EBMESH_IDENTITY_H

extern void *bpf_rdonly_cast(void *obj, __u32 btf_id) __ksym;

/* How deep below the attach cgroup a socket's cgroup may sit and still be
 * told apart. A socket deeper than that is refused (TOO_DEEP): a process that
 * nests itself out of reach must not escape its workload's rules. */
#define MAX_CGROUP_NESTING 32

static __always_inline struct sock *kernel_sock(struct bpf_sock *socket)
{
	return bpf_rdonly_cast(socket, bpf_core_type_id_kernel(struct sock));
}

static __always_inline struct cgroup *parent_cgroup(struct cgroup *cgrp)
{
	struct cgroup_subsys_state *parent = cgrp->self.parent;

	if (!parent)
		return NULL;
	/* self is the cgroup's embedded css: the parent css sits inside the parent cgroup */
	return bpf_rdonly_cast((void *)parent - bpf_core_field_offset(struct cgroup, self),
			       bpf_core_type_id_kernel(struct cgroup));
}

/* The identity userspace mapped this cgroup to, or OUTSIDE_ATTACHMENT if it
 * has not mapped it. */
static __always_inline __u32 mapped_identity(__u64 id)
{
	__u32 index = (__u32)id & CONFIG.cgroup_index_mask;
	struct cgroup_slot *slot = bpf_map_lookup_elem(&cgroup_index, &index);
	__u32 *identity;

	if (slot && slot->cgroup_id == id)
		return slot->identity;
	if (!slot || !slot->cgroup_id)
		return OUTSIDE_ATTACHMENT; /* an empty slot: no cgroup maps here, not even by hash */
	identity = bpf_map_lookup_elem(&cgroup_workloads, &id);
	return identity ? *identity : OUTSIDE_ATTACHMENT;
}

/* A workload identity; NO_IDENTITY for a socket below the attach cgroup but in
 * no workload. When the walk runs out: TOO_DEEP for a socket known to be below
 * the attach cgroup (`ours`: the one a hook runs for), else OUTSIDE_ATTACHMENT
 * (a socket found by lookup, which may belong anywhere). */
static __always_inline __u32 workload_of_socket(struct bpf_sock *socket, bool ours)
{
	struct cgroup *cgrp = kernel_sock(socket)->sk_cgrp_data.cgroup;
	__u64 attach_id = CONFIG.attach_cgroup_id;

	for (int depth = 0; depth <= MAX_CGROUP_NESTING; depth++) {
		if (!cgrp)
			break;
		__u64 id = cgrp->kn->id;
		__u32 identity = mapped_identity(id);

		if (identity != OUTSIDE_ATTACHMENT)
			return identity;
		if (id == attach_id)
			return NO_IDENTITY;
		cgrp = parent_cgroup(cgrp);
	}
	return ours && cgrp ? TOO_DEEP : OUTSIDE_ATTACHMENT;
}

static __always_inline __u64 cgroup_id_of_socket(struct bpf_sock *socket)
{
	struct cgroup *cgrp = kernel_sock(socket)->sk_cgrp_data.cgroup;

	return cgrp ? cgrp->kn->id : 0;
}

/* The inode number of the socket's network namespace. */
static __always_inline __u32 netns_of_socket(struct bpf_sock *socket)
{
	return kernel_sock(socket)->__sk_common.skc_net.net->ns.inum;
}

static __always_inline __u32 identity_flags(__u32 identity)
{
	struct identity_info *info = bpf_map_lookup_elem(&identities, &identity);

	return info ? info->flags : 0;
}

#endif /* EBMESH_IDENTITY_H */
