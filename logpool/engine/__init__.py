"""The delivery engine: a writer per sink takes batches from the sink's C chain and delivers
them through a transport (logpool.transports), with batching, backoff, resend from the
first incomplete message and error reports. It knows no socket."""
