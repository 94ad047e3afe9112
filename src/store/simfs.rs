//! A simulated disk for tests: an in-memory [`FileSystem`] that remembers, for every file and
//! every directory, what was changed since it was last synced, and can "cut power" at any step.
//!
//! What survives a power cut (`Disk::power_cut`), as on a real disk with a page cache:
//! - a file's content as of its last `sync_data`/`sync_all`, plus any subset of the writes and
//!   truncations made since, each one lost, kept, or torn (only a prefix or only a suffix of
//!   its bytes reached the disk). Writes are applied in their original order, but any later
//!   one may survive an earlier one that is lost (pages are written back in any order); a write
//!   past the surviving end of the file leaves zeros in between;
//! - a directory's entries as of its last `sync_dir`, plus any subset of the creates, renames
//!   and removes made since. A file whose entry is lost is gone, whatever was synced in it; a
//!   directory whose entry is lost is gone with everything in it.
//!
//! The disk can record a copy of itself before every operation that changes something, so that
//! one run of a workload yields every point at which power could be cut.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{DirLock, FileSystem, WalFile};
use crate::base::rng::Rng;

type Ino = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(Ino),
    Dir,
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Changes since the last sync, oldest first.
    pending: Vec<FileOp>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Create(String, Node),
    Remove(String),
    Rename(String, String),
}

#[derive(Clone, Debug, Default)]
struct DirData {
    durable: BTreeMap<String, Node>,
    current: BTreeMap<String, Node>,
    pending: Vec<DirOp>,
}

/// The whole disk: file contents by inode, directories by full path (the root `/` always exists).
#[derive(Clone, Debug)]
pub(crate) struct Disk {
    files: Vec<FileData>,
    dirs: BTreeMap<PathBuf, DirData>,
}

impl Default for Disk {
    fn default() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), DirData::default());
        Disk { files: Vec::new(), dirs }
    }
}

/// How many unsynced changes a cut met, and what it did with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CutStats {
    pub writes_kept: usize,
    pub writes_lost: usize,
    pub writes_torn: usize,
    pub dir_ops_kept: usize,
    pub dir_ops_lost: usize,
}

/// How a cut treats unsynced changes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CutMode {
    /// Everything written reached the disk (as after a process crash).
    KeepAll,
    /// Nothing unsynced reached the disk.
    LoseAll,
    /// Each change independently kept, lost or torn, drawn from the seed.
    Random(u64),
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    Ok((normalize(parent), name.to_string()))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

fn apply_write(content: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    if content.len() < offset + bytes.len() {
        content.resize(offset + bytes.len(), 0);
    }
    content[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl Disk {
    fn lookup(&self, path: &Path) -> io::Result<Node> {
        let path = normalize(path);
        if self.dirs.contains_key(&path) {
            return Ok(Node::Dir);
        }
        let (parent, name) = split(&path)?;
        self.dirs.get(&parent).and_then(|d| d.current.get(&name)).copied().ok_or_else(|| not_found(&path))
    }

    fn dir_mut(&mut self, path: &Path) -> io::Result<&mut DirData> {
        self.dirs.get_mut(path).ok_or_else(|| not_found(path))
    }

    fn new_file(&mut self, path: &Path) -> io::Result<Ino> {
        let (parent, name) = split(path)?;
        let ino = self.files.len();
        let dir = self.dir_mut(&parent)?;
        if dir.current.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        dir.current.insert(name.clone(), Node::File(ino));
        dir.pending.push(DirOp::Create(name, Node::File(ino)));
        self.files.push(FileData::default());
        Ok(ino)
    }

    fn file_op(&mut self, ino: Ino, op: FileOp) {
        let file = &mut self.files[ino];
        match &op {
            FileOp::Write { offset, bytes } => apply_write(&mut file.current, *offset, bytes),
            FileOp::SetLen(len) => file.current.resize(*len as usize, 0),
        }
        file.pending.push(op);
    }

    fn sync_file(&mut self, ino: Ino) {
        let file = &mut self.files[ino];
        file.durable = file.current.clone();
        file.pending.clear();
    }

    /// The disk as it is after power comes back, cutting now.
    pub(crate) fn power_cut(&self, mode: CutMode, stats: &mut CutStats) -> Disk {
        let mut rng = Rng::new(match mode {
            CutMode::Random(seed) => seed,
            _ => 0,
        });
        // Directory entries first: which names survive, in every directory.
        let mut surviving: BTreeMap<PathBuf, BTreeMap<String, Node>> = BTreeMap::new();
        for (path, dir) in &self.dirs {
            let mut entries = dir.durable.clone();
            for op in &dir.pending {
                let keep = match mode {
                    CutMode::KeepAll => true,
                    CutMode::LoseAll => false,
                    CutMode::Random(_) => rng.chance(0.5),
                };
                if !keep {
                    stats.dir_ops_lost += 1;
                    continue;
                }
                stats.dir_ops_kept += 1;
                match op {
                    DirOp::Create(name, node) => {
                        entries.insert(name.clone(), *node);
                    }
                    DirOp::Remove(name) => {
                        entries.remove(name);
                    }
                    DirOp::Rename(from, to) => {
                        if let Some(node) = entries.remove(from) {
                            entries.insert(to.clone(), node);
                        }
                    }
                }
            }
            surviving.insert(path.clone(), entries);
        }
        // Only what is reachable from the root survives.
        let mut image = Disk { files: vec![FileData::default(); self.files.len()], dirs: BTreeMap::new() };
        let mut reachable_files = BTreeSet::new();
        let mut stack = vec![PathBuf::from("/")];
        while let Some(path) = stack.pop() {
            let entries = surviving.get(&path).cloned().unwrap_or_default();
            for (name, node) in &entries {
                match node {
                    Node::Dir => stack.push(path.join(name)),
                    Node::File(ino) => {
                        reachable_files.insert(*ino);
                    }
                }
            }
            image.dirs.insert(path, DirData { durable: entries.clone(), current: entries, pending: Vec::new() });
        }
        for ino in reachable_files {
            let file = &self.files[ino];
            let mut content = file.durable.clone();
            for op in &file.pending {
                match op {
                    FileOp::Write { offset, bytes } => {
                        let choice = match mode {
                            CutMode::KeepAll => 0,
                            CutMode::LoseAll => 1,
                            CutMode::Random(_) => rng.range(0, 4),
                        };
                        match choice {
                            0 => {
                                stats.writes_kept += 1;
                                apply_write(&mut content, *offset, bytes);
                            }
                            1 => stats.writes_lost += 1,
                            torn => {
                                stats.writes_torn += 1;
                                let at = rng.range(0, bytes.len() as u64 + 1) as usize;
                                if torn == 2 {
                                    apply_write(&mut content, *offset, &bytes[..at]);
                                } else {
                                    apply_write(&mut content, *offset + at as u64, &bytes[at..]);
                                }
                            }
                        }
                    }
                    FileOp::SetLen(len) => {
                        let keep = match mode {
                            CutMode::KeepAll => true,
                            CutMode::LoseAll => false,
                            CutMode::Random(_) => rng.chance(0.5),
                        };
                        if keep {
                            stats.writes_kept += 1;
                            content.resize(*len as usize, 0);
                        } else {
                            stats.writes_lost += 1;
                        }
                    }
                }
            }
            image.files[ino] = FileData { durable: content.clone(), current: content, pending: Vec::new() };
        }
        image
    }

    /// Every file with its current content (for messages and checks in tests).
    pub(crate) fn listing(&self) -> Vec<(PathBuf, usize)> {
        let mut out = Vec::new();
        for (path, dir) in &self.dirs {
            for (name, node) in &dir.current {
                if let Node::File(ino) = node {
                    out.push((path.join(name), self.files[*ino].current.len()));
                }
            }
        }
        out
    }
}

#[derive(Default)]
struct State {
    disk: Disk,
    /// Copies of the disk before each change, with the tag current then.
    cuts: Option<Vec<(u64, Disk)>>,
    tag: u64,
    locks: BTreeSet<PathBuf>,
}

impl State {
    /// Called before every operation that changes the disk.
    fn before_change(&mut self) {
        if let Some(cuts) = &mut self.cuts {
            cuts.push((self.tag, self.disk.clone()));
        }
    }
}

/// The simulated file system; clones share one disk.
#[derive(Clone, Default)]
pub(crate) struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    pub(crate) fn with_disk(disk: Disk) -> SimFs {
        SimFs { state: Arc::new(Mutex::new(State { disk, ..State::default() })) }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on, keeps a copy of the disk before every change.
    pub(crate) fn record_cuts(&self) {
        self.lock_state().cuts = Some(Vec::new());
    }

    /// A label stored with every recorded cut (the harness numbers its calls with it).
    pub(crate) fn set_tag(&self, tag: u64) {
        self.lock_state().tag = tag;
    }

    /// The recorded cut points, plus the disk as it is now (tagged with the current tag).
    pub(crate) fn take_cuts(&self) -> Vec<(u64, Disk)> {
        let mut state = self.lock_state();
        let mut cuts = state.cuts.take().unwrap_or_default();
        cuts.push((state.tag, state.disk.clone()));
        cuts
    }

    pub(crate) fn disk(&self) -> Disk {
        self.lock_state().disk.clone()
    }
}

/// The most zeros `SimFile::allocate` appends.
const ALLOCATE_CAP: u64 = 4096;

struct SimFile {
    fs: SimFs,
    ino: Ino,
}

impl WalFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.fs.lock_state();
        let content = &state.disk.files[self.ino].current;
        let start = (offset as usize).min(content.len());
        let n = buf.len().min(content.len() - start);
        buf[..n].copy_from_slice(&content[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.fs.lock_state();
        state.before_change();
        state.disk.file_op(self.ino, FileOp::Write { offset, bytes: buf.to_vec() });
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.lock_state().disk.files[self.ino].current.len() as u64)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.fs.lock_state();
        state.before_change();
        state.disk.file_op(self.ino, FileOp::SetLen(len));
        Ok(())
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        // Zeros appended, as fallocate leaves them, but at most `ALLOCATE_CAP` bytes of them, so
        // that disk images (one per cut point) stay small.
        let current = self.len()?;
        let len = len.min(current.saturating_add(ALLOCATE_CAP));
        if len > current {
            self.set_len(len)?;
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.fs.lock_state();
        state.before_change();
        state.disk.sync_file(self.ino);
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl DirLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.lock_state().locks.remove(&self.path);
    }
}

impl FileSystem for SimFs {
    fn is_dir(&self, path: &Path) -> bool {
        self.lock_state().disk.dirs.contains_key(&normalize(path))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut missing = Vec::new();
        let mut at = path.as_path();
        let state = &mut *self.lock_state();
        while !state.disk.dirs.contains_key(at) {
            missing.push(at.to_path_buf());
            at = at.parent().ok_or_else(|| not_found(&path))?;
        }
        for dir in missing.into_iter().rev() {
            state.before_change();
            let (parent, name) = split(&dir)?;
            let parent = state.disk.dir_mut(&parent)?;
            if parent.current.contains_key(&name) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"));
            }
            parent.current.insert(name.clone(), Node::Dir);
            parent.pending.push(DirOp::Create(name, Node::Dir));
            state.disk.dirs.insert(dir, DirData::default());
        }
        Ok(())
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let path = normalize(path);
        let state = self.lock_state();
        let dir = state.disk.dirs.get(&path).ok_or_else(|| not_found(&path))?;
        Ok(dir.current.keys().map(|name| path.join(name)).collect())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut state = self.lock_state();
        state.before_change();
        let dir = state.disk.dir_mut(&path)?;
        dir.durable = dir.current.clone();
        dir.pending.clear();
        Ok(())
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut state = self.lock_state();
        state.before_change();
        let ino = state.disk.new_file(&normalize(path))?;
        Ok(Box::new(SimFile { fs: self.clone(), ino }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut state = self.lock_state();
        state.before_change();
        let ino = match state.disk.lookup(path) {
            Ok(Node::File(ino)) => {
                state.disk.file_op(ino, FileOp::SetLen(0));
                ino
            }
            Ok(Node::Dir) => return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory")),
            Err(_) => state.disk.new_file(&normalize(path))?,
        };
        Ok(Box::new(SimFile { fs: self.clone(), ino }))
    }
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        self.open_read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        match self.lock_state().disk.lookup(path)? {
            Node::File(ino) => Ok(Box::new(SimFile { fs: self.clone(), ino })),
            Node::Dir => Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory")),
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = split(&normalize(from))?;
        let (to_dir, to_name) = split(&normalize(to))?;
        if from_dir != to_dir {
            return Err(io::Error::other("the simulated disk renames only within a directory"));
        }
        let mut state = self.lock_state();
        state.before_change();
        let dir = state.disk.dir_mut(&from_dir)?;
        let node = dir.current.remove(&from_name).ok_or_else(|| not_found(from))?;
        dir.current.insert(to_name.clone(), node);
        dir.pending.push(DirOp::Rename(from_name, to_name));
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = split(&normalize(path))?;
        let mut state = self.lock_state();
        state.before_change();
        let dir = state.disk.dir_mut(&dir)?;
        match dir.current.get(&name) {
            Some(Node::File(_)) => {}
            Some(Node::Dir) => return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory")),
            None => return Err(not_found(path)),
        }
        dir.current.remove(&name);
        dir.pending.push(DirOp::Remove(name));
        Ok(())
    }
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let path = normalize(path);
        let mut state = self.lock_state();
        if !state.locks.insert(path.clone()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock { fs: self.clone(), path })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, bytes: &[u8]) -> Box<dyn WalFile> {
        let mut file = fs.create(Path::new(path)).expect("create");
        file.write_all_at(bytes, 0).expect("write");
        file
    }

    fn read(disk: Disk, path: &str) -> Option<Vec<u8>> {
        SimFs::with_disk(disk).read(Path::new(path)).ok()
    }

    #[test]
    fn synced_data_and_entries_survive_every_cut_and_unsynced_ones_may_not() {
        let fs = SimFs::default();
        fs.create_dir_all(Path::new("/d")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync root");
        let mut file = write(&fs, "/d/a", b"hello");
        file.sync_data().expect("sync");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        file.write_all_at(b" world", 5).expect("write");
        let disk = fs.disk();
        let mut stats = CutStats::default();
        assert_eq!(read(disk.power_cut(CutMode::KeepAll, &mut stats), "/d/a").as_deref(), Some(&b"hello world"[..]));
        assert_eq!(read(disk.power_cut(CutMode::LoseAll, &mut stats), "/d/a").as_deref(), Some(&b"hello"[..]));
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let content = read(disk.power_cut(CutMode::Random(seed), &mut stats), "/d/a").expect("synced entry");
            assert!(content.starts_with(b"hello"), "{content:?}");
            seen.insert(content);
        }
        assert!(seen.len() > 5, "torn writes of many lengths: {seen:?}");
        assert!(stats.writes_torn > 0 && stats.writes_lost > 0 && stats.writes_kept > 0, "{stats:?}");
    }

    #[test]
    fn an_unsynced_entry_may_vanish_with_its_synced_data_and_a_later_write_may_survive_an_earlier_one() {
        let fs = SimFs::default();
        let mut file = write(&fs, "/a", b"");
        file.write_all_at(b"1111", 0).expect("write");
        file.write_all_at(b"2222", 4).expect("write");
        file.sync_data().expect("sync data, not the entry");
        let disk = fs.disk();
        let mut stats = CutStats::default();
        let outcomes: BTreeSet<Option<Vec<u8>>> =
            (0..100).map(|seed| read(disk.power_cut(CutMode::Random(seed), &mut stats), "/a")).collect();
        assert!(outcomes.contains(&None));
        assert!(outcomes.contains(&Some(b"11112222".to_vec())));

        // Both writes unsynced: the second may survive without the first (zeros in between).
        let mut file = write(&fs, "/b", b"");
        fs.sync_dir(Path::new("/")).expect("sync root");
        file.write_all_at(b"1111", 0).expect("write");
        file.write_all_at(b"2222", 4).expect("write");
        let disk = fs.disk();
        let outcomes: BTreeSet<Option<Vec<u8>>> =
            (0..200).map(|seed| read(disk.power_cut(CutMode::Random(seed), &mut stats), "/b")).collect();
        assert!(outcomes.contains(&Some([&[0u8; 4][..], b"2222"].concat())), "{outcomes:?}");
        assert!(outcomes.contains(&Some(Vec::new())));
    }

    #[test]
    fn cuts_are_recorded_before_every_change() {
        let fs = SimFs::default();
        fs.record_cuts();
        fs.set_tag(1);
        let mut file = write(&fs, "/a", b"x"); // create + write
        file.sync_data().expect("sync");
        fs.set_tag(2);
        fs.rename(Path::new("/a"), Path::new("/b")).expect("rename");
        let cuts = fs.take_cuts();
        assert_eq!(cuts.iter().map(|(tag, _)| *tag).collect::<Vec<_>>(), [1, 1, 1, 2, 2]);
        assert!(read(cuts[0].1.clone(), "/a").is_none(), "before the create");
        assert_eq!(read(cuts[4].1.clone(), "/b").as_deref(), Some(&b"x"[..]));
    }
}
