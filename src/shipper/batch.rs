//! Gathering lines into batches: up to a number of lines, a size, or what
//! arrived within a short wait, whichever comes first.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::follow::{Feed, Line, Position};
use super::Stop;

/// The largest body sent: half the server's default bulk limit, so a batch
/// passes with room to spare.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// When a batch is complete.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// How long the first line of a batch waits for company.
    pub flush_after: Duration,
}

/// Lines to send in one request, in file order.
#[derive(Debug, Default)]
pub struct Batch {
    /// The lines, each followed by a newline.
    body: Vec<u8>,
    /// For each line: where it ends in `body`, and in its file.
    ends: Vec<(usize, Position)>,
    /// Just past the last line taken, including lines not sent.
    end: Option<Position>,
}

impl Batch {
    /// Lines to send.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Where the state may point once this batch is acknowledged.
    pub fn end(&self) -> Option<Position> {
        self.end
    }

    fn has_room_for(&self, line: &Line, limits: &BatchLimits) -> bool {
        self.is_empty()
            || (self.ends.len() < limits.max_lines
                && self.body.len() + line.bytes.len() < limits.max_bytes)
    }

    fn push(&mut self, line: Line) {
        self.body.extend_from_slice(&line.bytes);
        self.body.push(b'\n');
        self.ends.push((self.body.len(), line.position));
        self.end = Some(line.position);
    }

    /// Moves the end past a line that is not sent.
    fn pass_over(&mut self, position: Position) {
        self.end = Some(position);
    }

    /// The line number in its file of the body's line `number` (from 1, as
    /// the server counts them).
    pub fn file_line(&self, number: usize) -> Option<u64> {
        let index = number.checked_sub(1)?;
        self.ends.get(index).map(|(_, position)| position.line)
    }

    /// Two halves, for a server that found the whole too large. The first
    /// ends at its own last line; the second keeps the original end.
    pub fn split(self) -> (Batch, Batch) {
        let middle = self.ends.len() / 2;
        let cut = match middle {
            0 => 0,
            _ => self.ends[middle - 1].0,
        };
        let first = Batch {
            body: self.body[..cut].to_vec(),
            ends: self.ends[..middle].to_vec(),
            end: self.ends[..middle].last().map(|(_, position)| *position),
        };
        let second = Batch {
            body: self.body[cut..].to_vec(),
            ends: self.ends[middle..]
                .iter()
                .map(|(at, position)| (at - cut, *position))
                .collect(),
            end: self.end,
        };
        (first, second)
    }
}

/// A batch and what came with it.
#[derive(Debug)]
pub struct Collected {
    pub batch: Batch,
    /// Lines taken from the file, sent or not.
    pub lines_read: u64,
    /// File line numbers of lines refused without asking the server.
    pub refused: Vec<u64>,
    pub then: Then,
}

/// What the shipper does after this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Continue,
    /// The end of a `--once` run.
    Finish {
        unfinished_bytes: u64,
    },
    Stop,
}

/// Turns the follower's lines into batches.
pub struct Collector {
    feed: mpsc::Receiver<Feed>,
    limits: BatchLimits,
    /// A line that did not fit in the previous batch.
    carried: Option<Line>,
}

impl Collector {
    pub fn new(feed: mpsc::Receiver<Feed>, limits: BatchLimits) -> Self {
        Self {
            feed,
            limits,
            carried: None,
        }
    }

    /// Waits for the next batch. The wait for its first line is unbounded
    /// (the log may be quiet); later lines wait at most `flush_after`.
    pub async fn next_batch(&mut self, stop: &mut Stop) -> std::io::Result<Collected> {
        let mut collected = Collected {
            batch: Batch::default(),
            lines_read: 0,
            refused: Vec::new(),
            then: Then::Continue,
        };
        let mut deadline = None;
        if let Some(line) = self.carried.take() {
            take(&mut collected, line);
            deadline = Some(Instant::now() + self.limits.flush_after);
        }
        while collected.batch.len() < self.limits.max_lines {
            let received = tokio::select! {
                biased;
                () = stop.requested() => {
                    collected.then = Then::Stop;
                    break;
                }
                received = receive(&mut self.feed, deadline) => received,
            };
            match received {
                Received::Feed(Feed::Line(line)) => {
                    if !collected.batch.has_room_for(&line, &self.limits) {
                        self.carried = Some(line);
                        break;
                    }
                    take(&mut collected, line);
                    deadline.get_or_insert_with(|| Instant::now() + self.limits.flush_after);
                }
                Received::Feed(Feed::End { unfinished_bytes }) => {
                    collected.then = Then::Finish { unfinished_bytes };
                    break;
                }
                Received::Feed(Feed::Failed(error)) => return Err(error),
                Received::Closed => {
                    collected.then = Then::Finish {
                        unfinished_bytes: 0,
                    };
                    break;
                }
                Received::TimedOut => break,
            }
        }
        Ok(collected)
    }
}

/// Adds a line to the batch, or refuses it here.
fn take(collected: &mut Collected, line: Line) {
    collected.lines_read += 1;
    if starts_an_array(&line.bytes) {
        collected.refused.push(line.position.line);
        collected.batch.pass_over(line.position);
    } else {
        collected.batch.push(line);
    }
}

/// The bulk endpoint reads a body that starts with `[` as one JSON array,
/// so such a line first in a batch would make the whole batch unreadable.
/// No format's record is an array, so the line is refused here instead.
fn starts_an_array(bytes: &[u8]) -> bool {
    bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[')
}

enum Received {
    Feed(Feed),
    Closed,
    TimedOut,
}

async fn receive(feed: &mut mpsc::Receiver<Feed>, deadline: Option<Instant>) -> Received {
    let message = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, feed.recv()).await {
            Ok(message) => message,
            Err(_) => return Received::TimedOut,
        },
        None => feed.recv().await,
    };
    message.map_or(Received::Closed, Received::Feed)
}

#[cfg(test)]
mod tests {
    use super::super::follow::FileIdentity;
    use super::*;

    fn line(text: &str, number: u64) -> Line {
        Line {
            bytes: text.as_bytes().to_vec(),
            position: Position {
                identity: FileIdentity {
                    device: 1,
                    inode: 2,
                },
                offset: number * 10,
                line: number,
            },
        }
    }

    fn limits(max_lines: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_lines,
            max_bytes,
            flush_after: Duration::from_millis(50),
        }
    }

    async fn collector_with(feed: Vec<Feed>, limits: BatchLimits) -> Collector {
        let (sender, receiver) = mpsc::channel(64);
        for message in feed {
            sender.send(message).await.unwrap();
        }
        // Keeps the channel open, as a following follower would.
        std::mem::forget(sender);
        Collector::new(receiver, limits)
    }

    #[tokio::test]
    async fn a_batch_ends_at_its_line_limit_and_the_rest_waits() {
        let feed = (1..=5).map(|n| Feed::Line(line("{}", n))).collect();
        let mut collector = collector_with(feed, limits(2, 1024)).await;
        let mut stop = Stop::never();

        let first = collector.next_batch(&mut stop).await.unwrap();
        let second = collector.next_batch(&mut stop).await.unwrap();

        assert_eq!((first.batch.len(), second.batch.len()), (2, 2));
        assert_eq!(first.batch.body(), b"{}\n{}\n");
        assert_eq!(second.batch.end().unwrap().line, 4);
    }

    #[tokio::test]
    async fn a_line_that_would_overflow_the_size_goes_to_the_next_batch() {
        let feed = vec![
            Feed::Line(line("aaaa", 1)),
            Feed::Line(line("bbbb", 2)),
            Feed::Line(line("cccc", 3)),
        ];
        let mut collector = collector_with(feed, limits(100, 10)).await;
        let mut stop = Stop::never();

        let first = collector.next_batch(&mut stop).await.unwrap();
        let second = collector.next_batch(&mut stop).await.unwrap();

        assert_eq!(first.batch.body(), b"aaaa\nbbbb\n");
        assert_eq!(second.batch.body(), b"cccc\n");
        assert_eq!(
            second.then,
            Then::Continue,
            "closed by the wait, not the feed"
        );
    }

    #[tokio::test]
    async fn the_end_of_a_once_run_closes_the_last_batch() {
        let feed = vec![
            Feed::Line(line("{}", 1)),
            Feed::End {
                unfinished_bytes: 3,
            },
        ];
        let mut collector = collector_with(feed, limits(100, 1024)).await;

        let last = collector.next_batch(&mut Stop::never()).await.unwrap();

        assert_eq!(last.batch.len(), 1);
        assert_eq!(
            last.then,
            Then::Finish {
                unfinished_bytes: 3
            }
        );
    }

    #[tokio::test]
    async fn an_array_line_is_refused_here_but_moves_the_end() {
        let feed = vec![Feed::Line(line("  [1,2]", 7)), Feed::Line(line("{}", 8))];
        let mut collector = collector_with(feed, limits(2, 1024)).await;

        let collected = collector.next_batch(&mut Stop::never()).await.unwrap();

        assert_eq!(collected.refused, [7]);
        assert_eq!(collected.lines_read, 2);
        assert_eq!(collected.batch.body(), b"{}\n");
        assert_eq!(collected.batch.file_line(1), Some(8));
    }

    #[test]
    fn a_split_batch_keeps_every_line_once_and_its_positions() {
        let mut batch = Batch::default();
        for number in 1..=5 {
            batch.push(line(&format!("line {number}"), number));
        }

        let (first, second) = batch.split();

        assert_eq!(first.body(), b"line 1\nline 2\n");
        assert_eq!(first.end().unwrap().line, 2);
        assert_eq!(second.body(), b"line 3\nline 4\nline 5\n");
        assert_eq!(second.file_line(1), Some(3));
        assert_eq!(second.end().unwrap().line, 5);
    }
}
