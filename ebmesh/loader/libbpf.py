"""The one place ebmesh touches libbpf.so.1 (and the two libc functions it needs).

Every bound function is listed in `LIBBPF_FUNCTIONS` with its restype, its
argtypes and how its result is checked; `lib` exposes exactly those names
and nothing else (tests/unit/test_libbpf_bindings.py checks the table
against the symbols of the installed library). Only functions exported by
libbpf 1.1 are bound.

libbpf 1.x reports errors by returning a negative errno (int functions) or
NULL with errno set (pointer functions). The `errcheck` installed for each
checked function turns that into `LibbpfError`, carrying what libbpf printed
during the call (for a failed program load: the verifier log). libbpf prints
through `libbpf_set_print`; our callback formats the varargs with libc's
vsnprintf into a per-thread buffer. Messages of successful calls go to the
`ebmesh.libbpf` logger instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import logging
import platform
import threading
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_ulong,
    c_void_p,
)

from ..errors import EnvironmentProblem, LibbpfError
from .constants import ENOTSUPP

LIBBPF_SONAME = "libbpf.so.1"

logger = logging.getLogger("ebmesh.libbpf")


# --- opaque handles ---------------------------------------------------------


class bpf_object(ctypes.Structure):
    pass


class bpf_program(ctypes.Structure):
    pass


class bpf_map(ctypes.Structure):
    pass


class bpf_link(ctypes.Structure):
    pass


class ring_buffer(ctypes.Structure):
    pass


class btf(ctypes.Structure):
    pass


BpfObjectPtr = POINTER(bpf_object)
BpfProgramPtr = POINTER(bpf_program)
BpfMapPtr = POINTER(bpf_map)
BpfLinkPtr = POINTER(bpf_link)
RingBufferPtr = POINTER(ring_buffer)
BtfPtr = POINTER(btf)

# --- option and info structs (layouts checked in the unit test) -------------


class BpfObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf 1.1, 80 bytes)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_removed_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts (24 bytes)."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1, 80 bytes)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


BPF_TAG_SIZE = 8
BPF_OBJ_NAME_LEN = 16


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info from linux/bpf.h (uapi 6.1, 232 bytes).

    Newer kernels have a longer struct; bpf_obj_get_info_by_fd fills only
    the `info_len` bytes we pass, so this prefix is enough.
    """

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32, 1),
        ("_pad0", c_uint32, 31),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
        ("_pad1", c_uint32),
    ]


class BpfLinkInfo(ctypes.Structure):
    """The head of struct bpf_link_info (uapi), with its cgroup member of the union.

    The kernel fills at most the `info_len` bytes passed; a newer kernel's
    longer union does not matter here."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_pad0", c_uint32),
        ("cgroup_id", c_uint64),
        ("attach_type", c_uint32),
        ("_pad1", c_uint32),
    ]


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info from linux/bpf.h (uapi 6.1, 88 bytes)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("_pad0", c_uint32),
        ("map_extra", c_uint64),
    ]


# BTF records (linux/btf.h). btf__type_by_id points at a `struct btf_type`
# inside libbpf's copy of the BTF; the records of its kind follow it.


class BtfTypeRecord(ctypes.Structure):
    """struct btf_type (12 bytes): `size_or_type` is the union of size and type."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfArrayRecord(ctypes.Structure):
    """struct btf_array (12 bytes), after an ARRAY."""

    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


class BtfMemberRecord(ctypes.Structure):
    """struct btf_member (12 bytes), vlen of them after a STRUCT or UNION."""

    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class BtfParamRecord(ctypes.Structure):
    """struct btf_param (8 bytes), vlen of them after a FUNC_PROTO."""

    _fields_ = [("name_off", c_uint32), ("type", c_uint32)]


class BtfVarRecord(ctypes.Structure):
    """struct btf_var (4 bytes), after a VAR."""

    _fields_ = [("linkage", c_uint32)]


class BtfVarSecinfoRecord(ctypes.Structure):
    """struct btf_var_secinfo (12 bytes), vlen of them after a DATASEC."""

    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


# --- callback types ---------------------------------------------------------

# int (*libbpf_print_fn_t)(enum libbpf_print_level, const char *fmt, va_list ap);
# va_list is an array type on x86-64 (passed as a pointer) and passed by
# reference on aarch64, so c_void_p is right for both.
LibbpfPrintFn = CFUNCTYPE(c_int, c_int, c_void_p, c_void_p)
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
RingBufferSampleFn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

# --- result checks ----------------------------------------------------------

# How the result of a function is checked (the 4th column of the table).
NEG_ERRNO = "neg-errno"  # int: negative is -errno
NULL_ERRNO = "null-errno"  # pointer: NULL means failure, errno says why
UNCHECKED = "unchecked"  # getters, void functions, NULL-is-not-an-error


class _ThreadLog(threading.local):
    def __init__(self):
        self.entries: list[tuple[int, str]] = []


_thread_log = _ThreadLog()


def take_log() -> str:
    """What libbpf printed (warnings and info) on this thread since the last checked call."""
    entries, _thread_log.entries = _thread_log.entries, []
    return "".join(text for _level, text in entries)


def _flush_log_to_logger() -> None:
    entries, _thread_log.entries = _thread_log.entries, []
    for level, text in entries:
        logger.log(
            logging.WARNING if level == LIBBPF_WARN else logging.INFO, "%s", text.rstrip("\n")
        )


LIBBPF_ERRNO_BASE = 4000  # libbpf's own codes (LIBBPF_ERRNO__FORMAT = 4001, ...)


def errno_note(err: int) -> str:
    """What os.strerror cannot say about `err`: libbpf's own codes and ENOTSUPP."""
    if err == ENOTSUPP:
        return "ENOTSUPP: the kernel does not support this operation for this map or program type"
    if LIBBPF_ERRNO_BASE <= err < LIBBPF_ERRNO_BASE + 1000:
        buf = ctypes.create_string_buffer(128)
        lib.libbpf_strerror(err, buf, len(buf))
        return f"libbpf: {buf.value.decode(errors='replace')}"
    return ""


def _check_neg_errno(result, func, args):
    if result < 0:
        raise LibbpfError(func.__name__, -result, log=take_log(), detail=errno_note(-result))
    _flush_log_to_logger()
    return result


def _check_null_errno(result, func, args):
    if not result:
        err = ctypes.get_errno() or _errno.EINVAL
        raise LibbpfError(func.__name__, err, log=take_log(), detail=errno_note(err))
    _flush_log_to_logger()
    return result


_CHECKS: dict[str, Callable | None] = {
    NEG_ERRNO: _check_neg_errno,
    NULL_ERRNO: _check_null_errno,
    UNCHECKED: None,
}

# --- THE table ---------------------------------------------------------------

_u32p = POINTER(c_uint32)

#: (name, restype, argtypes, check). Every libbpf function ebmesh calls, and only those.
LIBBPF_FUNCTIONS: list[tuple[str, object, list, str]] = [
    # library
    ("libbpf_set_print", c_void_p, [LibbpfPrintFn], UNCHECKED),
    ("libbpf_num_possible_cpus", c_int, [], NEG_ERRNO),
    ("libbpf_strerror", c_int, [c_int, c_char_p, c_size_t], UNCHECKED),
    ("libbpf_major_version", c_uint32, [], UNCHECKED),
    ("libbpf_minor_version", c_uint32, [], UNCHECKED),
    # bpf_object
    (
        "bpf_object__open_mem",
        BpfObjectPtr,
        [c_void_p, c_size_t, POINTER(BpfObjectOpenOpts)],
        NULL_ERRNO,
    ),
    ("bpf_object__load", c_int, [BpfObjectPtr], NEG_ERRNO),
    ("bpf_object__close", None, [BpfObjectPtr], UNCHECKED),
    ("bpf_object__next_map", BpfMapPtr, [BpfObjectPtr, BpfMapPtr], UNCHECKED),
    ("bpf_object__next_program", BpfProgramPtr, [BpfObjectPtr, BpfProgramPtr], UNCHECKED),
    # NULL for an object without BTF; owned by the object.
    ("bpf_object__btf", BtfPtr, [BpfObjectPtr], UNCHECKED),
    # bpf_map (libbpf's view of a map in an object)
    ("bpf_map__name", c_char_p, [BpfMapPtr], UNCHECKED),
    # bpf_map__fd is -1 before load; checked by the caller.
    ("bpf_map__fd", c_int, [BpfMapPtr], UNCHECKED),
    ("bpf_map__type", c_int, [BpfMapPtr], UNCHECKED),
    ("bpf_map__key_size", c_uint32, [BpfMapPtr], UNCHECKED),
    ("bpf_map__value_size", c_uint32, [BpfMapPtr], UNCHECKED),
    ("bpf_map__max_entries", c_uint32, [BpfMapPtr], UNCHECKED),
    ("bpf_map__map_flags", c_uint32, [BpfMapPtr], UNCHECKED),
    ("bpf_map__is_internal", c_bool, [BpfMapPtr], UNCHECKED),
    ("bpf_map__btf_key_type_id", c_uint32, [BpfMapPtr], UNCHECKED),
    ("bpf_map__btf_value_type_id", c_uint32, [BpfMapPtr], UNCHECKED),
    ("bpf_map__set_max_entries", c_int, [BpfMapPtr, c_uint32], NEG_ERRNO),
    ("bpf_map__reuse_fd", c_int, [BpfMapPtr, c_int], NEG_ERRNO),
    ("bpf_map__set_initial_value", c_int, [BpfMapPtr, c_void_p, c_size_t], NEG_ERRNO),
    ("bpf_map__initial_value", c_void_p, [BpfMapPtr, POINTER(c_size_t)], UNCHECKED),
    ("bpf_map__pin", c_int, [BpfMapPtr, c_char_p], NEG_ERRNO),
    ("bpf_map__unpin", c_int, [BpfMapPtr, c_char_p], NEG_ERRNO),
    # map syscalls by fd
    ("bpf_map_lookup_elem", c_int, [c_int, c_void_p, c_void_p], NEG_ERRNO),
    ("bpf_map_update_elem", c_int, [c_int, c_void_p, c_void_p, c_uint64], NEG_ERRNO),
    ("bpf_map_delete_elem", c_int, [c_int, c_void_p], NEG_ERRNO),
    ("bpf_map_get_next_key", c_int, [c_int, c_void_p, c_void_p], NEG_ERRNO),
    (
        "bpf_map_lookup_batch",
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, _u32p, POINTER(BpfMapBatchOpts)],
        NEG_ERRNO,
    ),
    (
        "bpf_map_update_batch",
        c_int,
        [c_int, c_void_p, c_void_p, _u32p, POINTER(BpfMapBatchOpts)],
        NEG_ERRNO,
    ),
    # bpf_program
    ("bpf_program__name", c_char_p, [BpfProgramPtr], UNCHECKED),
    ("bpf_program__section_name", c_char_p, [BpfProgramPtr], UNCHECKED),
    # bpf_program__fd is negative before load (or with autoload off); checked by the caller.
    ("bpf_program__fd", c_int, [BpfProgramPtr], UNCHECKED),
    ("bpf_program__type", c_int, [BpfProgramPtr], UNCHECKED),
    ("bpf_program__expected_attach_type", c_int, [BpfProgramPtr], UNCHECKED),
    ("bpf_program__insn_cnt", c_size_t, [BpfProgramPtr], UNCHECKED),
    # -EINVAL for a section whose programs attach without an attach type (e.g. "syscall").
    ("libbpf_attach_type_by_name", c_int, [c_char_p, POINTER(c_int)], NEG_ERRNO),
    ("bpf_program__autoload", c_bool, [BpfProgramPtr], UNCHECKED),
    ("bpf_program__set_autoload", c_int, [BpfProgramPtr, c_bool], NEG_ERRNO),
    ("bpf_program__attach_cgroup", BpfLinkPtr, [BpfProgramPtr, c_int], NULL_ERRNO),
    ("bpf_prog_test_run_opts", c_int, [c_int, POINTER(BpfTestRunOpts)], NEG_ERRNO),
    ("bpf_prog_get_fd_by_id", c_int, [c_uint32], NEG_ERRNO),
    ("bpf_prog_attach", c_int, [c_int, c_int, c_int, c_uint32], NEG_ERRNO),
    ("bpf_prog_query", c_int, [c_int, c_int, c_uint32, _u32p, _u32p, _u32p], NEG_ERRNO),
    ("bpf_enable_stats", c_int, [c_int], NEG_ERRNO),
    ("bpf_obj_get_info_by_fd", c_int, [c_int, c_void_p, _u32p], NEG_ERRNO),
    ("bpf_obj_get", c_int, [c_char_p], NEG_ERRNO),
    # BTF
    ("btf__type_cnt", c_uint32, [BtfPtr], UNCHECKED),
    ("btf__type_by_id", POINTER(BtfTypeRecord), [BtfPtr, c_uint32], NULL_ERRNO),
    ("btf__name_by_offset", c_char_p, [BtfPtr, c_uint32], UNCHECKED),
    ("btf__find_by_name_kind", c_int, [BtfPtr, c_char_p, c_uint32], NEG_ERRNO),
    ("btf__resolve_type", c_int, [BtfPtr, c_uint32], NEG_ERRNO),
    ("btf__resolve_size", c_int64, [BtfPtr, c_uint32], NEG_ERRNO),
    # bpf_link
    ("bpf_link__open", BpfLinkPtr, [c_char_p], NULL_ERRNO),
    ("bpf_link__fd", c_int, [BpfLinkPtr], NEG_ERRNO),
    ("bpf_link__pin", c_int, [BpfLinkPtr, c_char_p], NEG_ERRNO),
    ("bpf_link__unpin", c_int, [BpfLinkPtr], NEG_ERRNO),
    ("bpf_link__pin_path", c_char_p, [BpfLinkPtr], UNCHECKED),
    ("bpf_link__detach", c_int, [BpfLinkPtr], NEG_ERRNO),
    ("bpf_link__update_program", c_int, [BpfLinkPtr, BpfProgramPtr], NEG_ERRNO),
    ("bpf_link__destroy", c_int, [BpfLinkPtr], NEG_ERRNO),
    ("bpf_link_get_fd_by_id", c_int, [c_uint32], NEG_ERRNO),
    ("bpf_link_get_next_id", c_int, [c_uint32, _u32p], NEG_ERRNO),
    ("bpf_link_detach", c_int, [c_int], NEG_ERRNO),
    # ring buffer
    (
        "ring_buffer__new",
        RingBufferPtr,
        [c_int, RingBufferSampleFn, c_void_p, c_void_p],
        NULL_ERRNO,
    ),
    ("ring_buffer__poll", c_int, [RingBufferPtr, c_int], NEG_ERRNO),
    ("ring_buffer__consume", c_int, [RingBufferPtr], NEG_ERRNO),
    ("ring_buffer__epoll_fd", c_int, [RingBufferPtr], NEG_ERRNO),
    ("ring_buffer__free", None, [RingBufferPtr], UNCHECKED),
]

#: libc functions, same shape; their results are checked by the callers (errno is set, -1 returned).
LIBC_FUNCTIONS: list[tuple[str, object, list, str]] = [
    ("vsnprintf", c_int, [c_void_p, c_size_t, c_void_p, c_void_p], UNCHECKED),
    ("mount", c_int, [c_char_p, c_char_p, c_char_p, c_ulong, c_void_p], UNCHECKED),
]


class _Bindings:
    """The bound functions of one library as attributes; loads it on first use.

    Only names in the table exist: anything else is an AttributeError, so no
    untyped call can slip through.
    """

    def __init__(self, soname: str | None, table, install_hint: str):
        self._soname = soname
        self._table = table
        self._install_hint = install_hint
        self._lock = threading.Lock()
        self._cdll: ctypes.CDLL | None = None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(entry[0] for entry in self._table)

    def _load(self) -> None:
        with self._lock:
            if self._cdll is not None:
                return
            try:
                cdll = ctypes.CDLL(self._soname, use_errno=True)
            except OSError as exc:
                raise EnvironmentProblem(
                    f"cannot load {self._soname}: {exc}. {self._install_hint}"
                ) from exc
            missing = []
            for name, restype, argtypes, check in self._table:
                try:
                    func = cdll[name]  # a fresh function object per name: nobody else shares it
                except AttributeError:
                    missing.append(name)
                    continue
                func.restype = restype
                func.argtypes = argtypes
                checker = _CHECKS[check]
                if checker is not None:
                    func.errcheck = checker
                self.__dict__[name] = func
            if missing:
                raise EnvironmentProblem(
                    f"{self._soname} lacks {', '.join(missing)}; ebmesh needs libbpf 1.1 or newer. "
                    f"{self._install_hint}"
                )
            self._cdll = cdll
            self._after_load()

    def _after_load(self) -> None:
        pass

    def __getattr__(self, name: str):
        # Only reached for names not yet set on the instance.
        if name.startswith("_") or name not in self.names:
            raise AttributeError(f"{name!r} is not in the ebmesh binding table of {self._soname}")
        self._load()
        return self.__dict__[name]


class _LibbpfBindings(_Bindings):
    def _after_load(self) -> None:
        # Route libbpf's printing into our per-thread buffer, once per process.
        self.__dict__["libbpf_set_print"](_PRINT_CALLBACK)


_libc_path = ctypes.util.find_library("c") or "libc.so.6"
libc = _Bindings(_libc_path, LIBC_FUNCTIONS, "ebmesh needs the GNU C library.")
lib = _LibbpfBindings(
    LIBBPF_SONAME,
    LIBBPF_FUNCTIONS,
    "Install it with `apt-get install libbpf1` (Debian 12 ships 1.1), or run `make setup`.",
)

# --- libbpf's print callback --------------------------------------------------

# Size of va_list, so the callback can copy it (what va_copy does) and call
# vsnprintf twice: once to measure, once to format. Unknown machines get one
# call into a fixed buffer.
_VA_LIST_SIZE = {"x86_64": 24, "amd64": 24, "aarch64": 32, "arm64": 32}.get(
    platform.machine().lower()
)
_FALLBACK_BUFFER = 1 << 20


def _vformat(fmt: int, ap: int) -> str:
    vsnprintf = libc.vsnprintf
    if _VA_LIST_SIZE is None:
        buf = ctypes.create_string_buffer(_FALLBACK_BUFFER)
        n = vsnprintf(buf, _FALLBACK_BUFFER, fmt, ap)
        return buf.value.decode(errors="replace") if n >= 0 else ""
    ap_copy = (c_char * _VA_LIST_SIZE)()
    ctypes.memmove(ap_copy, ap, _VA_LIST_SIZE)
    n = vsnprintf(None, 0, fmt, ap_copy)
    if n < 0:
        return ""
    buf = ctypes.create_string_buffer(n + 1)
    vsnprintf(buf, n + 1, fmt, ap)
    return buf.raw[:n].decode(errors="replace")


def _on_libbpf_print(level: int, fmt: int, ap: int) -> int:
    try:
        if level >= LIBBPF_DEBUG:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s", _vformat(fmt, ap).rstrip("\n"))
            return 0
        _thread_log.entries.append((level, _vformat(fmt, ap)))
    except BaseException:  # noqa: BLE001 - an exception must never unwind into C
        pass
    return 0


# Module-level: the callback must outlive every libbpf call.
_PRINT_CALLBACK = LibbpfPrintFn(_on_libbpf_print)


def load() -> None:
    """Load libbpf.so.1 now (it is otherwise loaded on first use); raises EnvironmentProblem."""
    lib._load()


def libbpf_version() -> tuple[int, int]:
    """(major, minor) of the libbpf.so.1 in use; raises EnvironmentProblem without one."""
    return lib.libbpf_major_version(), lib.libbpf_minor_version()
