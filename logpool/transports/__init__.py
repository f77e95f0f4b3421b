"""Transports, chosen by URL scheme. A new transport is one module implementing
logpool.transports.base.Transport plus one line in TRANSPORTS: its schemes' address forms
(ADDRESS, logpool/transports/address.py), its config keys (OPTIONS, a tuple of
schema.Option; TLS_SCHEMES take the TLS block too) are declared on its class, and config
validation, the Lua option list and the configuration reference ask this registry."""
from logpool.transports.datagram import DatagramTransport
from logpool.transports.forward import ForwardTransport
from logpool.transports.http import HttpTransport
from logpool.transports.kafka import KafkaTransport
from logpool.transports.relp import RelpTransport
from logpool.transports.stream import StreamTransport

TRANSPORTS = (StreamTransport, DatagramTransport, RelpTransport, HttpTransport, KafkaTransport,
              ForwardTransport)
BY_SCHEME = {scheme: cls for cls in TRANSPORTS for scheme in cls.SCHEMES}


def for_scheme(scheme):
    """The transport class of a URL scheme, or None."""
    return BY_SCHEME.get(scheme)


def all_options():
    """Every transport-specific key (valid at the top level: applies to the sinks whose
    transport takes it), name -> schema.Option."""
    return {o.name: o for cls in TRANSPORTS for scheme in cls.SCHEMES
            for o in cls.options_for(scheme)}


def takers(key):
    """The URL schemes whose sinks take a transport key."""
    return [scheme for cls in TRANSPORTS for scheme in cls.SCHEMES
            if any(o.name == key for o in cls.options_for(scheme))]


def url_forms():
    """Every URL form a sink takes, from the transports' declarations, for error messages."""
    forms = [cls.ADDRESS[s].form.format(s=s) for cls in TRANSPORTS for s in cls.SCHEMES]
    return ", ".join(forms[:-1]) + " or " + forms[-1]
