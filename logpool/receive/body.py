"""An HTTP sink's request body -> its messages, bounded: the decoded size is capped (a
compression bomb is refused, not inflated), and the messages are the bytes the sender
wrote: NDJSON lines, or the elements of a JSON array cut out of the body as they are
(never parsed and re-serialised: 1.0e3 stays 1.0e3, duplicate keys stay, 1e400 stays)."""
import json
import zlib


MAX_GZIP_MEMBERS = 1000  # a sender gzips a body once; a few concatenated members are fine
GZIP_FEED = 1 << 16  # input given to zlib at a time: what it copies as unused_data is bounded


class BodyTooLarge(ValueError):
    """The body decodes to more than the limit."""


def _gunzip(body, limit):
    """gzip members one after another, walked by offset in slices of at most GZIP_FEED
    bytes: linear time (zlib copies the input it did not use, so feeding it the rest of the
    body at each member would be quadratic), and at most MAX_GZIP_MEMBERS members."""
    out, size, pos, members = [], 0, 0, 0
    view = memoryview(body)
    try:
        while pos < len(view):
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise ValueError(f"cannot decode the body: more than {MAX_GZIP_MEMBERS} "
                                 f"gzip members")
            d = zlib.decompressobj(47)  # 47: a gzip or zlib header
            while not d.eof:
                piece = view[pos:pos + GZIP_FEED]
                if not piece:
                    raise ValueError("cannot decode the body: a truncated gzip stream")
                chunk = d.decompress(piece, limit + 1 - size)
                size += len(chunk)
                out.append(chunk)
                if size > limit:  # also when max_length stopped it: nothing more is inflated
                    raise BodyTooLarge(f"the body decodes to more than {limit} bytes")
                pos += len(piece) - len(d.unused_data)
    except zlib.error as exc:
        raise ValueError(f"cannot decode the body: {exc}") from None
    finally:
        view.release()
    return b"".join(out)


def decompress(body, encoding, limit):
    """The body with its Content-Encoding undone, at most `limit` bytes (else BodyTooLarge);
    ValueError for an encoding this receiver does not know or a corrupt body."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return _gunzip(body, limit)
    if encoding == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ValueError("cannot decode the body: zstandard is not installed") from None
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
            out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise ValueError(f"cannot decode the body: {exc}") from None
        if len(out) > limit:
            raise BodyTooLarge(f"the body decodes to more than {limit} bytes")
        return out
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_SPACE = " \t\n\r"


def split_json_array(body):
    """The elements of a JSON array, each as the bytes it was sent as. ValueError when the
    body is not one JSON array (UTF-8)."""
    try:
        text = body.decode("utf-8")
        n, pos = len(text), 0
        while pos < n and text[pos] in _SPACE:
            pos += 1
        if pos == n or text[pos] != "[":
            raise ValueError("it does not start with '['")
        pos += 1
        out = []
        while True:
            while pos < n and text[pos] in _SPACE:
                pos += 1
            if not out and pos < n and text[pos] == "]":
                pos += 1
                break
            _, end = _DECODER.raw_decode(text, pos)
            out.append(text[pos:end].encode("utf-8"))
            pos = end
            while pos < n and text[pos] in _SPACE:
                pos += 1
            if pos < n and text[pos] == ",":
                pos += 1
                continue
            if pos < n and text[pos] == "]":
                pos += 1
                break
            raise ValueError("expected ',' or ']'")
        if text[pos:].strip(_SPACE):
            raise ValueError("data after the closing ']'")
        return out
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise ValueError(f"not a JSON array: {exc}") from None
    except RecursionError:  # the decoder's nesting bound (the interpreter's recursion limit)
        raise ValueError("not a JSON array: nested too deeply") from None


def decode_http_body(body, encoding, content_type, limit=16 << 20):
    """The messages of an HTTP sink's request body: gzip or zstd, then NDJSON or a JSON
    array. BodyTooLarge past `limit` decoded bytes; ValueError when it is none of these."""
    body = decompress(body, encoding, limit)
    if "application/json" in content_type.lower():
        return split_json_array(body)
    return [line for line in body.split(b"\n") if line]
