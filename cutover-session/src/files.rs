//! PHP's `files` session handler: `session.save_path` (`[N;[MODE;]]/path`), `sess_<id>` files
//! laid out in N levels of one-character folders taken from the id, and PHP's locking — PHP
//! holds an exclusive `flock` on the file for the whole request and writes at its end with
//! truncate + write. Synchronous (std::fs): callers on an async runtime run these calls on a
//! blocking thread.

use crate::store::{Lookup, StoreError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Why a `session.save_path` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavePathError {
    #[error("`{0}` is not a depth")]
    Depth(String),
    #[error("`{0}` is not an octal mode")]
    Mode(String),
    #[error("`{0}` has too many `;`")]
    TooManyParts(String),
    #[error("empty directory")]
    EmptyDir,
    #[error("depth {0} is more than PHP allows")]
    TooDeep(usize),
}

/// A parsed `session.save_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavePath {
    pub depth: usize,
    pub dir: PathBuf,
}

impl SavePath {
    /// Parses `/path`, `N;/path` or `N;MODE;/path` as PHP's mod_files does.
    pub fn parse(s: &str) -> Result<SavePath, SavePathError> {
        let parts: Vec<&str> = s.split(';').collect();
        let depth_of = |n: &str| {
            n.parse::<usize>()
                .map_err(|_| SavePathError::Depth(n.to_string()))
        };
        let (depth, dir) = match parts.as_slice() {
            [dir] => (0, *dir),
            [n, dir] => (depth_of(n)?, *dir),
            [n, mode, dir] => {
                u32::from_str_radix(mode, 8).map_err(|_| SavePathError::Mode(mode.to_string()))?;
                (depth_of(n)?, *dir)
            }
            _ => return Err(SavePathError::TooManyParts(s.to_string())),
        };
        if dir.is_empty() {
            return Err(SavePathError::EmptyDir);
        }
        if depth > 32 {
            return Err(SavePathError::TooDeep(depth));
        }
        Ok(SavePath {
            depth,
            dir: PathBuf::from(dir),
        })
    }

    /// The file of a (validated) session id; None when the id is shorter than the depth.
    pub fn file_for(&self, id: &str) -> Option<PathBuf> {
        if id.len() < self.depth {
            return None;
        }
        let mut p = self.dir.clone();
        for c in id.chars().take(self.depth) {
            p.push(c.to_string());
        }
        p.push(format!("sess_{id}"));
        Some(p)
    }
}

/// PHP's `files` handler over one `session.save_path`.
#[derive(Debug, Clone)]
pub struct FilesStore {
    pub save_path: SavePath,
    /// How long a read or a write waits for a lock PHP holds before giving up.
    pub lock_wait: Duration,
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        store: "files",
        message: e.to_string(),
    }
}

/// Polls a non-blocking lock until it is had or `wait` passes: a blocking `flock` could wait for
/// as long as a PHP request runs.
fn lock_within(file: &std::fs::File, exclusive: bool, wait: Duration) -> Result<(), StoreError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(200);
    loop {
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(StoreError::Locked {
                        store: "files",
                        waited: wait,
                    });
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
    }
}

impl FilesStore {
    pub fn new(save_path: &str, lock_wait: Duration) -> Result<FilesStore, SavePathError> {
        Ok(FilesStore {
            save_path: SavePath::parse(save_path)?,
            lock_wait,
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if crate::cookie::valid_session_id(id).as_deref() != Some(id) {
            return Err(StoreError::InvalidId);
        }
        self.save_path
            .file_for(id)
            .ok_or_else(|| failed("session id shorter than the save_path depth"))
    }

    /// Whether the save path is a folder this process can read: a missing folder makes every
    /// session look absent, so it is an error, not "no session".
    pub fn check_folder(&self) -> Result<(), StoreError> {
        let dir = &self.save_path.dir;
        match std::fs::read_dir(dir) {
            Ok(_) => Ok(()),
            Err(e) => Err(failed(format!("{}: {e}", dir.display()))),
        }
    }

    /// Reads a session under a shared lock (waiting at most `lock_wait` for PHP's).
    pub fn load(&self, id: &str) -> Result<Lookup, StoreError> {
        self.load_waiting(id, self.lock_wait)
    }

    /// Reads a session under a shared lock, waiting up to `wait` for PHP's exclusive one: a read
    /// made after PHP's response sees what PHP wrote at the end of that request, since PHP holds
    /// its lock from `session_start()` until the write is done.
    pub fn load_waiting(&self, id: &str, wait: Duration) -> Result<Lookup, StoreError> {
        let path = self.path(id)?;
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No file: no session, but only if the folder itself is there.
                self.check_folder()?;
                return Ok(Lookup::Absent);
            }
            Err(e) => return Err(failed(format!("{}: {e}", path.display()))),
        };
        lock_within(&file, false, wait)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(failed)?;
        // PHP creates the file when a session starts; an empty one is an empty session.
        Ok(Lookup::Found(data))
    }

    /// Writes a session as PHP's mod_files does: exclusive lock, then truncate and write on the
    /// locked file (readers take the shared lock, so they see the old or the new content).
    pub fn save(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(id)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        lock_within(&file, true, self.lock_wait)?;
        file.set_len(0).map_err(failed)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(failed)?;
        file.write_all(data).map_err(failed)?;
        file.flush().map_err(failed)?;
        Ok(())
    }

    /// Deletes a session (`session_destroy()`).
    pub fn destroy(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_path_forms() {
        assert_eq!(
            SavePath::parse("/var/lib/php/sessions").expect("ok").depth,
            0
        );
        let p = SavePath::parse("2;/tmp/s").expect("ok");
        assert_eq!(
            p.file_for("abcd").expect("deep enough"),
            PathBuf::from("/tmp/s/a/b/sess_abcd")
        );
        let p = SavePath::parse("1;700;/tmp/s").expect("ok");
        assert_eq!(p.depth, 1);
        assert!(SavePath::parse("x;/tmp").is_err());
        assert!(SavePath::parse("1;999;/tmp").is_err());
    }

    #[test]
    fn a_missing_folder_is_an_error_not_an_absent_session() {
        let store = FilesStore::new("/nonexistent/cutover-sessions", Duration::from_millis(10))
            .expect("path");
        let e = store.load("abc123").expect_err("no folder");
        assert!(
            e.to_string().contains("/nonexistent/cutover-sessions"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("cutover-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store =
            FilesStore::new(&dir.display().to_string(), Duration::from_millis(10)).expect("path");
        assert_eq!(store.load("abc123").expect("folder"), Lookup::Absent);
        store.save("abc123", b"a|i:1;").expect("save");
        assert_eq!(
            store.load("abc123").expect("read"),
            Lookup::Found(b"a|i:1;".to_vec())
        );
        store.destroy("abc123").expect("destroy");
        assert_eq!(store.load("abc123").expect("folder"), Lookup::Absent);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_waits_for_the_writers_lock() {
        let dir = std::env::temp_dir().join(format!("cutover-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store =
            FilesStore::new(&dir.display().to_string(), Duration::from_millis(10)).expect("path");
        store.save("lockme", b"n|i:1;").expect("save");
        // PHP's side: an exclusive lock held while the request runs, the write at its end.
        let path = dir.join("sess_lockme");
        let php = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        php.lock().expect("lock");
        assert!(matches!(
            store.load("lockme"),
            Err(StoreError::Locked { .. })
        ));
        let writer = std::thread::spawn(move || {
            let mut php = php;
            std::thread::sleep(Duration::from_millis(50));
            php.set_len(0).expect("truncate");
            php.write_all(b"n|i:2;").expect("write");
            // Dropping the file releases the lock.
        });
        let after = store
            .load_waiting("lockme", Duration::from_secs(5))
            .expect("read after the write");
        assert_eq!(after, Lookup::Found(b"n|i:2;".to_vec()));
        writer.join().expect("writer");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
