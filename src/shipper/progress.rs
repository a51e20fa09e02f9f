//! What a run has done so far: running totals, a progress line for people
//! watching a `--once` import, and the summary it ends with.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Redrawing more often than this only costs time and flickers.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// Counts of a run, by what the server (or the shipper) made of each line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Complete lines taken from the file.
    pub lines_read: u64,
    pub accepted: u64,
    pub skipped: u64,
    pub rejected: u64,
    /// Of the accepted lines, those the server already had.
    pub duplicates: u64,
}

/// The summary line: counts, time taken and rate.
pub fn summary(totals: &Totals, elapsed: Duration) -> String {
    format!(
        "{} lines read, {} accepted, {} skipped, {} rejected, {} duplicates \
         in {:.2} s ({} lines/s)",
        totals.lines_read,
        totals.accepted,
        totals.skipped,
        totals.rejected,
        totals.duplicates,
        elapsed.as_secs_f64(),
        rate(totals.lines_read, elapsed)
    )
}

fn rate(lines: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        (lines as f64 / seconds).round() as u64
    } else {
        0
    }
}

/// A self-drawn line on stderr: how far through the file, and how fast.
/// Drawn only on a terminal, where `\r` rewrites it in place; in a log
/// file it would only add noise.
pub struct Progress {
    enabled: bool,
    started: Instant,
    last_drawn: Option<Instant>,
    /// The file's size when the run started.
    end_bytes: u64,
    drawn: bool,
}

impl Progress {
    pub fn new(wanted: bool, end_bytes: u64) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_drawn: None,
            end_bytes,
            drawn: false,
        }
    }

    /// Redraws after a batch, unless the last drawing is too recent.
    pub fn update(&mut self, offset: u64, totals: &Totals) {
        if !self.enabled
            || self
                .last_drawn
                .is_some_and(|drawn| drawn.elapsed() < REDRAW_EVERY)
        {
            return;
        }
        self.last_drawn = Some(Instant::now());
        let line = self.line(offset, totals);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{line}\x1b[K");
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Clears the line, so the summary or a log line starts clean.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }

    fn line(&self, offset: u64, totals: &Totals) -> String {
        let percent = (offset.min(self.end_bytes) * 100)
            .checked_div(self.end_bytes)
            .unwrap_or(100);
        format!(
            "shipping: {percent:>3}%  {} lines  {} lines/s",
            totals.lines_read,
            rate(totals.lines_read, self.started.elapsed())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_states_every_count_the_time_and_the_rate() {
        let totals = Totals {
            lines_read: 133,
            accepted: 74,
            skipped: 59,
            rejected: 0,
            duplicates: 2,
        };

        let text = summary(&totals, Duration::from_millis(500));

        assert_eq!(
            text,
            "133 lines read, 74 accepted, 59 skipped, 0 rejected, 2 duplicates in 0.50 s \
             (266 lines/s)"
        );
    }

    #[test]
    fn the_progress_line_shows_the_share_of_the_file() {
        let progress = Progress::new(false, 1000);
        let totals = Totals {
            lines_read: 10,
            ..Totals::default()
        };

        assert!(progress
            .line(250, &totals)
            .starts_with("shipping:  25%  10 lines"));
        assert!(progress.line(5000, &totals).starts_with("shipping: 100%"));
    }
}
