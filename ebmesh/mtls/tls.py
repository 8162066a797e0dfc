"""OpenSSL contexts for the handshake: TLS 1.3 only, both sides verify the other's chain.

OpenSSL checks what it knows how to (the chain up to bundle.pem, every
signature, validity dates, the TLS purposes, RFC 5280 strictness); the SPIFFE
ID and revocation are checked by the handshake once OpenSSL is done.
"""

from __future__ import annotations

import contextlib
import os
import ssl

from ebmesh.mtls.store import Svid


def _base(purpose: int, bundle_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cadata=bundle_pem)
    return context


def _load_svid(context: ssl.SSLContext, svid: Svid) -> None:
    """Give OpenSSL the very bytes the store validated, not the files again.

    `load_cert_chain` reads only paths; re-reading svid/NAME.pem could find a
    file replaced since it was validated (a rotation in progress). Memory files
    (memfd) hold the validated bytes, key included, and vanish when closed.
    """
    with contextlib.ExitStack() as stack:
        paths = []
        for data in (svid.chain_pem, svid.key_pem):
            descriptor = os.memfd_create("ebmesh-svid", os.MFD_CLOEXEC)
            stack.callback(os.close, descriptor)
            os.write(descriptor, data)
            paths.append(f"/proc/self/fd/{descriptor}")
        context.load_cert_chain(*paths)


def client_context(svid: Svid, bundle_pem: str) -> ssl.SSLContext:
    """Presents `svid` as client certificate."""
    context = _base(ssl.PROTOCOL_TLS_CLIENT, bundle_pem)
    context.check_hostname = False  # the peer's SPIFFE ID is checked instead, exactly
    _load_svid(context, svid)
    return context


def server_context(svid: Svid | None, bundle_pem: str) -> ssl.SSLContext:
    """Presents `svid` to clients and requires theirs. None: the context a listener starts
    every connection with, before the server name picks the workload's."""
    context = _base(ssl.PROTOCOL_TLS_SERVER, bundle_pem)
    context.num_tickets = 0  # no resumption: every handshake presents and checks certificates
    if svid is not None:
        _load_svid(context, svid)
    return context
