"""Taking over segments no live process owns: a segment whose flock can be taken belongs to
a process that is gone, and exactly one pool on the same directory adopts it (at start,
then every RESCAN_S). Entries that cannot be trusted are skipped, counted, moved aside when
possible, and said once."""
import contextlib
import fcntl
import os
import stat
import time

from logpool.engine.spool.segments import (O_FILE, count_records, owner_ok, read_header,
                                           unlink)

RESCAN_S = 1.0  # a running writer looks for orphaned segments this often
STALE_TMP_S = 60.0  # an unlocked temporary segment this old was left by a dead process


def adopt(spool, should_stop=None, lock=None):
    """Take over the orphaned segments of spool's directory (see Spool.adopt). lock, when
    given, is held only to change the list of segments: reading them (about 2 s per GiB)
    leaves the spool to appends meanwhile (the spiller's: its own segments are locked, never
    adopted, and newer than anything adopted)."""
    lock = lock or contextlib.nullcontext()
    msgs = size = 0
    try:
        names = os.listdir(spool.dfd)
    except OSError as exc:
        spool.report("spool unreadable", f"{spool.dir}: {exc.strerror or exc} (uid "
                     f"{os.geteuid()})")
        return 0, 0
    with lock:
        owned = {s.name for s in spool.segments}
    for name in [n for n in sorted(names) if n.startswith(".") and n.endswith(".seg.new")]:
        _remove_stale_tmp(spool, name)
    candidates = [n for n in sorted(names) if n.endswith(".seg") and n not in owned
                  and n not in spool.skipped]
    # Appends meanwhile keep the disk bound: what is still to be read counts as on disk.
    sizes = {name: _size_of(spool, name) for name in candidates}
    with lock:
        spool.reserved = sum(sizes.values())
    try:
        for name in candidates:
            if should_stop is not None and should_stop():
                break
            try:
                segment = _adopt_one(spool, name)
            except OSError as exc:
                skip(spool, name, f"{exc.strerror or exc} (uid {os.geteuid()})", move=True)
                segment = None
            with lock:
                spool.reserved -= sizes[name]
                if segment is not None:
                    msgs, size = msgs + segment.msgs, size + segment.bytes
                    spool.segments.append(segment)
                    spool.segments.sort(key=lambda s: s.seq)
    finally:
        with lock:
            spool.reserved = 0
    return msgs, size


def _size_of(spool, name):
    try:
        return os.stat(name, dir_fd=spool.dfd, follow_symlinks=False).st_size
    except OSError:
        return 0


def _adopt_one(spool, name):
    """The orphaned segment `name`, locked and scanned; None when a live process owns it, it
    is gone, or it was skipped."""
    fd = os.open(name, os.O_RDWR | O_FILE, dir_fd=spool.dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            skip(spool, name, "not a regular file", move=True)
            return None
        if not owner_ok(st):
            skip(spool, name, f"owned by uid {st.st_uid}, not by uid {os.geteuid()} or root",
                 move=False)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a live process owns it
        try:  # finished and unlinked (or replaced) before we locked it
            if os.stat(name, dir_fd=spool.dfd, follow_symlinks=False).st_ino != st.st_ino:
                return None
        except FileNotFoundError:
            return None
        segment = read_header(spool.dir, name, fd)
        segment.done = _read_done(spool, name, segment)
        if segment.possible_dups and segment.done > segment.start:
            segment.possible_dups = max(0, segment.possible_dups - count_records(
                fd, segment.start, segment.done))
        if segment.url is not None and spool.url is not None and segment.url != spool.url \
                and segment.url not in spool.other_urls:
            spool.other_urls.add(segment.url)
            spool.emit(f"spool: adopting {name}, spooled for {segment.url}, into this "
                       f"sink's {spool.url}: a backlog follows the sink's name (said once "
                       f"per URL)")
        segment.msgs, segment.bytes, segment.end, torn = spool.scan(fd, segment.done)
        spool.corrupt_found += torn
        fd = None  # the segment owns it now
        if segment.done >= segment.end:
            unlink(spool.dfd, segment)  # nothing left to deliver in it
            os.close(segment.fd)
            return None
        return segment
    finally:
        if fd is not None:
            os.close(fd)


def _read_done(spool, name, segment):
    """Where delivery stopped in this segment; a progress file that cannot be trusted is
    moved aside (the segment is then sent again from its start: at least once)."""
    try:
        fd = os.open(name + ".done", os.O_RDONLY | O_FILE, dir_fd=spool.dfd)
    except FileNotFoundError:
        return segment.start
    except OSError as exc:
        skip(spool, name + ".done", f"{exc.strerror or exc} (uid {os.geteuid()})", move=True,
             resend=True)
        return segment.start
    try:
        st = os.fstat(fd)
        text = os.read(fd, 64) if stat.S_ISREG(st.st_mode) and owner_ok(st) else b"?"
    finally:
        os.close(fd)
    try:
        done = int(text.strip() or segment.start)
    except ValueError:
        done = -1
    if not segment.start <= done <= os.fstat(segment.fd).st_size:
        skip(spool, name + ".done", "not a valid progress offset", move=True, resend=True)
        return segment.start
    return done


def skip(spool, name, why, move, resend=False):
    """An entry we cannot use: counted once, logged once, moved aside when asked."""
    spool.skipped.add(name)
    spool.bad_found += 1
    where = os.path.join(spool.dir, name)
    text = f"spool entry skipped: {where}: {why}; counted in spool_bad_entries"
    if move:
        try:
            os.rename(name, name + ".bad", src_dir_fd=spool.dfd, dst_dir_fd=spool.dfd)
            text += f", moved aside to {where}.bad"
        except OSError:
            pass
    if resend:
        text += "; its segment is sent again from its start"
    spool.emit(text)


def _remove_stale_tmp(spool, name):
    try:
        fd = os.open(name, os.O_RDWR | O_FILE, dir_fd=spool.dfd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if (stat.S_ISREG(st.st_mode) and owner_ok(st)
                and time.time() - st.st_mtime > STALE_TMP_S):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(name, dir_fd=spool.dfd)
    except OSError:
        pass
    finally:
        os.close(fd)
