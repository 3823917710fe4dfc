//! Rollback records: the state a reversible remediation replaced, one JSON file
//! per subject under `<data_dir>/rollback/`, so a later rollback action (even
//! after an agent restart) restores exactly it.
//!
//! Invariants:
//! - A record is written (atomically: temporary file, fsync, rename; mode 0600)
//!   before the change it describes, so a crash mid-change still leaves the way
//!   back.
//! - The first record of a subject wins: a second change before a rollback keeps
//!   the original previous state ([`Records::keep_first`]), so rolling back
//!   returns to the state from before Tether, not to an intermediate one.
//! - A record is removed only after its rollback succeeded.
//! - File names are derived from the subject (sanitised, plus a CRC of the exact
//!   subject), so no subject can name a path outside the directory.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("rollback record {path}: {message}")]
    Io { path: String, message: String },
}

/// The record store.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("rollback"),
        }
    }

    /// The file that holds `subject`'s record.
    pub fn path(&self, subject: &str) -> PathBuf {
        let safe: String = subject
            .chars()
            .take(80)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let crc = crc32fast::hash(subject.as_bytes());
        self.dir.join(format!("{safe}-{crc:08x}.json"))
    }

    fn err(&self, subject: &str, message: impl std::fmt::Display) -> RecordError {
        RecordError::Io {
            path: self.path(subject).display().to_string(),
            message: message.to_string(),
        }
    }

    pub fn load(&self, subject: &str) -> Result<Option<serde_json::Value>, RecordError> {
        crate::state::read(&self.path(subject)).map_err(|e| self.err(subject, e))
    }

    pub fn save(&self, subject: &str, value: &serde_json::Value) -> Result<(), RecordError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.err(subject, e))?;
        crate::state::write(&self.path(subject), value, 0o600).map_err(|e| self.err(subject, e))
    }

    /// Saves `value` unless a record exists; returns the record in force.
    pub fn keep_first(
        &self,
        subject: &str,
        value: serde_json::Value,
    ) -> Result<serde_json::Value, RecordError> {
        if let Some(existing) = self.load(subject)? {
            return Ok(existing);
        }
        self.save(subject, &value)?;
        Ok(value)
    }

    pub fn remove(&self, subject: &str) -> Result<(), RecordError> {
        match std::fs::remove_file(self.path(subject)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.err(subject, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_wins_and_names_stay_inside() {
        let dir = std::env::temp_dir().join(format!(
            "tether-records-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let r = Records::new(&dir);
        let subject = "limit:host:/../../etc/passwd";
        assert!(r.path(subject).starts_with(dir.join("rollback")));
        assert_eq!(
            r.path(subject).parent(),
            Some(dir.join("rollback").as_path())
        );
        assert_ne!(r.path("a/b"), r.path("a_b"), "the CRC keeps subjects apart");
        assert_eq!(r.load(subject).expect("load"), None);
        let first = serde_json::json!({"previous": 1});
        assert_eq!(r.keep_first(subject, first.clone()).expect("keep"), first);
        assert_eq!(
            r.keep_first(subject, serde_json::json!({"previous": 2}))
                .expect("keep"),
            first,
            "a second change keeps the original previous state"
        );
        r.remove(subject).expect("remove");
        assert_eq!(r.load(subject).expect("load"), None);
        r.remove(subject).expect("removing twice is fine");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
