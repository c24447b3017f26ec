//! Durability for many files with one flush: a group commit of `syncfs`.
//!
//! A local sink must have a file's data on disk before the file gets its name (so a crash
//! never leaves a named file with missing data) and before its event is acknowledged. One
//! `fsync` per file did that with one blocking thread per file being synced (64 threads,
//! 6 MiB of stacks, for 64 events in flight) and one disk flush each. Here a file waits
//! for a `syncfs` of its filesystem that started after its data was written: the first
//! waiter runs one, and everyone who arrived meanwhile is covered by the next, so a flush
//! covers every file in flight at once, on one thread.
//!
//! The cost: a flush writes everything dirty on that filesystem, not only the sink's
//! files; on a disk shared with a heavy writer each flush takes as long as that writer's
//! backlog. The sink's own disk is the usual place for a backup.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The flushes of one filesystem.
struct Device {
    /// A directory on it, to name the filesystem to `syncfs`.
    dir: Arc<OwnedFd>,
    /// One flush at a time; waiters queue in order (tokio's mutex is fair).
    turn: tokio::sync::Mutex<()>,
    /// Flushes started, the number of the last one that completed, and of the last one
    /// that failed.
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
pub(crate) struct GroupSync {
    devices: std::sync::Mutex<HashMap<u64, Arc<Device>>>,
    /// Flushes run, for tests and metrics.
    flushes: AtomicU64,
}

impl GroupSync {
    /// Return once the data of `file` (in directory `dir`), written before this call, is
    /// on disk.
    pub(crate) async fn sync(&self, file: &std::fs::File, dir: &Path) -> std::io::Result<()> {
        let dev = file.metadata()?.dev();
        let device = self.device(dev, dir)?;
        // A flush that starts after this point covers this file.
        let ticket = device.started.load(Ordering::Acquire);
        let _turn = device.turn.lock().await;
        // A flush that covered this file failed: its data may not be on disk, and a later
        // flush does not say so again (the kernel reports a writeback error once per
        // descriptor). The caller writes the file again.
        if device.failed.load(Ordering::Acquire) > ticket {
            return Err(std::io::Error::other(
                "a flush of the filesystem failed while this file was being written",
            ));
        }
        if device.completed.load(Ordering::Acquire) > ticket {
            return Ok(());
        }
        let number = device.started.fetch_add(1, Ordering::AcqRel) + 1;
        let fd = device.dir.clone();
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let flushed = tokio::task::spawn_blocking(move || {
            // SAFETY: `fd` is an open descriptor owned by `device` for this call.
            if unsafe { libc::syncfs(fd.as_raw_fd()) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        if let Err(e) = flushed {
            device.failed.fetch_max(number, Ordering::AcqRel);
            return Err(e);
        }
        device.completed.fetch_max(number, Ordering::AcqRel);
        Ok(())
    }

    fn device(&self, dev: u64, dir: &Path) -> std::io::Result<Arc<Device>> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = devices.get(&dev) {
            return Ok(d.clone());
        }
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)?;
        let device = Arc::new(Device {
            dir: Arc::new(OwnedFd::from(opened)),
            turn: Default::default(),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        devices.insert(dev, device.clone());
        Ok(device)
    }

    #[cfg(test)]
    fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_written_together_share_flushes_and_each_waits_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(GroupSync::default());
        // One alone: one flush.
        let mut f = std::fs::File::create(dir.path().join("a")).unwrap();
        f.write_all(b"a").unwrap();
        group.sync(&f, dir.path()).await.unwrap();
        assert_eq!(group.flushes(), 1);
        // 200 at once: far fewer flushes than files, and every one returns.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let group = group.clone();
                let path = dir.path().to_path_buf();
                tokio::spawn(async move {
                    let mut f = std::fs::File::create(path.join(format!("f{i}"))).unwrap();
                    f.write_all(&[7u8; 4096]).unwrap();
                    group.sync(&f, &path).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = group.flushes() - 1;
        assert!(
            (1..200).contains(&flushes),
            "{flushes} flushes for 200 files"
        );
    }

    #[tokio::test]
    async fn a_flush_that_started_before_the_write_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupSync::default();
        let f = std::fs::File::create(dir.path().join("a")).unwrap();
        group.sync(&f, dir.path()).await.unwrap();
        let device = group
            .device(f.metadata().unwrap().dev(), dir.path())
            .unwrap();
        // A flush is under way (started, not completed) when the next file is done.
        device.started.fetch_add(1, Ordering::AcqRel);
        let g = std::fs::File::create(dir.path().join("b")).unwrap();
        group.sync(&g, dir.path()).await.unwrap();
        assert_eq!(group.flushes(), 2, "the second file ran a flush of its own");
        assert_eq!(device.completed.load(Ordering::Acquire), 3);
        // A flush that covered a file failed: that file fails too, even though a later
        // flush succeeded; a file written after the failure does not.
        let group = Arc::new(group);
        let turn = device.turn.lock().await;
        let waiting = {
            let group = group.clone();
            let path = dir.path().to_path_buf();
            tokio::spawn(async move {
                let h = std::fs::File::create(path.join("c")).unwrap();
                group.sync(&h, &path).await
            })
        };
        // One runtime thread: yielding lets the waiter take its ticket (3) and queue for
        // the turn.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        assert_eq!(device.started.load(Ordering::Acquire), 3);
        device.started.store(5, Ordering::Release);
        device.failed.store(4, Ordering::Release);
        device.completed.store(5, Ordering::Release);
        drop(turn);
        assert!(
            waiting.await.unwrap().is_err(),
            "covered by the failed flush"
        );
        let later = std::fs::File::create(dir.path().join("d")).unwrap();
        group.sync(&later, dir.path()).await.unwrap();
    }
}
