//! One write to the log per commit: a VFS in front of SQLite's own that gathers the pieces
//! SQLite writes to the write-ahead log and hands them to the file system together.
//!
//! SQLite writes each log frame as two `pwrite`s (its 24-byte header, then the page), so a
//! commit of 40 pages made 80 system calls, and the kernel's page-cache work ran three times
//! per frame because a 4,120-byte frame straddles two of its pages: 18% of the store writer's
//! CPU under HTTP → HTTP sink (docs/performance.md, "The log written in one piece"). Frames
//! are written one after the other, so this layer keeps consecutive writes to a `-wal` file in
//! one buffer and writes it out as one `pwrite` (of up to 128 KiB; a bigger commit takes a
//! few):
//!
//! - **before every sync** — durability is unchanged: a commit is synced by SQLite
//!   (`synchronous=FULL`), and what the sync covers is on the file first;
//! - **at the end of every commit frame** (its header names the database's size), so a commit
//!   is in the file before SQLite publishes it to readers, whatever the sync setting;
//! - before a read, a size query, a truncation or closing the file, when a write is not next
//!   to the last one, and at 1 MiB (a large transaction keeps no more than that in memory).
//!
//! A write that fails when the buffer goes out fails the call that sent it out (a sync or a
//! commit frame), so SQLite rolls the transaction back as it would for a failed write.
//! Every other file, and everything else SQLite asks of a file, goes to SQLite's own VFS.

use rusqlite::ffi;
use std::ffi::{c_int, c_void, CStr};
use std::sync::OnceLock;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub(super) const NAME: &CStr = c"switchyard-log";

/// The most a log file keeps unwritten.
const MAX_BUFFERED: usize = 1 << 20;
/// The most SQLite's unix VFS writes in one call: it masks a write's length with `0x1ffff`
/// (a write of exactly 128 KiB would write nothing and report a full disk).
const MOST_PER_WRITE: usize = 0x1ffff;
/// A log frame's header: page number, then the database's size in pages on a commit frame.
const FRAME_HEADER: usize = 24;
/// The log's own header, before the first frame.
const LOG_HEADER: i64 = 32;

/// Registers the VFS (once per process); false when SQLite has no default VFS to wrap.
pub(super) fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| unsafe {
        let real = ffi::sqlite3_vfs_find(std::ptr::null());
        if real.is_null() {
            return false;
        }
        // Every function but `xOpen` is SQLite's own: the unix VFS's ignore the VFS they are
        // called with, except `xFullPathname`, which reads `mxPathname` (copied).
        let mut vfs: ffi::sqlite3_vfs = *real;
        vfs.szOsFile = (std::mem::size_of::<File>() as c_int) + (*real).szOsFile;
        vfs.zName = NAME.as_ptr();
        vfs.pAppData = real.cast();
        vfs.pNext = std::ptr::null_mut();
        vfs.xOpen = Some(open);
        let vfs = Box::leak(Box::new(vfs));
        ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
    })
}

/// What SQLite allocates for a file of this VFS: this header, then the real VFS's file.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Set for a `-wal` file only.
    log: *mut Buffer,
}

/// Writes not yet handed to the file: `bytes` belong at `offset` onward.
struct Buffer {
    offset: i64,
    bytes: Vec<u8>,
    /// The last write was a commit frame's header; its page ends the commit.
    commit_page_next: bool,
}

unsafe fn real_methods(f: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    let file = f.cast::<File>();
    &*(*(*file).real).pMethods
}

unsafe fn real(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    (*f.cast::<File>()).real
}

unsafe fn buffer<'a>(f: *mut ffi::sqlite3_file) -> Option<&'a mut Buffer> {
    (*f.cast::<File>()).log.as_mut()
}

/// Writes out what `f` holds; SQLite's result code.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    match buffer(f) {
        Some(buf) => write_out(f, buf),
        None => ffi::SQLITE_OK,
    }
}

/// Writes `buf`, the buffer of `f`, to the real file.
unsafe fn write_out(f: *mut ffi::sqlite3_file, buf: &mut Buffer) -> c_int {
    buf.commit_page_next = false;
    if buf.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = real_methods(f).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut rc = ffi::SQLITE_OK;
    let mut at = buf.offset;
    for piece in buf.bytes.chunks(MOST_PER_WRITE) {
        rc = write(real(f), piece.as_ptr().cast(), piece.len() as c_int, at);
        if rc != ffi::SQLITE_OK {
            break;
        }
        at += piece.len() as i64;
    }
    // Whatever happened, these bytes are not written again: a failed write fails its
    // transaction, which SQLite rolls back.
    buf.bytes.clear();
    rc
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
    let file = f.cast::<File>();
    let real = f.cast::<u8>().add(std::mem::size_of::<File>()).cast();
    (*file).base.pMethods = std::ptr::null();
    (*file).real = real;
    (*file).log = std::ptr::null_mut();
    let Some(real_open) = (*real_vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // A file that failed to open is closed by whoever holds its methods.
        if !(*real).pMethods.is_null() {
            if let Some(close) = (*(*real).pMethods).xClose {
                close(real);
            }
        }
        return rc;
    }
    if flags & ffi::SQLITE_OPEN_WAL != 0 {
        (*file).log = Box::into_raw(Box::new(Buffer {
            offset: 0,
            bytes: Vec::new(),
            commit_page_next: false,
        }));
    }
    (*file).base.pMethods = methods((*(*real).pMethods).iVersion);
    rc
}

/// This layer's methods, of the real file's version (a version-1 file has no shared memory).
fn methods(version: c_int) -> *const ffi::sqlite3_io_methods {
    static METHODS: OnceLock<[ffi::sqlite3_io_methods; 3]> = OnceLock::new();
    let all = METHODS.get_or_init(|| {
        let v3 = ffi::sqlite3_io_methods {
            iVersion: 3,
            xClose: Some(close),
            xRead: Some(read),
            xWrite: Some(write),
            xTruncate: Some(truncate),
            xSync: Some(sync),
            xFileSize: Some(file_size),
            xLock: Some(lock),
            xUnlock: Some(unlock),
            xCheckReservedLock: Some(check_reserved_lock),
            xFileControl: Some(file_control),
            xSectorSize: Some(sector_size),
            xDeviceCharacteristics: Some(device_characteristics),
            xShmMap: Some(shm_map),
            xShmLock: Some(shm_lock),
            xShmBarrier: Some(shm_barrier),
            xShmUnmap: Some(shm_unmap),
            xFetch: Some(fetch),
            xUnfetch: Some(unfetch),
        };
        let v2 = ffi::sqlite3_io_methods {
            iVersion: 2,
            xFetch: None,
            xUnfetch: None,
            ..v3
        };
        let v1 = ffi::sqlite3_io_methods {
            iVersion: 1,
            xShmMap: None,
            xShmLock: None,
            xShmBarrier: None,
            xShmUnmap: None,
            ..v2
        };
        [v1, v2, v3]
    });
    &all[(version.clamp(1, 3) - 1) as usize]
}

unsafe extern "C" fn close(f: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(f);
    let file = f.cast::<File>();
    if !(*file).log.is_null() {
        drop(Box::from_raw((*file).log));
        (*file).log = std::ptr::null_mut();
    }
    let closed = match real_methods(f).xClose {
        Some(close) => close(real(f)),
        None => ffi::SQLITE_OK,
    };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(f: *mut ffi::sqlite3_file, out: *mut c_void, n: c_int, at: i64) -> c_int {
    if let Some(buf) = buffer(f) {
        let end = buf.offset + buf.bytes.len() as i64;
        if !buf.bytes.is_empty() && at < end && at + n as i64 > buf.offset {
            let rc = write_out(f, buf);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
    }
    match real_methods(f).xRead {
        Some(read) => read(real(f), out, n, at),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    n: c_int,
    at: i64,
) -> c_int {
    let Some(buf) = buffer(f) else {
        return match real_methods(f).xWrite {
            Some(write) => write(real(f), data, n, at),
            None => ffi::SQLITE_IOERR_WRITE,
        };
    };
    let n = n.max(0) as usize;
    let follows = at == buf.offset + buf.bytes.len() as i64;
    if !buf.bytes.is_empty() && (!follows || buf.bytes.len() + n > MAX_BUFFERED) {
        let rc = write_out(f, buf);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if buf.bytes.is_empty() {
        buf.offset = at;
    }
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), n);
    buf.bytes.extend_from_slice(bytes);
    if buf.commit_page_next {
        // The page of a commit frame: the commit is whole, so it goes to the file now.
        return write_out(f, buf);
    }
    // A frame header sits at 32 + k × (24 + page size); bytes 4..8 hold the database's size
    // after the commit on a commit frame, 0 on any other.
    buf.commit_page_next = n == FRAME_HEADER
        && at >= LOG_HEADER
        && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) != 0;
    ffi::SQLITE_OK
}

/// Writes out what `f` holds, then asks the real file: what must see the file as SQLite
/// wrote it (a truncation, a sync, its size) comes after the buffer.
unsafe fn after_flush(f: *mut ffi::sqlite3_file, then: impl FnOnce() -> c_int) -> c_int {
    match flush(f) {
        ffi::SQLITE_OK => then(),
        rc => rc,
    }
}

unsafe extern "C" fn truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    after_flush(f, || match real_methods(f).xTruncate {
        Some(truncate) => truncate(real(f), size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    })
}

unsafe extern "C" fn sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush(f, || match real_methods(f).xSync {
        Some(sync) => sync(real(f), flags),
        None => ffi::SQLITE_IOERR_FSYNC,
    })
}

unsafe extern "C" fn file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    after_flush(f, || match real_methods(f).xFileSize {
        Some(file_size) => file_size(real(f), size),
        None => ffi::SQLITE_IOERR_FSTAT,
    })
}

unsafe extern "C" fn lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    match real_methods(f).xLock {
        Some(lock) => lock(real(f), level),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    match real_methods(f).xUnlock {
        Some(unlock) => unlock(real(f), level),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    match real_methods(f).xCheckReservedLock {
        Some(check) => check(real(f), out),
        None => {
            *out = 0;
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn file_control(f: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    match real_methods(f).xFileControl {
        Some(control) => control(real(f), op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    match real_methods(f).xSectorSize {
        Some(size) => size(real(f)),
        None => 4096,
    }
}

unsafe extern "C" fn device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    match real_methods(f).xDeviceCharacteristics {
        Some(dc) => dc(real(f)),
        None => 0,
    }
}

unsafe extern "C" fn shm_map(
    f: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    match real_methods(f).xShmMap {
        Some(map) => map(real(f), region, size, extend, out),
        None => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    match real_methods(f).xShmLock {
        Some(lock) => lock(real(f), offset, n, flags),
        None => ffi::SQLITE_IOERR_SHMLOCK,
    }
}

unsafe extern "C" fn shm_barrier(f: *mut ffi::sqlite3_file) {
    if let Some(barrier) = real_methods(f).xShmBarrier {
        barrier(real(f))
    }
}

unsafe extern "C" fn shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    match real_methods(f).xShmUnmap {
        Some(unmap) => unmap(real(f), delete),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn fetch(
    f: *mut ffi::sqlite3_file,
    at: i64,
    n: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // A mapped page of the log would bypass the buffer; the log is never mapped, but be sure.
    if buffer(f).is_some() {
        *out = std::ptr::null_mut();
        return ffi::SQLITE_OK;
    }
    match real_methods(f).xFetch {
        Some(fetch) => fetch(real(f), at, n, out),
        None => {
            *out = std::ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn unfetch(f: *mut ffi::sqlite3_file, at: i64, page: *mut c_void) -> c_int {
    match real_methods(f).xUnfetch {
        Some(unfetch) => unfetch(real(f), at, page),
        None => ffi::SQLITE_OK,
    }
}

#[cfg(test)]
mod tests {
    use super::super::open_connection;
    use rusqlite::Connection;

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Small commits, a transaction larger than the page cache and the 1 MiB buffer (SQLite
    /// writes and reads back frames before its commit), and one rolled back: what each
    /// connection reads, through this VFS and through SQLite's own, and the file after.
    #[test]
    fn what_is_committed_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = open_connection(&path).unwrap();
        conn.execute_batch("PRAGMA cache_size=50; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let other = Connection::open(&path).unwrap();
        for i in 0..200 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [vec![i as u8; 700]])
                .unwrap();
        }
        assert_eq!(count(&other), 200);
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..3_000 {
            conn.execute(
                "INSERT INTO t (v) VALUES (?1)",
                [vec![(i % 251) as u8; 3_000]],
            )
            .unwrap();
        }
        // Read inside the transaction: pages spilled to the log come back from it.
        let sum: i64 = conn
            .query_row("SELECT SUM(length(v)) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sum, 200 * 700 + 3_000 * 3_000);
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&other), 3_200);
        conn.execute_batch("BEGIN; DELETE FROM t; ROLLBACK")
            .unwrap();
        assert_eq!(count(&other), 3_200);
        let bad: i64 = other
            .query_row(
                "SELECT COUNT(*) FROM t WHERE k > 200 AND v != zeroblob(0) AND substr(v, 1, 1) != substr(v, 3000, 1)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bad, 0, "rows whose bytes differ within themselves");
        drop(other);
        drop(conn);
        let again = Connection::open(&path).unwrap();
        assert_eq!(count(&again), 3_200);
        let check: String = again
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
