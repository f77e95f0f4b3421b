"""Transports, chosen by URL scheme. A new transport is one module implementing
logpool.transports.base.Transport plus one line in TRANSPORTS; its config keys are declared
on its class (OPTIONS), and config validation asks this registry for them."""
from logpool.transports.datagram import DatagramTransport
from logpool.transports.forward import ForwardTlsTransport, ForwardTransport
from logpool.transports.http import HttpsTransport, HttpTransport
from logpool.transports.kafka import KafkaTransport
from logpool.transports.relp import RelpTlsTransport, RelpTransport
from logpool.transports.stream import StreamTransport
from logpool.transports.tls import TlsTransport

TRANSPORTS = (StreamTransport, TlsTransport, DatagramTransport, RelpTransport, RelpTlsTransport,
              HttpTransport, HttpsTransport, KafkaTransport, ForwardTransport,
              ForwardTlsTransport)
BY_SCHEME = {scheme: cls for cls in TRANSPORTS for scheme in cls.SCHEMES}


def for_scheme(scheme):
    """The transport class of a URL scheme, or None."""
    return BY_SCHEME.get(scheme)


def all_options():
    """Every transport-specific key (valid at the top level: applies to the sinks whose
    transport takes it)."""
    return {key: default for cls in TRANSPORTS for key, default in cls.OPTIONS.items()}
