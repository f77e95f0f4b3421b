"""Reading the spool back, oldest first: batches of whole records, a torn or corrupt record
ending its segment's readable part (counted, never delivered as garbage), records re-framed
when the sink's framing changed or dropped when they no longer fit, and the progress of each
segment kept on disk (<segment>.done) so that a process dying mid-replay resends at most one
batch."""
import os
import zlib

from logpool.engine.spool.segments import O_FILE, RECORD

BATCH_BYTES = 1 << 20  # read back this much at a time
FRAMING_RAW, FRAMING_NEWLINE, FRAMING_OCTETS = 0, 1, 2  # enum logpool__framing


def next_batch(spool):
    """(frames bytes, ends, count) of the oldest records not delivered yet, or None (see
    Spool.next_batch)."""
    while spool.segments:
        segment = next((s for s in spool.segments if s.done < s.end), None)
        for finished in [s for s in spool.segments if s.done >= s.end and s is not segment]:
            spool.release(finished)
        if segment is None:
            return None
        frames, pos, disk_bytes = _read_records(spool, segment)
        if pos == 0:  # nothing readable left in it (a header cut short at its end)
            if segment.done < segment.end:
                _cut(spool, segment, 0, 0, 0)
            spool.release(segment)
            continue
        spool.batch = (segment, segment.done + pos, len(frames), disk_bytes)
        spool.batch_possible_dups = min(segment.possible_dups, len(frames))
        lengths = [len(f) for f in frames]
        frames, kept = _fit(spool, segment, frames)
        spool.batch_records = (lengths, kept)
        if not frames:  # every record of this batch dropped: on to the next ones
            batch_done(spool)
            continue
        ends, end = [], 0
        for frame in frames:
            end += len(frame)
            ends.append(end)
        return b"".join(frames), ends, len(frames)
    return None


def _read_records(spool, segment):
    """Up to BATCH_BYTES of whole records from segment.done: (frames, bytes read, frame
    bytes)."""
    data = os.pread(segment.fd, min(segment.end - segment.done, BATCH_BYTES + 65536),
                    segment.done)
    frames, pos, total = [], 0, 0
    while pos + RECORD.size <= len(data) and total < BATCH_BYTES:
        length, crc = RECORD.unpack_from(data, pos)
        frame = data[pos + RECORD.size:pos + RECORD.size + length]
        if len(frame) < length and not frames:  # one record larger than the read
            frame = os.pread(segment.fd, length, segment.done + pos + RECORD.size)
        if len(frame) < length:
            if segment.done + pos + RECORD.size + length <= segment.end:
                break  # the rest of this record is beyond what was read: next batch
            frame = b""  # torn: the record runs past the end of the segment
        if len(frame) != length or zlib.crc32(frame) != crc:
            _cut(spool, segment, pos, len(frames), total)
            break
        frames.append(frame)
        total += length
        pos += RECORD.size + length
    return frames, pos, total


def _cut(spool, segment, pos, readable_msgs, readable_bytes):
    """A corrupt record at segment.done + pos: what follows cannot be trusted."""
    spool.corrupt_found += 1
    segment.end = segment.done + pos
    lost_msgs = max(0, segment.msgs - readable_msgs)
    lost_bytes = max(0, segment.bytes - readable_bytes)
    spool.lost[0] += lost_msgs
    spool.lost[1] += lost_bytes
    segment.msgs -= lost_msgs
    segment.bytes -= lost_bytes


def _fit(spool, segment, frames):
    """(frames as the sink frames them now, the index of each one's record): re-framed when
    the segment was written with another framing, dropped (counted in spool.lost) when
    larger than max_message_size."""
    framing = spool.framing if segment.framing is None else segment.framing
    limit = spool.max_message_size
    if framing == spool.framing and (limit is None or (
            segment.max_message_size and segment.max_message_size <= limit)):
        return frames, range(len(frames))  # written the sink's way: as they are
    fitted, kept = [], []
    for i, frame in enumerate(frames):
        new = frame if framing == spool.framing else _frame(_unframe(frame, framing),
                                                           spool.framing)
        if limit is not None and len(new) > limit:
            spool.lost[0] += 1
            spool.lost[1] += len(frame)
            continue
        spool.lost[2] += len(new) - len(frame)
        fitted.append(new)
        kept.append(i)
    return fitted, kept


def batch_partial(spool, sent):
    """Of the last batch only the first `sent` frames were delivered (see
    Spool.batch_partial)."""
    if spool.batch is None or sent <= 0:
        return
    segment = spool.batch[0]
    lengths, kept = spool.batch_records
    upto = kept[min(sent, len(kept)) - 1] + 1  # records up to the last one delivered
    spool.batch = (segment, segment.done + sum(RECORD.size + n for n in lengths[:upto]),
                   upto, sum(lengths[:upto]))
    batch_done(spool)


def batch_done(spool):
    """The last batch is delivered (or was dropped whole): remember it on disk; remove a
    finished segment."""
    if spool.batch is None:
        return
    segment, offset, records, disk_bytes = spool.batch
    spool.batch = None
    segment.done = offset
    segment.msgs = max(0, segment.msgs - records)
    segment.bytes = max(0, segment.bytes - disk_bytes)
    segment.possible_dups = max(0, segment.possible_dups - records)
    if segment.done >= segment.end:
        spool.release(segment)  # the one appended to as well: the disk bound
        return
    tmp = f"{segment.name}.done.tmp"
    try:
        try:
            os.unlink(tmp, dir_fd=spool.dfd)  # whatever is there, a symlink included
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_FILE, 0o600,
                     dir_fd=spool.dfd)
        try:
            os.write(fd, str(offset).encode())
        finally:
            os.close(fd)
        os.rename(tmp, segment.name + ".done", src_dir_fd=spool.dfd, dst_dir_fd=spool.dfd)
    except OSError as exc:  # a full disk: delivery goes on; a restart may resend more
        spool.report("spool progress not saved", f"{segment.path}.done: "
                     f"{exc.strerror or exc} (uid {os.geteuid()}); a process that takes "
                     f"this segment over later resends from the last saved position")


def _unframe(frame, framing):
    """The message a frame was made from (newline framing: without its last newline)."""
    if framing == FRAMING_NEWLINE:
        return frame[:-1] if frame.endswith(b"\n") else frame
    if framing == FRAMING_OCTETS:
        space = frame.find(b" ", 0, 12)
        if space > 0 and frame[:space].isdigit() and int(frame[:space]) == len(frame) - space - 1:
            return frame[space + 1:]
    return frame


def _frame(msg, framing):
    """The frame log_cdata makes of msg."""
    if framing == FRAMING_NEWLINE:
        return msg if msg.endswith(b"\n") else msg + b"\n"
    if framing == FRAMING_OCTETS:
        return b"%d %s" % (len(msg), msg)
    return msg
