"""The object's programs, by the names the C gives them (bpf_src/ebmesh.bpf.c)."""

# Hook programs, in the order they are attached: the recorder of senders
# first, so that ingress never sees a flow its sender's egress missed.
HOOK_PROGRAMS = (
    "ebmesh_egress",
    "ebmesh_ingress",
    "ebmesh_getpeername4",
    "ebmesh_getpeername6",
    "ebmesh_recvmsg4",
    "ebmesh_recvmsg6",
    "ebmesh_connect4",
    "ebmesh_connect6",
    "ebmesh_sendmsg4",
    "ebmesh_sendmsg6",
)

# The SEC("syscall") harness behind `CompiledPolicy.evaluate`.
EVALUATE_PROGRAM = "ebmesh_evaluate"
