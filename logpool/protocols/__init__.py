"""Wire codecs shared by a transport (the client side) and `logpool receive` (the collector
side): one module per protocol holds its framing, parsing and limits."""
