"""One exception per C code; each also subclasses the builtin it resembles."""

OK = 0
EINVAL = -1
ENOSINK = -2
ETOOBIG = -3
EFULL = -4
ECLOSED = -5
ECONFIG = -6
ERUNTIME = -7
ETIMEDOUT = -8


class LogpoolError(Exception):
    """Base class; `code` is the negative LOGPOOL_E* value."""
    code = None

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(LogpoolError, ValueError):
    code = EINVAL


class NoSuchSink(LogpoolError, LookupError):
    code = ENOSINK


class MessageTooBig(LogpoolError, ValueError):
    code = ETOOBIG


class BufferFull(LogpoolError):
    code = EFULL


class PoolClosed(LogpoolError, RuntimeError):
    code = ECLOSED


class ConfigError(LogpoolError, ValueError):
    code = ECONFIG


class RuntimeUnavailable(LogpoolError, RuntimeError):
    code = ERUNTIME


class Timeout(LogpoolError, TimeoutError):
    code = ETIMEDOUT


BY_CODE = {cls.code: cls for cls in (
    InvalidArgument, NoSuchSink, MessageTooBig, BufferFull, PoolClosed, ConfigError,
    RuntimeUnavailable, Timeout)}


def from_code(code, message):
    return BY_CODE.get(code, LogpoolError)(message, code)
