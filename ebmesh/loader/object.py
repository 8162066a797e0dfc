"""A BPF ELF object: open (configure maps and programs), load, close."""

from __future__ import annotations

import ctypes
import re

from ..errors import LibbpfError
from ._common import OwnedResource, annotate, with_detail
from .btf import Btf
from .libbpf import BpfObjectOpenOpts, lib
from .maps import ObjectMap
from .privileges import require_bpf_privileges
from .programs import BpfProgram

_FAILED_PROG = re.compile(r"prog '([^']+)': failed to load")


def _map_key(kernel_name: str, internal: bool) -> str:
    """`.rodata` for libbpf's `<objname>.rodata`; other names unchanged.

    libbpf prefixes the internal maps of .data/.rodata/.bss with (part of)
    the object name to fit the kernel's 15 characters; the section name is
    what the C source (and the code generator) knows.
    """
    if internal and "." in kernel_name:
        return kernel_name[kernel_name.index(".") :]
    return kernel_name


class BpfObject(OwnedResource):
    """An opened BPF object (bpf_object__open_mem), loaded with `load()`.

    Lifecycle: open -> configure (`maps[...].set_max_entries`,
    `.set_initial_value`, `programs[...].set_autoload`) -> `load()` -> use ->
    `close()`. Maps and programs belong to the object and die with it; links
    made from its programs are independent and outlive it.
    """

    def __init__(self, handle, data_buffer, name: str):
        self._handle = handle
        self._data = data_buffer  # libbpf reads the ELF from here until load: keep it alive
        self._name = name
        self._loaded = False
        self.maps: dict[str, ObjectMap] = {}
        self.programs: dict[str, BpfProgram] = {}
        map_ptr = lib.bpf_object__next_map(handle, None)
        while map_ptr:
            bpf_map = ObjectMap(map_ptr, self)
            key = _map_key(bpf_map.name, bpf_map.is_internal)
            bpf_map._friendly_name = key
            self.maps[key] = bpf_map
            map_ptr = lib.bpf_object__next_map(handle, map_ptr)
        prog_ptr = lib.bpf_object__next_program(handle, None)
        while prog_ptr:
            program = BpfProgram(prog_ptr, self)
            self.programs[program.name] = program
            prog_ptr = lib.bpf_object__next_program(handle, prog_ptr)

    @classmethod
    def open(cls, data: bytes, name: str) -> BpfObject:
        """Open an ELF object from memory. `name` names it in libbpf's messages
        (libbpf keeps at most 15 characters)."""
        data = bytes(data)
        buffer = ctypes.create_string_buffer(data, len(data))
        name_bytes = name.encode()
        opts = BpfObjectOpenOpts(sz=ctypes.sizeof(BpfObjectOpenOpts), object_name=name_bytes)
        with annotate(f"opening BPF object {name!r}"):
            handle = lib.bpf_object__open_mem(buffer, len(data), ctypes.byref(opts))
        try:
            return cls(handle, buffer, name)
        except BaseException:
            lib.bpf_object__close(handle)
            raise

    # --- state ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name given to open() (libbpf's own copy may be truncated to 15 characters)."""
        return self._name

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _live(self):
        if self._handle is None:
            raise ValueError(f"BPF object {self._name!r} is closed")
        return self._handle

    @property
    def btf(self) -> Btf | None:
        """The object's BTF as libbpf holds it (None if it has none); valid until close()."""
        handle = lib.bpf_object__btf(self._live())
        return Btf(handle, self) if handle else None

    # --- load and close --------------------------------------------------------------

    def load(self) -> None:
        """Create the maps and load (verify) the programs.

        A verifier rejection raises LibbpfError whose `log` holds the verifier log.
        """
        handle = self._live()
        if self._loaded:
            raise ValueError(f"BPF object {self._name!r} is already loaded")
        require_bpf_privileges()
        try:
            lib.bpf_object__load(handle)
        except LibbpfError as exc:
            failed = _FAILED_PROG.search(exc.log)
            what = f"program {failed.group(1)!r} of " if failed else ""
            raise with_detail(exc, f"loading {what}BPF object {self._name!r}") from None
        self._loaded = True
        self._data = None  # libbpf is done with the ELF bytes

    def close(self) -> None:
        """Unload maps and programs (links already made stay attached). Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.bpf_object__close(handle)
        self._data = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("loaded" if self._loaded else "open")
        return f"<BpfObject {self._name!r} {state}: maps={sorted(self.maps)} programs={sorted(self.programs)}>"
