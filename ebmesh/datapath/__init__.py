"""What the compile side hands the run side, as plain data: no libbpf here.

`parties` (workloads, services, where each was written), `tables` (the shape
and map rows lowering produces), `image` (a built object with everything
needed to bring it to life), `naming` (numbers back to names), `abi` (ctypes
mirrors of bpf_src/ebmesh_types.h), `services` (alias tables and service
keys), `limits` and `programs`. Every layer may import this package; it
imports nothing of ebmesh but `errors`.
"""
