//! Log files in a directory (`-logdir`), named and kept as weed's glog keeps its own:
//! `replicate.<host>.<user>.log.INFO.<yyyymmdd-hhmmss>.<pid>`, a `replicate.INFO` symlink
//! to the current one, a new file past `-log_max_size_mb` or after `-log_rotate_hours`,
//! the newest `-log_max_files` kept, and older ones gzipped with `-log_compress`. Every
//! severity goes to the one file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the files are kept.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub max_bytes: u64,
    pub max_files: usize,
    /// `None`: no rotation by age.
    pub rotate_after: Option<Duration>,
    pub compress: bool,
}

/// A `MakeWriter` for tracing's fmt layer; cheap to clone.
#[derive(Clone)]
pub(crate) struct LogFiles(Arc<Mutex<State>>);

struct State {
    dir: PathBuf,
    prefix: String,
    policy: Policy,
    file: Option<(File, PathBuf)>,
    written: u64,
    opened: Instant,
    /// A write failed (a full disk); said once on stderr, tried again at the next line.
    failing: bool,
    /// The latest name's time part and its number within that second: a name once
    /// opened is never opened again, even after it was pruned.
    last_base: Option<(String, u32)>,
}

impl LogFiles {
    /// Open the first file now, so that a directory that cannot be written is a start-up
    /// error rather than silence.
    pub(crate) fn open(dir: &Path, policy: Policy) -> std::io::Result<LogFiles> {
        let host = hostname();
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && !u.contains('/'))
            .unwrap_or_else(|| "unknownuser".into());
        let mut state = State {
            dir: dir.to_path_buf(),
            prefix: format!("replicate.{host}.{user}.log.INFO."),
            policy,
            file: None,
            written: 0,
            opened: Instant::now(),
            failing: false,
            last_base: None,
        };
        state.rotate()?;
        Ok(LogFiles(Arc::new(Mutex::new(state))))
    }
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let short = name.trim().split('.').next().unwrap_or("").to_string();
    if short.is_empty() || short.contains('/') {
        "unknownhost".into()
    } else {
        short
    }
}

impl State {
    fn rotate(&mut self) -> std::io::Result<()> {
        let now = chrono::Local::now();
        let base = format!(
            "{}{}.{}",
            self.prefix,
            now.format("%Y%m%d-%H%M%S"),
            std::process::id()
        );
        // Rotations within one second would share a name: count on (`.001` sorts after
        // the bare name), and never open a name twice.
        let mut n = match &self.last_base {
            Some((b, n)) if *b == base => n + 1,
            _ => 0,
        };
        let numbered = |n: u32| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n:03}")
            }
        };
        let mut name = numbered(n);
        while self.dir.join(&name).exists()
            || std::path::Path::new(&format!("{}.gz", self.dir.join(&name).display())).exists()
        {
            n += 1;
            name = numbered(n);
        }
        self.last_base = Some((base.clone(), n));
        let path = self.dir.join(&name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let link = self.dir.join("replicate.INFO");
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink(&name, &link);
        if let Some((_, previous)) = self.file.replace((file, path))
            && self.policy.compress
        {
            std::thread::spawn(move || gzip(&previous));
        }
        self.written = 0;
        self.opened = Instant::now();
        self.prune();
        Ok(())
    }

    /// Keep the newest `max_files` (a file and its .gz count once; the current file
    /// always stays).
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let current = self
            .file
            .as_ref()
            .and_then(|(_, p)| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut logs: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&self.prefix))
            .map(|n| n.strip_suffix(".gz").unwrap_or(&n).to_string())
            .filter(|n| *n != current)
            .collect();
        logs.sort();
        logs.dedup();
        let keep_others = self.policy.max_files.max(1) - 1;
        let excess = logs.len().saturating_sub(keep_others);
        for old in &logs[..excess] {
            let _ = std::fs::remove_file(self.dir.join(old));
            let _ = std::fs::remove_file(self.dir.join(format!("{old}.gz")));
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let too_big = self.written + buf.len() as u64 > self.policy.max_bytes && self.written > 0;
        let too_old = self
            .policy
            .rotate_after
            .is_some_and(|after| self.opened.elapsed() >= after);
        if self.file.is_none() {
            self.rotate()?;
        } else if (too_big || too_old)
            && let Err(e) = self.rotate()
        {
            // Keep the file that works; try a new one after as much again.
            self.written = 0;
            self.opened = Instant::now();
            if !self.failing {
                eprintln!(
                    "replicate: starting a new log file in {} failed ({e}); the current one goes on",
                    self.dir.display()
                );
            }
        }
        let (file, _) = self.file.as_mut().expect("rotate opened a file");
        file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }
}

/// Gzip a finished log file beside itself, then remove it.
fn gzip(path: &Path) {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let result = (|| -> std::io::Result<()> {
        let mut input = File::open(path)?;
        let out = File::create(&gz)?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
        std::fs::remove_file(path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&gz);
        // Pruned meanwhile (with -log_max_files=1): nothing to say.
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("replicate: compressing {}: {e}", path.display());
        }
    }
}

/// One log line's writer.
pub(crate) struct LineWriter(Arc<Mutex<State>>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match state.write(buf) {
            Ok(()) => {
                if state.failing {
                    state.failing = false;
                    eprintln!(
                        "replicate: writing log files in {} works again",
                        state.dir.display()
                    );
                }
            }
            Err(e) => {
                if !state.failing {
                    state.failing = true;
                    eprintln!(
                        "replicate: writing log files in {} failed ({e}); lines are lost until it works again",
                        state.dir.display()
                    );
                }
                // Drop the file: the next line opens a new one.
                state.file = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFiles {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_by_size_and_are_pruned_and_compressed() {
        let d = tempfile::tempdir().unwrap();
        let files = LogFiles::open(
            d.path(),
            Policy {
                max_bytes: 100,
                max_files: 2,
                rotate_after: None,
                compress: true,
            },
        )
        .unwrap();
        let line = [b'x'; 60];
        for _ in 0..6 {
            use tracing_subscriber::fmt::MakeWriter;
            files.make_writer().write_all(&line).unwrap();
        }
        // Compression runs in the background: wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        let names = loop {
            let mut names: Vec<String> = std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .collect();
            names.sort();
            let plain = names
                .iter()
                .filter(|n| n.contains(".log.INFO.") && !n.ends_with(".gz"))
                .count();
            if plain == 1 || Instant::now() > deadline {
                break names;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let logs: Vec<&String> = names.iter().filter(|n| n.contains(".log.INFO.")).collect();
        assert_eq!(logs.len(), 2, "{names:?}");
        assert!(
            logs[0].ends_with(".gz") && !logs[1].ends_with(".gz"),
            "{names:?}"
        );
        let link = std::fs::read_link(d.path().join("replicate.INFO")).unwrap();
        assert_eq!(link.to_str(), Some(logs[1].as_str()));
        assert_eq!(std::fs::read(d.path().join(logs[1])).unwrap(), line);
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_an_error_at_once() {
        let d = tempfile::tempdir().unwrap();
        let policy = Policy {
            max_bytes: 1 << 20,
            max_files: 5,
            rotate_after: None,
            compress: false,
        };
        assert!(LogFiles::open(&d.path().join("missing"), policy).is_err());
    }
}
