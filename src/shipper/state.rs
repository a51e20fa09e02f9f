//! The state file: which file was shipped, and how far the server has
//! acknowledged it. Written after every acknowledged batch so a restart
//! resumes there: a crash between the acknowledgement and the write resends
//! a batch, which the server's fingerprints absorb.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::follow::{FileIdentity, Position};

/// The file's content: one small JSON object, readable by an operator.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    device: u64,
    inode: u64,
    offset: u64,
    line: u64,
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The default for a log file: beside it, named after it.
    pub fn beside(log: &Path) -> Self {
        let mut name = log.as_os_str().to_owned();
        name.push(".valhalla-ship.state");
        Self::new(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded position, or `None` without a usable state file. An
    /// unreadable one is not fatal: starting over resends lines the server
    /// already has, which it recognises.
    pub fn load(&self) -> Option<Position> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(state_file = %self.path.display(), %error,
                    "state file unreadable; shipping the log from its start");
                return None;
            }
        };
        match serde_json::from_slice::<Saved>(&text) {
            Ok(saved) => Some(Position {
                identity: FileIdentity {
                    device: saved.device,
                    inode: saved.inode,
                },
                offset: saved.offset,
                line: saved.line,
            }),
            Err(error) => {
                tracing::warn!(state_file = %self.path.display(), %error,
                    "state file malformed; shipping the log from its start");
                None
            }
        }
    }

    /// Records `position` atomically: a crash leaves the old state or the
    /// new one, never a torn file.
    pub fn save(&self, position: Position) -> io::Result<()> {
        let saved = Saved {
            device: position.identity.device,
            inode: position.identity.inode,
            offset: position.offset,
            line: position.line,
        };
        let mut temporary = self.path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);

        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(&saved).expect("the state serialises"))?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, &self.path)?;
        sync_directory_of(&self.path)
    }
}

/// Makes the rename itself durable, not only the file's content.
#[cfg(unix)]
fn sync_directory_of(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory_of(_path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> Position {
        Position {
            identity: FileIdentity {
                device: 2049,
                inode: 1_234_567,
            },
            offset: 98_765,
            line: 321,
        }
    }

    #[test]
    fn a_saved_position_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("ship.state"));

        state.save(position()).unwrap();
        let mut later = position();
        later.offset += 10;
        state.save(later).unwrap();

        assert_eq!(state.load(), Some(later));
        assert!(!dir.path().join("ship.state.tmp").exists());
    }

    #[test]
    fn a_missing_or_malformed_state_means_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("ship.state"));
        assert_eq!(state.load(), None);

        std::fs::write(state.path(), "{\"device\":").unwrap();

        assert_eq!(state.load(), None);
    }

    #[test]
    fn the_default_state_file_sits_beside_the_log() {
        let state = StateFile::beside(Path::new("/var/log/cowrie/cowrie.json"));

        assert_eq!(
            state.path(),
            Path::new("/var/log/cowrie/cowrie.json.valhalla-ship.state")
        );
    }
}
