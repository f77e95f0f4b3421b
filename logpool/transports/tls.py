"""The TLS block of every socket transport (tls://, relp+tls://, https://): TLS >= 1.2 with
the standard library's ssl, verification on by default, SNI, client certificates, session
resumption across reconnects, close_notify. The Connection (connection.py) runs it on its
sink's TLS schemes; this module holds the configuration and the handshake."""
import errno
import select
import time

from logpool.errors import ConfigError
from logpool.record import Record
from logpool.transports.contract import HandshakeError, wait_io

# In TLS 1.3 the server checks a client certificate after the client's handshake is done,
# and sends session tickets then: wait this long for that first record, so that a refusal is
# a handshake failure (not a batch written into a dead connection) and the ticket is kept.
TLS13_FIRST_RECORD_S = 0.25


class TlsConfig(Record):
    __slots__ = ("ca_file",
                 "server_name",  # None: each collector's host
                 "cert_file", "key_file", "verify",
                 "context")  # ssl.SSLContext, built (and so checked) when the config is parsed


def client_context(where, ca_file=None, cert_file=None, key_file=None, verify=True):
    """A client SSLContext: the system CA bundle (or ca_file), hostname checking, TLS >= 1.2,
    optional client certificate. Files are read now so that a bad path is a config error."""
    import ssl
    if key_file and not cert_file:
        raise ConfigError(f"{where}.key_file: needs cert_file too")
    if ca_file and not verify:
        raise ConfigError(f"{where}.ca_file: given with verify = false, which ignores it")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.ca_file: cannot load {ca_file}: {exc}") from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}.cert_file: cannot load {cert_file}"
                              f"{' with ' + key_file if key_file else ''}: {exc}") from None
    return ctx


def tls_config(where, values):
    """The TLS block of a sink, from its validated keys (schema.TLS_OPTIONS)."""
    ctx = client_context(where, values["ca_file"], values["cert_file"], values["key_file"],
                         values["verify"])
    return TlsConfig(ca_file=values["ca_file"], server_name=values["server_name"],
                     cert_file=values["cert_file"], key_file=values["key_file"],
                     verify=values["verify"], context=ctx)


def handshake(sock, sink, tls, server_name, session, deadline, should_stop):
    import ssl
    ssock = tls.context.wrap_socket(sock, server_hostname=server_name,
                                    do_handshake_on_connect=False, session=session)
    what = f"TLS handshake (connect_timeout_ms {sink.connect_timeout_ms})"
    try:
        while True:
            try:
                ssock.do_handshake()
                break
            except ssl.SSLWantReadError:
                wait_io(ssock, select.POLLIN, deadline, should_stop, what)
            except ssl.SSLWantWriteError:
                wait_io(ssock, select.POLLOUT, deadline, should_stop, what)
        if ssock.version() == "TLSv1.3":
            first = min(deadline, time.monotonic() + TLS13_FIRST_RECORD_S)
            try:
                while (data := read_nonblocking(ssock)) is None and not (
                        ssock.session is not None and ssock.session.has_ticket):
                    wait_io(ssock, select.POLLIN, first, should_stop, what)
            except TimeoutError:
                data = None  # a server that sends no tickets: nothing to wait for
            if data == b"":
                raise ConnectionResetError(errno.ECONNRESET, "closed after the handshake")
        return ssock
    except ssl.SSLError as exc:
        ssock.close()
        raise HandshakeError(errno.EPROTO, describe_tls_error(exc, tls, server_name)) from None
    except ConnectionError as exc:
        ssock.close()
        raise HandshakeError(exc.errno, f"TLS handshake failed: the server closed the "
                             f"connection ({exc.strerror or exc}); does it speak TLS, and "
                             f"does it want a client certificate (cert_file)?") from None
    except BaseException:
        ssock.close()
        raise


def read_nonblocking(ssock):
    """Process what the server sent (tickets, alerts). None: nothing yet; b"": closed."""
    import ssl
    try:
        return ssock.recv(4096)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None


def describe_tls_error(exc, tls, server_name):
    import ssl
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        where = f"CA file {tls.ca_file}" if tls.ca_file else "the system CA bundle"
        return (f"TLS handshake failed: server certificate refused: {why} (server_name "
                f"{server_name!r}, trusted CAs from {where})")
    reason = (exc.reason or str(exc)).replace("_", " ").lower()
    hint = ""
    if "wrong version number" in reason or "record layer failure" in reason:
        hint = " (is the server speaking TLS on this port?)"
    elif "certificate required" in reason:
        hint = " (the server wants a client certificate: set cert_file and key_file)"
    elif "alert" in reason and ("certificate" in reason or "unknown ca" in reason):
        hint = " (the server refused our client certificate: see cert_file, key_file)"
    return f"TLS handshake failed: {reason}{hint}"

