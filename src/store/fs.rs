//! The file operations the WAL uses, behind a small trait: [`RealFs`] (std::fs, used in
//! production) and, in tests, a simulated disk (`store::simfs`) that can cut power at any step.
//!
//! Only what the WAL needs is here. Paths are absolute or relative to the process's working
//! directory, as with `std::fs`. The trait's errors are plain `io::Error`s; the helpers at the
//! end (atomic file writes, durable directory creation, the directory lock, leftovers of
//! interrupted writes) wrap them in `StoreError` with the action and the path.
//!
//! This room knows files and directories, never what is in them: record and file formats are
//! `store::wal`'s.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;

/// An open file. Writes are positional; nothing is durable before `sync_data`/`sync_all`.
pub(crate) trait WalFile: Send {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves the file's first `len` bytes on disk, as zeros, so that later writes there
    /// change no file-system metadata (etcd preallocates its WAL segments the same way). The file
    /// grows to `len` if it is shorter; nothing shrinks. Where the file system cannot, nothing
    /// happens and writes simply extend the file.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's content and size durable (fdatasync), not its directory entry.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Like `sync_data`, plus the rest of the file's own metadata (fsync).
    fn sync_all(&mut self) -> io::Result<()>;

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early")),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// A directory lock, held until dropped.
pub(crate) trait DirLock: Send {}

/// The file system under a data directory. Directory changes (create, rename, remove) are
/// durable only after `sync_dir` of the directory that holds them.
pub(crate) trait FileSystem: Send + Sync {
    fn is_dir(&self, path: &Path) -> bool;
    /// Creates `path` and missing parents (syncs nothing).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory (full paths, any order); NotFound if it is missing.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a new file, read-write; AlreadyExists if there is one.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Creates or empties a file, write-only.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Opens an existing file read-write.
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Opens an existing file read-only.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file `path` (creating it); `Ok(None)` if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>>;

    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open_read(path)?;
        let len = file.len()?;
        let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| io::Error::other("file too large"))?];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// Reads a `WalFile` from its start, as `io::Read` (for a `BufReader`).
pub(crate) struct Reader<'a> {
    file: &'a dyn WalFile,
    offset: u64,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(file: &'a dyn WalFile) -> Self {
        Reader { file, offset: 0 }
    }
}

impl io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The real file system (std::fs and flock).
pub(crate) struct RealFs;

impl WalFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let before = self.metadata()?.len();
        if before >= len {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("allocation too large"))?;
            // SAFETY: a valid descriptor owned by `self`; mode 0 allocates and extends the size.
            let rc = unsafe { libc::fallocate(self.as_raw_fd(), 0, 0, len) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    // A file system without fallocate: writes extend the file as before.
                    return Ok(());
                }
                // ext4 keeps what it allocated before running out of space (a 16 MiB disk was
                // left full by a 64 MiB request): give it back, so that a nearly full disk is
                // not filled by a reservation.
                let _ = File::set_len(self, before);
                return Err(e);
            }
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

impl DirLock for File {}

impl FileSystem for RealFs {
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(path)?.map(|item| item.map(|e| e.path())).collect()
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(OpenOptions::new().read(true).write(true).create_new(true).open(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(File::create(path)?))
    }
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(OpenOptions::new().read(true).write(true).open(path)?))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(File::open(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(error);
        }
        Ok(Some(Box::new(file)))
    }
}

// ----- helpers over a FileSystem, with errors that name the action and the path -----

/// The extension of a file being written by `write_file_atomically`.
const TMP_EXTENSION: &str = "tmp";
/// The file `lock_dir` locks in a data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Writes `parts` to `dir/name` so that after a crash the file is either old or complete.
pub(crate) fn write_file_atomically(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.{TMP_EXTENSION}"));
    let dest = dir.join(name);
    let written = fs
        .create(&tmp)
        .and_then(|mut file| {
            let mut offset = 0;
            for part in parts {
                file.write_all_at(part, offset)?;
                offset += part.len() as u64;
            }
            file.sync_all()
        })
        .map_err(|e| StoreError::io("write", &tmp, e))
        .and_then(|()| fs.rename(&tmp, &dest).map_err(|e| StoreError::io("rename into place", &dest, e)));
    if let Err(e) = written {
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    sync_dir(fs, dir)
}

/// Creates `dir` if it is missing and makes its entry durable.
pub(crate) fn create_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), StoreError> {
    if fs.is_dir(dir) {
        return Ok(());
    }
    fs.create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(fs, parent),
        None => Ok(()),
    }
}

pub(crate) fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), StoreError> {
    fs.sync_dir(dir).map_err(|e| StoreError::io("fsync directory", dir, e))
}

pub(crate) fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    fs.list_dir(dir).map_err(|e| StoreError::io("list directory", dir, e))
}

/// Leftovers of an interrupted atomic write: never renamed into place, so never durable data.
pub(crate) fn remove_temp_files(fs: &dyn FileSystem, dir: &Path) -> Result<(), StoreError> {
    for path in list_dir(fs, dir)? {
        if path.extension().is_some_and(|ext| ext == TMP_EXTENSION) {
            fs.remove_file(&path).map_err(|e| StoreError::io("remove leftover temporary file", &path, e))?;
        }
    }
    Ok(())
}

/// Takes an exclusive lock on `dir/LOCK`, held while the returned guard lives: two processes
/// writing one log would corrupt it (and two members sharing a log would break Raft's safety).
pub(crate) fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Box<dyn DirLock>, StoreError> {
    let path = dir.join(LOCK_FILE);
    match fs.lock(&path) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(StoreError::Locked { path: dir.to_path_buf() }),
        Err(e) => Err(StoreError::io("lock", &path, e)),
    }
}

/// Starts writing `path`'s dirty pages back to disk and returns without waiting for it, for
/// either the device's cache or the file system's journal (Linux's
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`, as RocksDB's `bytes_per_sync`). Nothing becomes
/// durable by it; a later fsync just finds less to write. Elsewhere it does nothing.
pub(crate) fn start_writeback(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a valid descriptor owned by `file`; offset 0 and length 0 mean the whole file.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}
