//! A redb storage backend that gathers page writes and writes them to the file in offset order,
//! as long runs, on a thread of its own, past the page cache where it can.
//!
//! Building a new member's database from a snapshot (1M keys of 1 KiB: 1.39 GB of pages) is one
//! thread inserting into redb. redb writes a page to its file when its write buffer evicts it:
//! one `pwrite` of 4 KiB per page, in the order its striped LRU gives them up, scattered over the
//! file. The kernel's copy of those pages into the page cache was about two thirds of that
//! thread's time (about 4 s), and gathering the pages into runs of 1 MiB did not change it: the
//! cost is the copy, not the number of calls. So here:
//! - pages are gathered, up to [`GATHER_BYTES`], and written in offset order, contiguous pages as
//!   one write of up to [`RUN_BYTES`];
//! - given a second handle of the file opened with `O_DIRECT` ([`Coalescing::with_direct`]), runs
//!   of whole 4 KiB blocks go to the disk from the run's buffer, past the page cache (the disk
//!   here takes direct writes of 1 MiB at 1.2 GB/s). A file system that refuses direct I/O
//!   (`EINVAL`) gets the runs through `inner` from then on. Linux keeps the two handles coherent:
//!   a direct write writes back and drops the cached pages of its range;
//! - a full gather is written by a thread of its own while the next one fills, so the inserting
//!   thread does not wait for the disk. At most one gather is being written at a time.
//!
//! Reads stay exact. A read that touches a page being written waits for that write, and one
//! that touches a gathered page first writes everything. `sync_data`, `close` and a `set_len`
//! that cuts into gathered bytes do the same; a write that overlaps a gathered page other than
//! by replacing it exactly writes everything first. A write over a page being written needs
//! nothing: the gather it joins is written after. So the file plus the gathers always read as
//! redb wrote them, and a sync makes all of it durable. A failed write is returned by the next
//! call that waits for it, and from then on every call fails (redb may take a failure at some
//! calls as harmless, and the lost pages are not the ones that call was about). Memory: two
//! gathers and a run.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use redb::{BackendError, StorageBackend};

/// How many bytes of pages are gathered before they are written.
pub(crate) const GATHER_BYTES: usize = 16 << 20;
/// The longest single write.
pub(crate) const RUN_BYTES: usize = 1 << 20;
/// What `O_DIRECT` needs: offsets, lengths and the buffer's address in whole blocks.
const DIRECT_ALIGN: usize = 4096;

type Pages = BTreeMap<u64, Vec<u8>>;

/// Gathers the writes of `inner` (see the module's documentation).
pub(crate) struct Coalescing<B> {
    inner: Arc<B>,
    gathered: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    /// offset → bytes; the entries never overlap.
    pages: Pages,
    bytes: usize,
    /// The end of the furthest gathered page.
    end: u64,
    /// Writes gathers; `None` while a gather is being written.
    writer: Option<Writer>,
    /// The gather being written, and the thread writing it.
    in_flight: Option<InFlight>,
    /// Why a write of a gather failed. redb was told its pages were written, and a failure shows
    /// up at a later call, which may be one whose failure redb survives (a best-effort write), so
    /// every call fails from then on, as redb's own backend latches a failed write.
    failed: Option<String>,
}

struct InFlight {
    pages: Arc<Pages>,
    end: u64,
    done: JoinHandle<(Writer, io::Result<()>)>,
}

#[derive(Default)]
struct Writer {
    /// Reused to join a run of contiguous pages.
    run: Run,
    /// A handle of the same file that writes past the page cache; dropped after a refusal.
    direct: Option<File>,
    /// For tests: runs written, and how many of them went to `direct`.
    writes: u64,
    direct_writes: u64,
}

/// A buffer of up to [`RUN_BYTES`] that starts on a [`DIRECT_ALIGN`] boundary.
struct Run {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Default for Run {
    fn default() -> Run {
        let buf = vec![0; RUN_BYTES + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Run { buf, start, len: 0 }
    }
}

impl Run {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Appends `data` if the run has room for it.
    fn push(&mut self, data: &[u8]) -> bool {
        if self.len + data.len() > RUN_BYTES {
            return false;
        }
        let at = self.start + self.len;
        self.buf[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
        true
    }
}

enum Overlap {
    None,
    /// The write replaces exactly the gathered page at this offset.
    Same,
    Other,
}

fn overlap(pages: &Pages, offset: u64, len: usize) -> Overlap {
    let end = offset.saturating_add(len as u64);
    // The entries before `end`, from the last: they overlap while they end after `offset`.
    let mut found = Overlap::None;
    for (&start, page) in pages.range(..end).rev() {
        if start + page.len() as u64 <= offset {
            break;
        }
        if start == offset && page.len() == len && matches!(found, Overlap::None) {
            found = Overlap::Same;
        } else {
            return Overlap::Other;
        }
    }
    found
}

impl Writer {
    /// Writes `pages` in offset order, contiguous ones as one run.
    fn write_all<B: StorageBackend>(&mut self, inner: &B, pages: &Pages) -> io::Result<()> {
        let mut run_start = 0;
        self.run.len = 0;
        for (&offset, page) in pages {
            let contiguous = self.run.len > 0 && run_start + self.run.len as u64 == offset;
            if contiguous && self.run.push(page) {
                continue;
            }
            self.write_run(inner, run_start)?;
            run_start = offset;
            if !self.run.push(page) {
                // Larger than a run (a page of a large value): on its own, through the cache.
                self.writes += 1;
                inner.write(offset, page)?;
            }
        }
        self.write_run(inner, run_start)
    }

    fn write_run<B: StorageBackend>(&mut self, inner: &B, start: u64) -> io::Result<()> {
        if self.run.len == 0 {
            return Ok(());
        }
        self.writes += 1;
        let aligned = start.is_multiple_of(DIRECT_ALIGN as u64) && self.run.len.is_multiple_of(DIRECT_ALIGN);
        let result = match self.direct.as_ref().filter(|_| aligned) {
            Some(direct) => match direct.write_all_at(self.run.bytes(), start) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    inner.write(start, self.run.bytes())
                }
                result => {
                    self.direct_writes += u64::from(result.is_ok());
                    result
                }
            },
            None => inner.write(start, self.run.bytes()),
        };
        self.run.len = 0;
        result
    }
}

impl Gathered {
    /// Refuses every call once a write has failed.
    fn usable(&self) -> io::Result<()> {
        match &self.failed {
            Some(why) => Err(io::Error::other(format!("an earlier write of the database failed: {why}"))),
            None => Ok(()),
        }
    }

    /// Remembers a failed write (see `failed`).
    fn latch<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            self.failed.get_or_insert_with(|| e.to_string());
        }
        result
    }

    /// Waits for the gather being written, if one is.
    fn join(&mut self) -> io::Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let result = match in_flight.done.join() {
            Ok((writer, result)) => {
                self.writer = Some(writer);
                result
            }
            Err(_) => {
                self.writer = Some(Writer::default());
                Err(io::Error::other("the thread writing the database panicked"))
            }
        };
        self.latch(result)
    }

    fn take(&mut self) -> Pages {
        self.bytes = 0;
        self.end = 0;
        std::mem::take(&mut self.pages)
    }

    /// Writes everything, here and now.
    fn settle<B: StorageBackend>(&mut self, inner: &B) -> io::Result<()> {
        self.join()?;
        let pages = self.take();
        let written = self.writer.get_or_insert_with(Writer::default).write_all(inner, &pages);
        self.latch(written)
    }

    /// Hands the gather to a thread that writes it, once the one before is written.
    fn write_behind<B: StorageBackend>(&mut self, inner: &Arc<B>) -> io::Result<()> {
        self.join()?;
        let end = self.end;
        let pages = Arc::new(self.take());
        let mut writer = self.writer.take().unwrap_or_default();
        let (to_write, from) = (Arc::clone(&pages), Arc::clone(inner));
        let spawned = std::thread::Builder::new().name("db-writer".into()).spawn(move || {
            let result = writer.write_all(&*from, &to_write);
            (writer, result)
        });
        match spawned {
            Ok(done) => {
                self.in_flight = Some(InFlight { pages, end, done });
                Ok(())
            }
            // No thread: write it here (the writer moved into the closure that never ran).
            Err(_) => {
                let written = Writer::default().write_all(&**inner, &pages);
                self.latch(written)
            }
        }
    }

    #[cfg(test)]
    fn writes(&mut self) -> (u64, u64) {
        let _ = self.join();
        self.writer.as_ref().map_or((0, 0), |w| (w.writes, w.direct_writes))
    }
}

impl<B: StorageBackend> Coalescing<B> {
    pub(crate) fn new(inner: B) -> Coalescing<B> {
        Coalescing { inner: Arc::new(inner), gathered: Mutex::new(Gathered::default()) }
    }

    /// Writes whole-block runs through `direct`, a handle of the same file opened with
    /// `O_DIRECT` (see the module's documentation).
    pub(crate) fn with_direct(self, direct: File) -> Coalescing<B> {
        if let Ok(mut gathered) = self.gathered.lock() {
            gathered.writer.get_or_insert_with(Writer::default).direct = Some(direct);
        }
        self
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Gathered>> {
        self.gathered.lock().map_err(|_| io::Error::other("a write to the database panicked"))
    }
}

impl<B> Drop for Coalescing<B> {
    fn drop(&mut self) {
        // Not past the database's life: its file may be removed next.
        if let Ok(gathered) = self.gathered.get_mut() {
            let _ = gathered.join();
        }
    }
}

impl<B> fmt::Debug for Coalescing<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescing").finish_non_exhaustive()
    }
}

impl<B: StorageBackend> StorageBackend for Coalescing<B> {
    fn len(&self) -> io::Result<u64> {
        let gathered = self.lock()?;
        gathered.usable()?;
        let in_flight = gathered.in_flight.as_ref().map_or(0, |f| f.end);
        Ok(self.inner.len()?.max(gathered.end).max(in_flight))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut gathered = self.lock()?;
        gathered.usable()?;
        if !matches!(overlap(&gathered.pages, offset, out.len()), Overlap::None) {
            gathered.settle(&*self.inner)?;
        } else if gathered
            .in_flight
            .as_ref()
            .is_some_and(|f| !matches!(overlap(&f.pages, offset, out.len()), Overlap::None))
        {
            gathered.join()?;
        }
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut gathered = self.lock()?;
        gathered.usable()?;
        let in_flight = gathered.in_flight.as_ref().map_or(0, |f| f.end);
        if len < gathered.end.max(in_flight) {
            gathered.settle(&*self.inner)?;
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut gathered = self.lock()?;
        gathered.usable()?;
        gathered.settle(&*self.inner)?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut gathered = self.lock()?;
        gathered.usable()?;
        match overlap(&gathered.pages, offset, data.len()) {
            Overlap::Same => {
                if let Some(page) = gathered.pages.get_mut(&offset) {
                    page.copy_from_slice(data);
                }
                return Ok(());
            }
            Overlap::Other => gathered.settle(&*self.inner)?,
            Overlap::None => {}
        }
        gathered.pages.insert(offset, data.to_vec());
        gathered.bytes += data.len();
        gathered.end = gathered.end.max(offset + data.len() as u64);
        if gathered.bytes >= GATHER_BYTES {
            gathered.write_behind(&self.inner)?;
        }
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        let written = self.lock().and_then(|mut g| g.usable().and_then(|()| g.settle(&*self.inner)));
        let closed = self.inner.close();
        written.and(closed)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;

    fn page(byte: u8, len: usize) -> Vec<u8> {
        vec![byte; len]
    }

    fn read(b: &impl StorageBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        b.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn contiguous_pages_go_out_as_one_write_in_offset_order() {
        let b = Coalescing::new(InMemoryBackend::new());
        b.set_len(64 * 4096).unwrap();
        // Scattered, as redb's striped buffer evicts them.
        for i in [5u64, 1, 3, 0, 2, 4, 7] {
            b.write(i * 4096, &page(i as u8 + 1, 4096)).unwrap();
        }
        assert_eq!(b.lock().unwrap().writes().0, 0, "nothing is written before a sync");
        b.sync_data().unwrap();
        // Pages 0-5 are one run and 7 another.
        assert_eq!(b.lock().unwrap().writes().0, 2);
        for i in [0u64, 1, 2, 3, 4, 5, 7] {
            assert_eq!(b.inner.read_all(i * 4096, 4096), page(i as u8 + 1, 4096));
        }
        assert_eq!(b.inner.read_all(6 * 4096, 4096), page(0, 4096));
    }

    #[test]
    fn reads_see_gathered_pages_and_overlaps_keep_the_last_write() {
        let b = Coalescing::new(InMemoryBackend::new());
        b.set_len(16 * 4096).unwrap();
        b.write(0, &page(1, 8192)).unwrap();
        // Replacing exactly stays gathered.
        b.write(0, &page(2, 8192)).unwrap();
        assert_eq!(b.lock().unwrap().writes().0, 0);
        // A read of part of it writes first, then reads the last write.
        assert_eq!(read(&b, 4096, 4096), page(2, 4096));
        assert_eq!(b.lock().unwrap().writes().0, 1);
        // A write over part of a gathered page writes that page first, then lands on top.
        b.write(8192, &page(3, 8192)).unwrap();
        b.write(12288, &page(4, 4096)).unwrap();
        assert_eq!(read(&b, 8192, 8192), [page(3, 4096), page(4, 4096)].concat());
        // A cut below gathered pages writes them first, so the cut removes them as it would
        // have removed them from the file, and the pages before it stay.
        b.set_len(24 * 4096).unwrap();
        b.write(20 * 4096, &page(5, 4096)).unwrap();
        b.write(4096, &page(6, 4096)).unwrap();
        b.set_len(4 * 4096).unwrap();
        assert_eq!(b.len().unwrap(), 4 * 4096);
        b.set_len(24 * 4096).unwrap();
        assert_eq!(read(&b, 20 * 4096, 4096), page(0, 4096));
        assert_eq!(read(&b, 0, 8192), [page(2, 4096), page(6, 4096)].concat());
    }

    #[test]
    fn whole_block_runs_go_past_the_page_cache_and_read_back() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let direct = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
        let b = Coalescing::new(redb::backends::FileBackend::new(file).unwrap()).with_direct(direct);
        b.set_len(64 * 4096).unwrap();
        for i in [9u64, 2, 3, 1, 40] {
            b.write(i * 4096, &page(i as u8, 4096)).unwrap();
        }
        // Not a whole block: through the cache.
        b.write(50 * 4096, &page(7, 100)).unwrap();
        b.sync_data().unwrap();
        let mut g = b.gathered.lock().unwrap();
        // Runs: 1-3, 9, 40, and the short one.
        let (writes, direct_writes) = g.writes();
        assert_eq!(writes, 4);
        // tmpfs before Linux 6.6 refuses O_DIRECT, and the runs then go through the cache.
        if g.writer.as_ref().is_some_and(|w| w.direct.is_some()) {
            assert_eq!(direct_writes, 3);
        }
        drop(g);
        let on_disk = std::fs::read(&path).unwrap();
        for i in [1u64, 2, 3, 9, 40] {
            let at = (i * 4096) as usize;
            assert_eq!(&on_disk[at..at + 4096], page(i as u8, 4096).as_slice());
            assert_eq!(read(&b, i * 4096, 4096), page(i as u8, 4096));
        }
        assert_eq!(&on_disk[50 * 4096..50 * 4096 + 100], page(7, 100).as_slice());
        assert_eq!(&on_disk[4 * 4096..9 * 4096], vec![0; 5 * 4096].as_slice());
    }

    /// Fails every write from the `fail_from`th on.
    #[derive(Debug)]
    struct Failing {
        inner: InMemoryBackend,
        writes: std::sync::atomic::AtomicU64,
        fail_from: u64,
    }

    impl StorageBackend for Failing {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            if self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.fail_from {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.inner.write(offset, data)
        }
    }

    #[test]
    fn a_failed_write_of_a_gather_fails_every_later_call() {
        let b = Coalescing::new(Failing { inner: InMemoryBackend::new(), writes: 0.into(), fail_from: 0 });
        let pages = (GATHER_BYTES / 4096) as u64;
        b.set_len((pages + 8) * 4096).unwrap();
        // The full gather goes to the writer thread, which fails; redb was told "written".
        for i in 0..pages {
            b.write(i * 4096, &page(1, 4096)).unwrap();
        }
        // The next call that waits for it gets the failure, whatever it is about...
        let mut out = vec![0; 4096];
        let first = b.read(0, &mut out).unwrap_err();
        assert!(first.to_string().contains("No space left"), "{first}");
        // ...and so does every call after, even one that touches nothing gathered: the pages
        // redb believes written are lost, and nothing may go on as if they were not.
        for e in [
            b.read((pages + 4) * 4096, &mut out).unwrap_err(),
            b.write((pages + 1) * 4096, &page(2, 4096)).unwrap_err(),
            b.sync_data().unwrap_err(),
            b.set_len((pages + 9) * 4096).unwrap_err(),
            b.len().unwrap_err(),
        ] {
            assert!(e.to_string().contains("an earlier write of the database failed"), "{e}");
        }
    }

    #[test]
    fn gathering_is_bounded() {
        let b = Coalescing::new(InMemoryBackend::new());
        let pages = (GATHER_BYTES / 4096) as u64;
        b.set_len((pages + 2) * 4096).unwrap();
        for i in 0..pages {
            b.write(i * 4096, &page(1, 4096)).unwrap();
        }
        {
            let g = b.gathered.lock().unwrap();
            assert_eq!((g.bytes, g.pages.len()), (0, 0), "the full gather went to be written");
            assert!(g.in_flight.is_some(), "by a thread of its own");
        }
        // A read of a page being written waits for it, and sees it.
        let last = (pages - 1) * 4096;
        b.write(last + 4096, &page(2, 4096)).unwrap();
        assert_eq!(read(&b, last, 4096), page(1, 4096));
        let mut g = b.gathered.lock().unwrap();
        assert!(g.in_flight.is_none() && g.pages.len() == 1, "the read waited, and did not write the new gather");
        assert_eq!(g.writes(), ((GATHER_BYTES / RUN_BYTES) as u64, 0), "in runs of RUN_BYTES, none direct");
    }

    #[test]
    fn a_database_on_it_reads_back_what_it_wrote() {
        use redb::{Builder, ReadableDatabase, ReadableTable, TableDefinition};
        const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
        let db = Builder::new()
            .set_cache_size(1 << 20)
            .create_with_backend(Coalescing::new(InMemoryBackend::new()))
            .unwrap();
        for batch in 0..20u64 {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(T).unwrap();
                for i in 0..500u64 {
                    let k = (i * 7919 + batch) % 10_000;
                    t.insert(k, vec![(k % 251) as u8; 300].as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let read = db.begin_read().unwrap();
        let t = read.open_table(T).unwrap();
        let want: std::collections::BTreeSet<u64> =
            (0..20u64).flat_map(|batch| (0..500u64).map(move |i| (i * 7919 + batch) % 10_000)).collect();
        let mut got = std::collections::BTreeSet::new();
        for entry in t.iter().unwrap() {
            let (k, v) = entry.unwrap();
            assert_eq!(v.value(), vec![(k.value() % 251) as u8; 300].as_slice());
            got.insert(k.value());
        }
        assert_eq!(got, want);
    }

    trait ReadAll {
        fn read_all(&self, offset: u64, len: usize) -> Vec<u8>;
    }

    impl ReadAll for InMemoryBackend {
        fn read_all(&self, offset: u64, len: usize) -> Vec<u8> {
            read(self, offset, len)
        }
    }
}
