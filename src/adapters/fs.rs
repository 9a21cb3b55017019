//! File-system helpers shared by the file adapters: safe names, atomic writes, moves.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Turns text from a message (a header, a rendered template) into one file name that stays in
/// its directory: path separators and control characters become `_`, and a name that would be
/// empty, `.`/`..` or hidden gets a `_` prefix.
pub fn safe_file_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.len() > 200 {
        let mut cut = 200;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// `name` with `-{n}` before its extension: `a.json` → `a-2.json`.
pub fn with_suffix(name: &str, n: u64) -> String {
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{}-{n}{}", &name[..i], &name[i..]),
        _ => format!("{name}-{n}"),
    }
}

/// Flushes a directory entry change (create, rename) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes a batch of newly written files durable at one point. On Linux, one `syncfs` on their
/// file system writes them all out together — measured on this project's test disk
/// (`cargo bench --bench e2e`, baselines): 2.2× the files per second of an fsync per file, at a
/// third of the CPU, and ahead of eight threads calling fsync side by side (docs/performance.md).
/// `syncfs` reports a write-back error of any file of the file system; then, or where there is
/// no `syncfs`, each file is fsynced, so each result says whether its own file is durable.
pub fn sync_files(files: &[&File]) -> Vec<io::Result<()>> {
    #[cfg(target_os = "linux")]
    if files.len() > 1 {
        use std::os::fd::AsRawFd;
        // SAFETY: a descriptor of an open file, borrowed for the call; syncfs only reads it.
        if unsafe { libc::syncfs(files[0].as_raw_fd()) } == 0 {
            return files.iter().map(|_| Ok(())).collect();
        }
    }
    files.iter().map(|f| f.sync_all()).collect()
}

/// Writes `bytes` to a hidden temporary file in `dir` and fsyncs it; the caller links or
/// renames it into place, so readers never see a half-written file.
pub fn write_temp(dir: &Path, tag: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let (tmp, f) = create_temp(dir, tag, bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// A temporary file older than this is left over from a crash: no write takes this long
/// between making its temporary file and moving it into place.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the engine's own temporary files (`.switchyard-*.tmp`, full copies of message
/// bodies) that a crash left in `dir`, when older than `older_than` — a younger one may be
/// another node's write in progress. Returns how many were removed.
pub fn sweep_temps(dir: &Path, older_than: std::time::Duration) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".switchyard-") && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if old
            && entry.file_type().is_ok_and(|t| t.is_file())
            && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed temporary files left by a crash");
    }
    removed
}

/// [`write_temp`] without the fsync, for callers that sync many files together.
pub fn create_temp(dir: &Path, tag: &str, bytes: &[u8]) -> io::Result<(PathBuf, File)> {
    let tmp = dir.join(format!(".switchyard-{tag}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    if let Err(e) = f.write_all(bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, f))
}

/// The extended attribute that names the message a written file holds.
const MARK: &std::ffi::CStr = c"user.switchyard.message";

/// Marks `file` as holding message `id` (an extended attribute, which moves and links keep):
/// a later attempt can then tell its own earlier output from another message's file. Best
/// effort: a file system without user attributes just has no mark.
pub fn mark(file: &File, id: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor, a NUL-terminated name, and a buffer of the given length.
    unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            MARK.as_ptr(),
            id.as_ptr().cast(),
            id.len(),
            0,
        );
    }
}

/// The message `path` holds, if it is marked.
pub fn marked(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated path and name; the buffer's length is passed.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            MARK.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf.get(..n)?.to_vec()).ok()
}

/// Moves `from` into `dir` as `name`, or as `name` with a numeric suffix when that is taken.
/// Falls back to copy-and-remove across file systems. Returns the new path.
///
/// The move is not fsynced: it only ever follows a commit, so if power fails before it
/// reaches the disk the file is found again and taken twice — a visible duplicate, never a
/// loss — and an fsync per input file would halve intake speed.
pub fn move_into(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let mut target = dir.join(name);
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = dir.join(with_suffix(name, n));
    }
    match fs::rename(from, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            fs::copy(from, &target)?;
            File::open(&target)?.sync_all()?;
            fs::remove_file(from)?;
        }
        Err(e) => return Err(e),
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(safe_file_name(".."), "_..");
        assert_eq!(safe_file_name(""), "_");
        assert_eq!(safe_file_name("a\\b\n"), "a_b_");
        assert_eq!(safe_file_name("order.json"), "order.json");
        assert_eq!(with_suffix("a.json", 2), "a-2.json");
        assert_eq!(with_suffix("noext", 3), "noext-3");
    }
}
