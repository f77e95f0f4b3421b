"""The C sides of transports that have one, bound to a sink: the only place besides the
Chain (logpool/transports/base.py) where transport work reaches the C library."""


class KafkaProducer:
    """A librdkafka producer driven in C (csrc/kafka.c). It hands over pending messages up
    to a window, serves delivery reports and releases finished messages from the head of
    the chain in order (the same fates as Chain.ack and Chain.reject, applied in C: one
    report per message would cost a Python call each)."""

    def __init__(self, ffi, lib, csink):
        self.ffi, self.lib, self.csink = ffi, lib, csink
        self.handle = None
        self.errbuf = ffi.new("char[]", 512)
        self.delivered = ffi.new("uint64_t *")

    def _error(self):
        return self.ffi.string(self.errbuf).decode(errors="replace")

    def open(self, librdkafka, properties, topic, key, window):
        """Returns None, or why librdkafka refused the producer."""
        ffi = self.ffi
        props = list(properties.items())
        keep = [ffi.new("char[]", k.encode()) for k, _ in props]
        keep += [ffi.new("char[]", v.encode()) for _, v in props]
        names = ffi.new("const char *[]", keep[:len(props)])
        values = ffi.new("const char *[]", keep[len(props):])
        ckey = ffi.NULL if key is None else key.encode()
        handle = self.lib.logpool__kafka_new(
            self.csink, librdkafka.encode(), names, values, len(props), topic.encode(), ckey,
            0 if key is None else len(ckey), window, self.errbuf, len(self.errbuf))
        if handle == ffi.NULL:
            return self._error()
        self.handle = handle
        return None

    @property
    def inflight(self):
        return 0 if self.handle is None else self.lib.logpool__kafka_inflight(self.handle)

    def destroy(self):
        """Free the producer; what it still held stays in the chain (resent or abandoned)."""
        if self.handle is not None:
            self.lib.logpool__sink_set_unacked(self.csink, 0)
            self.lib.logpool__kafka_destroy(self.handle)
            self.handle = None

    def metadata(self, timeout_ms):
        """None when the cluster answered for the topic, else why not."""
        if self.lib.logpool__kafka_metadata(self.handle, timeout_ms, self.errbuf,
                                            len(self.errbuf)) != 0:
            return self._error()
        return None

    def poll(self, timeout_ms):
        if self.handle is not None:
            self.lib.logpool__kafka_poll(self.handle, timeout_ms)

    def inject_fatal(self):
        self.lib.logpool__kafka_inject_fatal(self.handle)

    def step(self):
        """(progress, delivered, fatal error text or None): serve reports, release what they
        finished, hand over more."""
        progress = self.lib.logpool__kafka_write(self.handle, self.delivered, self.errbuf,
                                                 len(self.errbuf))
        return max(progress, 0), self.delivered[0], self._error() if progress < 0 else None

    def failures(self):
        """(name, text) of each kind of delivery failure seen since the last call."""
        ffi, lib = self.ffi, self.lib
        while (err := lib.logpool__kafka_take_failure(self.handle)) != 0:
            yield (ffi.string(lib.logpool__kafka_error_name(err)).decode(),
                   ffi.string(lib.logpool__kafka_error_text(err)).decode(errors="replace"))

    def statistics(self):
        """librdkafka's latest statistics JSON text since the last call, or None."""
        stats = self.lib.logpool__kafka_take_statistics(self.handle)
        if stats == self.ffi.NULL:
            return None
        try:
            return self.ffi.string(stats)
        finally:
            self.lib.logpool__kafka_free_statistics(stats)


KINDS = {"kafka": KafkaProducer}
