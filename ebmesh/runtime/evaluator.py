"""`evaluate`: the compiled decision code, run in the kernel for one flow.

cgroup/connect4 programs cannot be test-run, so the object carries a
SEC("syscall") harness that calls the very same `decide()` the hooks call,
over the very same maps. BPF_PROG_TEST_RUN writes the answer back into the
request buffer.
"""

from __future__ import annotations

from ebmesh.runtime import abi
from ebmesh.runtime.image import DatapathImage
from ebmesh.runtime.instance import EVALUATE_PROGRAM, load_image


class Evaluator:
    """A loaded copy of the policy holding only the evaluate harness."""

    def __init__(self, image: DatapathImage):
        self._loaded = load_image(image, programs=(EVALUATE_PROGRAM,), events="none")
        self._program = self._loaded.bpf.programs[EVALUATE_PROGRAM]

    def run(self, flow: abi.Flow) -> tuple[abi.Flow, abi.Decision]:
        """The decision for `flow`, and the flow with the identities the kernel resolved."""
        request = bytearray(bytes(abi.EvaluateRequest(flow=flow)))
        self._program.test_run(request)
        answer = abi.EvaluateRequest.from_buffer_copy(request)
        return answer.flow, answer.decision

    def close(self) -> None:
        self._loaded.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
