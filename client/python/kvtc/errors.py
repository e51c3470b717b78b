"""The exceptions of the binding: one class carrying libkvtc's KVTC_E* code.

A C call that returns a negative code raises KvtcError(code, message); the
message is kvtc_last_error() of the connection (the daemon's reason, or the
local one) when there is one, else kvtc_strerror(code). A miss (KVTC_ENOENT)
raises NotFound, which is both a KvtcError and a KeyError, so dict-style
code (`except KeyError`) and kvtc-aware code both catch it.
"""

# enum kvtc_error (include/kvtc_errors.h); codes are stable.
KVTC_OK, KVTC_EINVAL, KVTC_ENOMEM, KVTC_EIO, KVTC_ECORRUPT = 0, -1, -2, -3, -4
KVTC_EVERSION, KVTC_EPROFILE, KVTC_ENOSPC, KVTC_ENOTSUP, KVTC_ENOENT = -5, -6, -7, -8, -9
KVTC_ETIMEDOUT, KVTC_ECONN, KVTC_EFULL, KVTC_EPERM, KVTC_EBUSY = -10, -11, -12, -13, -14
KVTC_EPROTO, KVTC_ENUMERICAL, KVTC_ECANCELED, KVTC_EEXIST = -15, -16, -17, -18
CODES = {v: k for k, v in sorted(globals().items()) if k.startswith("KVTC_E") or k == "KVTC_OK"}


class KvtcError(Exception):
    """A libkvtc failure. code: the negative KVTC_E* value; name: its name
    ("KVTC_EFULL"); message: why (the daemon's or libkvtc's words)."""

    def __init__(self, code, message="", func=None):
        self.code = int(code)
        self.name = CODES.get(self.code, "KVTC_E?%d" % self.code)
        self.message = message or ""
        self.func = func
        super().__init__(self.code, self.message)

    def __str__(self):
        where = "%s: " % self.func if self.func else ""
        why = ": %s" % self.message if self.message else ""
        return "%s%s (%d)%s" % (where, self.name, self.code, why)


class NotFound(KvtcError, KeyError):
    """KVTC_ENOENT: the key is not stored (Client.get raises it on a miss)."""

    # KeyError.__str__ would print repr(args); keep KvtcError's text.
    __str__ = KvtcError.__str__


def error(code, message="", func=None):
    """The exception for code: NotFound for KVTC_ENOENT, else KvtcError."""
    cls = NotFound if code == KVTC_ENOENT else KvtcError
    return cls(code, message, func)
