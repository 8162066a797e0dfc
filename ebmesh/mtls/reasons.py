"""Why a pair was not authenticated: one code per cause, and the detail that goes with it."""

from __future__ import annotations

import enum
import ssl


class Reason(enum.Enum):
    """The cause of a failed authentication. Tests and operators match on these."""

    NO_SVID = "no-svid"  # a local workload has no SVID and there is no issuer to make one
    MALFORMED = "malformed"  # a PEM file that does not parse
    KEY_MISMATCH = "key-mismatch"  # the private key is not the certificate's
    NOT_AN_SVID = "not-an-svid"  # no URI SAN, several, not a SPIFFE ID, or a CA certificate
    WRONG_SPIFFE_ID = "wrong-spiffe-id"  # a valid SVID, but for another identity
    UNKNOWN_IDENTITY = "unknown-identity"  # a valid SVID of no workload in the policy
    UNKNOWN_CA = "unknown-ca"  # the chain does not lead to a CA of bundle.pem
    BAD_SIGNATURE = "bad-signature"  # a certificate's signature does not verify
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNTRUSTED = "untrusted"  # any other failure of chain verification (OpenSSL says which)
    REVOKED = "revoked"  # the certificate's fingerprint was revoked
    PEER_REFUSED = "peer-refused"  # the peer rejected our certificate or request
    UNKNOWN_DESTINATION = "unknown-destination"  # the listener hosts no such workload
    NOT_IN_POLICY = "not-in-policy"  # the listener's policy needs no mtls for this pair
    UNREACHABLE = "unreachable"  # no TCP connection to the peer's authenticator
    PROTOCOL = "protocol"  # the peer broke the exchange (timeout, garbage, closed early)


class AuthFailure(Exception):
    """A handshake or a check refused authentication, for `reason`."""

    def __init__(self, reason: Reason, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason.value}: {detail}")


# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) for the failures with a reason of
# their own; every other verification failure is UNTRUSTED with OpenSSL's text.
_VERIFY_CODES = {
    2: Reason.UNKNOWN_CA,  # unable to get issuer certificate
    7: Reason.BAD_SIGNATURE,  # certificate signature failure
    9: Reason.NOT_YET_VALID,
    10: Reason.EXPIRED,
    18: Reason.UNKNOWN_CA,  # self-signed leaf
    19: Reason.UNKNOWN_CA,  # self-signed certificate in chain
    20: Reason.UNKNOWN_CA,  # unable to get local issuer certificate
    21: Reason.UNKNOWN_CA,  # unable to verify the first certificate
}


def failure_from_ssl(error: ssl.SSLError, whose: str) -> AuthFailure:
    """What an OpenSSL error during a handshake means.

    `whose` names the certificate this side verified ("the listener's", "the
    client's"). A verification failure is this side's own finding; an alert is
    the peer's: it refused our certificate (in TLS 1.3 a client learns that only
    on its first read, after its handshake already returned).
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = _VERIFY_CODES.get(error.verify_code, Reason.UNTRUSTED)
        return AuthFailure(reason, f"{whose} certificate: {error.verify_message}")
    text = error.reason or str(error)
    if "UNRECOGNIZED_NAME" in text:
        return AuthFailure(Reason.UNKNOWN_DESTINATION, "the listener hosts no such workload")
    if text == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return AuthFailure(Reason.NOT_AN_SVID, f"{whose} side presented no certificate")
    if "ALERT" in text:
        alert = text.split("ALERT_", 1)[-1].lower().replace("_", " ")
        return AuthFailure(Reason.PEER_REFUSED, f"the peer refused our certificate: {alert}")
    return AuthFailure(Reason.PROTOCOL, f"TLS: {text}")
