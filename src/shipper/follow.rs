//! Following a growing log file like `tail -F`: only complete lines, across
//! rotation (the path names a new file) and truncation (the file shrank).
//!
//! The follower is synchronous and polled: the caller decides how long to
//! wait between polls, which keeps it free of any file-watching dependency
//! and easy to test on temporary files.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Lines longer than this are dropped: they cannot be real log records, and
/// buffering them would let one runaway write exhaust the shipper's memory.
/// It equals the largest batch, so every line fits in a batch of its own.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// How much one poll reads at most, so lines flow out while a large file is
/// read and memory stays bounded.
const READ_PER_POLL: usize = 1024 * 1024;

/// Lines handed over but not yet batched. Bounded, so a slow or absent
/// server holds the reading back instead of filling memory.
const FEED_CAPACITY: usize = 4096;

/// What the follower hands over.
#[derive(Debug)]
pub enum Feed {
    Line(Line),
    /// In `--once` mode: the end seen at start is reached; the bytes after
    /// the last newline are left for a later run.
    End {
        unfinished_bytes: u64,
    },
    Failed(io::Error),
}

/// Which file a path named: it survives renames, unlike the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }

    /// Without inodes a file cannot be told from its successor, so rotation
    /// is not detected; Valhalla's shippers run on Unix hosts.
    #[cfg(not(unix))]
    fn of(_metadata: &std::fs::Metadata) -> Self {
        Self {
            device: 0,
            inode: 0,
        }
    }
}

/// A point in a file just past a complete line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub identity: FileIdentity,
    /// Bytes from the start of the file.
    pub offset: u64,
    /// Lines before `offset`; the number of the line that ends there.
    pub line: u64,
}

/// One complete line, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    /// Just past this line's newline.
    pub position: Position,
}

/// Whether the follower reads on forever or stops at the end it saw first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Follow,
    /// Read up to the size the file had when it was opened, then finish.
    Once,
}

/// Follows one path.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    mode: Mode,
    /// Where to start in the first file opened, if it is the same file.
    resume: Option<Position>,
    current: Option<OpenFile>,
}

impl Follower {
    pub fn new(path: impl Into<PathBuf>, mode: Mode, resume: Option<Position>) -> Self {
        Self {
            path: path.into(),
            mode,
            resume,
            current: None,
        }
    }

    /// Reads what arrived since the last poll and returns its complete lines.
    /// An absent file yields nothing until it appears.
    pub fn poll(&mut self) -> io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        if !self.open_if_needed()? {
            return Ok(lines);
        }
        let current = self.current.as_mut().expect("opened above");
        let read = current.read_available(&mut lines)?;
        if self.mode == Mode::Once {
            if read == 0 {
                // Shrank below the size seen at opening: its end is here.
                current.limit = Some(current.read_offset);
            }
            return Ok(lines);
        }
        if read > 0 {
            return Ok(lines);
        }

        // Caught up with the open file: only now ask whether the path moved
        // on, so a rotated file is always read to its end first.
        let identity = current.identity;
        match path_identity(&self.path) {
            Ok(now) if now != identity => self.switch_to_new_file(&mut lines)?,
            Ok(_) => self.restart_if_truncated(&mut lines)?,
            // Renamed away and not yet replaced: keep reading the old file.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(lines)
    }

    /// In `Once` mode, whether the end seen at opening has been read.
    pub fn is_finished(&self) -> bool {
        match (&self.current, self.mode) {
            (Some(current), Mode::Once) => current.limit == Some(current.read_offset),
            _ => false,
        }
    }

    /// Bytes after the last complete line, waiting for their newline.
    pub fn unfinished_bytes(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(0, |current| current.read_offset - current.consumed.offset)
    }

    /// Opens the file if none is open; false while it does not exist.
    fn open_if_needed(&mut self) -> io::Result<bool> {
        if self.current.is_some() {
            return Ok(true);
        }
        let path = self
            .rotated_file_to_resume()
            .unwrap_or_else(|| self.path.clone());
        match OpenFile::open(&path, self.mode) {
            Ok(mut opened) => {
                opened.resume_from(self.resume.take(), &path)?;
                self.current = Some(opened);
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound && self.mode == Mode::Follow => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The log may have been rotated while the shipper was stopped. The
    /// file the state describes is then looked for beside the path, by its
    /// identity, so its unshipped end goes out before the new file; the
    /// usual rotation handling then moves on to the path.
    fn rotated_file_to_resume(&self) -> Option<PathBuf> {
        let saved = self.resume?;
        if self.mode == Mode::Once || path_identity(&self.path).ok() == Some(saved.identity) {
            return None;
        }
        let directory = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let found = std::fs::read_dir(directory)
            .ok()?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|candidate| path_identity(candidate).ok() == Some(saved.identity))?;
        tracing::info!(
            file = %found.display(),
            "the log was rotated while the shipper was stopped; finishing the rotated file first"
        );
        Some(found)
    }

    /// A file now shorter than what was read of it was truncated in place
    /// (`copytruncate`): its content is new, so it is read from 0.
    fn restart_if_truncated(&mut self, lines: &mut Vec<Line>) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        if current.file.metadata()?.len() >= current.read_offset {
            return Ok(());
        }
        tracing::info!(
            file = %self.path.display(),
            offset = current.read_offset,
            "log file truncated; reading it again from its start"
        );
        current.restart()?;
        current.read_available(lines)?;
        Ok(())
    }

    /// Finishes the rotated file, then opens its successor at offset 0.
    fn switch_to_new_file(&mut self, lines: &mut Vec<Line>) -> io::Result<()> {
        let Some(mut old) = self.current.take() else {
            return Ok(());
        };
        while old.read_available(lines)? > 0 {}
        if let Some(last) = old.take_unfinished_line() {
            tracing::warn!(
                file = %self.path.display(),
                line = last.position.line,
                "rotated log file ended without a newline; its last line is sent as it is"
            );
            lines.push(last);
        }
        tracing::info!(
            file = %self.path.display(),
            lines = old.consumed.line,
            "log file rotated; following the new file from its start"
        );
        match OpenFile::open(&self.path, self.mode) {
            Ok(mut new) => {
                new.read_available(lines)?;
                self.current = Some(new);
            }
            // Gone again already: the next poll waits for it.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(())
    }
}

/// Runs the follower on a thread of its own, so file reads never block
/// the runtime, polling every `poll_every` while the file is quiet. The
/// thread ends when the receiver is dropped, or after the end of a
/// `--once` run.
pub fn spawn(follower: Follower, poll_every: Duration) -> mpsc::Receiver<Feed> {
    let (sender, receiver) = mpsc::channel(FEED_CAPACITY);
    std::thread::Builder::new()
        .name("ship-follow".to_string())
        .spawn(move || feed(follower, &sender, poll_every))
        .expect("the operating system starts a thread");
    receiver
}

fn feed(mut follower: Follower, sender: &mpsc::Sender<Feed>, poll_every: Duration) {
    let mut told_waiting = false;
    let mut last_error = None;
    while !sender.is_closed() {
        let lines = match follower.poll() {
            Ok(lines) => lines,
            Err(error) if follower.mode == Mode::Once => {
                let _ = sender.blocking_send(Feed::Failed(error));
                return;
            }
            Err(error) => {
                // Said once per distinct error, not at every poll.
                let text = error.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(file = %follower.path.display(), error = %text,
                        "reading the log file failed; trying again");
                    last_error = Some(text);
                }
                std::thread::sleep(poll_every);
                continue;
            }
        };
        last_error = None;
        let quiet = lines.is_empty();
        for line in lines {
            if sender.blocking_send(Feed::Line(line)).is_err() {
                return;
            }
        }
        if follower.is_finished() {
            let unfinished_bytes = follower.unfinished_bytes();
            let _ = sender.blocking_send(Feed::End { unfinished_bytes });
            return;
        }
        if follower.current.is_none() && !told_waiting {
            tracing::info!(file = %follower.path.display(), "waiting for the log file to appear");
            told_waiting = true;
        }
        if quiet {
            std::thread::sleep(poll_every);
        }
    }
}

fn path_identity(path: &Path) -> io::Result<FileIdentity> {
    Ok(FileIdentity::of(&std::fs::metadata(path)?))
}

/// The file being read and how far.
///
/// Always `read_offset = consumed.offset + discarded + pending.len()`.
#[derive(Debug)]
struct OpenFile {
    file: File,
    identity: FileIdentity,
    /// Bytes read from the file so far.
    read_offset: u64,
    /// Just past the last complete line handed out (or dropped).
    consumed: Position,
    /// The start of a line whose newline has not been read yet.
    pending: Vec<u8>,
    /// Bytes of an over-long line already dropped from `pending`.
    discarded: u64,
    /// In `Once` mode, the size at opening: nothing past it is read.
    limit: Option<u64>,
}

impl OpenFile {
    fn open(path: &Path, mode: Mode) -> io::Result<Self> {
        let file = File::open(path)?;
        let metadata = file.metadata()?;
        let identity = FileIdentity::of(&metadata);
        let start = Position {
            identity,
            offset: 0,
            line: 0,
        };
        Ok(Self {
            file,
            identity,
            read_offset: 0,
            consumed: start,
            pending: Vec::new(),
            discarded: 0,
            limit: (mode == Mode::Once).then_some(metadata.len()),
        })
    }

    /// Starts at `saved` when it lies in this very file, else at 0.
    fn resume_from(&mut self, saved: Option<Position>, path: &Path) -> io::Result<()> {
        let Some(saved) = saved else {
            return Ok(());
        };
        let size = self.file.metadata()?.len();
        if saved.identity != self.identity || saved.offset > size {
            tracing::info!(
                file = %path.display(),
                "log file is not the one the state file describes; reading it from its start"
            );
            return Ok(());
        }
        self.file.seek(SeekFrom::Start(saved.offset))?;
        self.read_offset = saved.offset;
        self.consumed = saved;
        Ok(())
    }

    /// Back to offset 0 after a truncation; partial data is dropped.
    fn restart(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.read_offset = 0;
        self.consumed = Position {
            identity: self.identity,
            offset: 0,
            line: 0,
        };
        self.pending.clear();
        self.discarded = 0;
        Ok(())
    }

    /// Reads up to `READ_PER_POLL` bytes; returns how many were read.
    fn read_available(&mut self, lines: &mut Vec<Line>) -> io::Result<usize> {
        let mut buffer = vec![0; 64 * 1024];
        let mut total = 0;
        while total < READ_PER_POLL {
            let allowed = match self.limit {
                Some(limit) => (limit - self.read_offset).min(buffer.len() as u64) as usize,
                None => buffer.len(),
            };
            if allowed == 0 {
                break;
            }
            let read = match self.file.read(&mut buffer[..allowed]) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            self.read_offset += read as u64;
            total += read;
            self.split_lines(&buffer[..read], lines);
        }
        Ok(total)
    }

    fn split_lines(&mut self, mut data: &[u8], lines: &mut Vec<Line>) {
        while let Some(newline) = data.iter().position(|byte| *byte == b'\n') {
            let (piece, rest) = (&data[..newline], &data[newline + 1..]);
            data = rest;
            let length = self.discarded + (self.pending.len() + piece.len()) as u64;
            self.consumed.offset += length + 1;
            self.consumed.line += 1;
            if length > MAX_LINE_BYTES as u64 {
                self.report_dropped_line(length);
                continue;
            }
            let mut bytes = std::mem::take(&mut self.pending);
            bytes.extend_from_slice(piece);
            lines.push(Line {
                bytes,
                position: self.consumed,
            });
        }
        self.hold_unfinished(data);
    }

    /// Keeps the start of an unfinished line, unless it is already too long.
    fn hold_unfinished(&mut self, data: &[u8]) {
        if self.discarded > 0 {
            self.discarded += data.len() as u64;
        } else if self.pending.len() + data.len() > MAX_LINE_BYTES {
            self.discarded = (self.pending.len() + data.len()) as u64;
            self.pending = Vec::new();
        } else {
            self.pending.extend_from_slice(data);
        }
    }

    fn report_dropped_line(&mut self, length: u64) {
        tracing::warn!(
            line = self.consumed.line,
            length_bytes = length,
            limit_bytes = MAX_LINE_BYTES,
            "log line too long to be a record; it is skipped"
        );
        self.discarded = 0;
        self.pending.clear();
    }

    /// The last line of a file that will not grow any more.
    fn take_unfinished_line(&mut self) -> Option<Line> {
        if self.pending.is_empty() || self.discarded > 0 {
            return None;
        }
        let bytes = std::mem::take(&mut self.pending);
        self.consumed.offset += bytes.len() as u64;
        self.consumed.line += 1;
        Some(Line {
            bytes,
            position: self.consumed,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|line| String::from_utf8(line.bytes.clone()).unwrap())
            .collect()
    }

    fn log_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("cowrie.json")
    }

    #[test]
    fn a_missing_file_yields_nothing_until_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        let mut follower = Follower::new(&path, Mode::Follow, None);

        assert!(follower.poll().unwrap().is_empty());
        append(&path, "one\n");

        assert_eq!(texts(&follower.poll().unwrap()), ["one"]);
    }

    #[test]
    fn a_partial_last_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\ntw");
        let mut follower = Follower::new(&path, Mode::Follow, None);

        let first = follower.poll().unwrap();
        assert_eq!(texts(&first), ["one"]);
        assert_eq!(first[0].position.offset, 4);
        assert_eq!(follower.unfinished_bytes(), 2);
        assert!(follower.poll().unwrap().is_empty());

        append(&path, "o\nthree\n");
        let second = follower.poll().unwrap();
        assert_eq!(texts(&second), ["two", "three"]);
        assert_eq!(second[1].position.offset, 14);
        assert_eq!(second[1].position.line, 3);
        assert_eq!(follower.unfinished_bytes(), 0);
    }

    #[test]
    fn blank_lines_and_carriage_returns_are_kept_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\r\n\ntwo\n");
        let mut follower = Follower::new(&path, Mode::Follow, None);

        assert_eq!(texts(&follower.poll().unwrap()), ["one\r", "", "two"]);
    }

    #[test]
    fn a_truncated_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "first line\nsecond line\n");
        let mut follower = Follower::new(&path, Mode::Follow, None);
        assert_eq!(follower.poll().unwrap().len(), 2);

        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        append(&path, "new\n");

        let lines = follower.poll().unwrap();
        assert_eq!(texts(&lines), ["new"]);
        assert_eq!(lines[0].position.offset, 4);
        assert_eq!(lines[0].position.line, 1);
    }

    #[test]
    fn a_rotated_file_is_finished_before_its_successor_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "old 1\n");
        let mut follower = Follower::new(&path, Mode::Follow, None);
        assert_eq!(texts(&follower.poll().unwrap()), ["old 1"]);
        let old_identity = path_identity(&path).unwrap();

        append(&path, "old 2\nold 3\n");
        std::fs::rename(&path, dir.path().join("cowrie.json.1")).unwrap();
        append(&path, "new 1\n");

        let lines = follower.poll().unwrap();
        assert_eq!(texts(&lines), ["old 2", "old 3"]);
        assert_eq!(lines[1].position.identity, old_identity);
        let lines = follower.poll().unwrap();
        assert_eq!(texts(&lines), ["new 1"]);
        assert_ne!(lines[0].position.identity, old_identity);
        assert_eq!((lines[0].position.offset, lines[0].position.line), (6, 1));
    }

    #[test]
    fn a_rotated_file_that_ends_without_a_newline_gives_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "old 1\nold 2");
        let mut follower = Follower::new(&path, Mode::Follow, None);
        assert_eq!(texts(&follower.poll().unwrap()), ["old 1"]);

        std::fs::rename(&path, dir.path().join("cowrie.json.1")).unwrap();
        append(&path, "new 1\n");

        let mut lines = follower.poll().unwrap();
        lines.extend(follower.poll().unwrap());
        assert_eq!(texts(&lines), ["old 2", "new 1"]);
    }

    #[test]
    fn while_the_path_is_missing_after_a_rename_the_old_file_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\n");
        let mut follower = Follower::new(&path, Mode::Follow, None);
        follower.poll().unwrap();
        let moved = dir.path().join("cowrie.json.1");
        std::fs::rename(&path, &moved).unwrap();

        assert!(follower.poll().unwrap().is_empty());
        append(&moved, "two\n");

        assert_eq!(texts(&follower.poll().unwrap()), ["two"]);
    }

    #[test]
    fn a_saved_position_in_the_same_file_is_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\ntwo\nthree\n");
        let mut first = Follower::new(&path, Mode::Follow, None);
        let saved = first.poll().unwrap()[1].position;

        let mut resumed = Follower::new(&path, Mode::Follow, Some(saved));
        let lines = resumed.poll().unwrap();

        assert_eq!(texts(&lines), ["three"]);
        assert_eq!(lines[0].position.line, 3);
    }

    #[test]
    fn a_file_rotated_while_the_shipper_was_stopped_is_finished_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\ntwo\n");
        let saved = Follower::new(&path, Mode::Follow, None).poll().unwrap()[0].position;
        std::fs::rename(&path, dir.path().join("cowrie.json.2026-12-04")).unwrap();
        append(&path, "new\n");

        let mut resumed = Follower::new(&path, Mode::Follow, Some(saved));
        let mut lines = resumed.poll().unwrap();
        lines.extend(resumed.poll().unwrap());

        assert_eq!(texts(&lines), ["two", "new"]);
    }

    #[test]
    fn a_saved_position_of_another_file_starts_from_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\ntwo\n");
        let mut saved = Follower::new(&path, Mode::Follow, None).poll().unwrap()[0].position;
        saved.identity.inode = saved.identity.inode.wrapping_add(1);

        let mut resumed = Follower::new(&path, Mode::Follow, Some(saved));

        assert_eq!(texts(&resumed.poll().unwrap()), ["one", "two"]);
    }

    #[test]
    fn a_saved_position_past_the_end_starts_from_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\n");
        let mut saved = Follower::new(&path, Mode::Follow, None).poll().unwrap()[0].position;
        saved.offset = 100;

        let mut resumed = Follower::new(&path, Mode::Follow, Some(saved));

        assert_eq!(texts(&resumed.poll().unwrap()), ["one"]);
    }

    #[test]
    fn once_mode_stops_at_the_end_seen_when_the_file_was_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        append(&path, "one\ntwo\nthr");
        let mut follower = Follower::new(&path, Mode::Once, None);

        assert_eq!(texts(&follower.poll().unwrap()), ["one", "two"]);
        append(&path, "ee\nfour\n");
        assert!(follower.poll().unwrap().is_empty());

        assert!(follower.is_finished());
        assert_eq!(follower.unfinished_bytes(), 3);
    }

    #[test]
    fn once_mode_fails_on_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut follower = Follower::new(log_in(&dir), Mode::Once, None);

        let error = follower.poll().unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_over_long_line_is_skipped_and_the_next_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_in(&dir);
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        append(&path, &format!("short\n{long}\nafter\n"));
        let mut follower = Follower::new(&path, Mode::Follow, None);

        let mut lines = Vec::new();
        for _ in 0..20 {
            lines.extend(follower.poll().unwrap());
        }

        let lengths: Vec<usize> = lines.iter().map(|line| line.bytes.len()).collect();
        assert_eq!(lengths, [5, 5], "only the short lines are kept");
        let after = lines[1].position;
        assert_eq!(after.line, 3);
        assert_eq!(after.offset, (6 + long.len() + 1 + 6) as u64);
    }
}
