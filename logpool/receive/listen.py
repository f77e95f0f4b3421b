"""Claiming an address: the listening (or datagram) socket, the URL a writer would use to
reach it, and the server's TLS context."""
import errno
import os
import socket
import ssl
import stat

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not in Python's socket


def _claim_unix_path(path, kind):
    """Remove a stale socket left at path by a receiver that died; refuse anything else (a
    regular file, a directory, a socket something still listens on)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: stale
        return
    except OSError:
        if kind == socket.SOCK_DGRAM:
            os.unlink(path)
            return
        raise
    else:
        if kind == socket.SOCK_STREAM:
            raise OSError(errno.EADDRINUSE, f"{path}: another process is listening there")
        os.unlink(path)  # a datagram socket "connects" to a stale path too: nothing to ask
    finally:
        probe.close()


def listen_socket(listen, mode):
    """(scheme, bound non-blocking socket, HTTP path or None) for unix:, unixgram:/path or
    tcp://, tls://, udp://, relp://, relp+tls://host:port, http(s)://host:port/path (port 0
    picks a free one); stream sockets are listening. A unix socket gets `mode`."""
    from logpool import transports
    from logpool.config import parse_url
    scheme, address = parse_url("--listen", listen, allow_port_zero=True)
    transport = transports.for_scheme(scheme)
    kind = transport.SOCKET_TYPE
    path = None
    if transport.ADDRESS[scheme].name == "http":
        host, port, path = address
        address = (host, port)
    if transport.ADDRESS[scheme].name == "path":
        _claim_unix_path(address, kind)
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.bind(address)
            os.chmod(address, mode)
        except OSError:
            sock.close()
            raise
    else:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    if kind == socket.SOCK_STREAM:
        sock.listen(512)
    else:
        # Bursts of datagrams must not overflow the queue while the receiver looks away.
        grow_receive_buffer(sock, 8 << 20)
    sock.setblocking(False)
    return scheme, sock, path


def grow_receive_buffer(sock, size):
    """Past net.core.rmem_max when privileged (CAP_NET_ADMIN), else up to it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def address_of(scheme, sock, path=None):
    """The URL a writer would use to reach this listener."""
    if sock.family == socket.AF_UNIX:
        return f"{scheme}:" + sock.getsockname()
    host, port = sock.getsockname()[:2]
    url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    return url + (path or "")


def server_tls_context(cert_file, key_file=None, client_ca_file=None):
    """TLS for a listener; with client_ca_file, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
