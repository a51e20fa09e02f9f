//! Counts of the requests this process answered, by route, method and
//! status, with their durations, for `GET /metrics`: the rates, errors and
//! latencies an operator alerts on (a burst of 401s, checks slowing down,
//! 503s while the database is away).
//!
//! Counted where each request is logged ([`super::log_request`]), the
//! router's outermost layer, so every answer is counted: rate-limit
//! refusals, 408 past the deadline and 500 for a panic included. The counts
//! are this process's since it started, as Prometheus counters are: each
//! replica is scraped on its own.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;

/// Upper bounds of the duration histogram's buckets, in seconds: from a
/// blocklist check (well under a millisecond) to an import of a million
/// lines (tens of seconds).
const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The methods the API answers keep their name as a label; anything else a
/// client sends is counted as `other`, so that no client can add series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Status codes span 100 to 599.
const STATUSES: usize = 500;

/// One route and method's requests. Atomics only, so that two requests
/// never wait for each other to be counted.
struct Series {
    /// By status code, less 100.
    statuses: Box<[AtomicU64]>,
    /// Requests at or under each bound of [`BUCKETS`] and above the one
    /// before (summed when written, as the format's buckets are cumulative).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    micros: AtomicU64,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }
}

/// Route template, then method label.
type SeriesMap = HashMap<String, HashMap<&'static str, Arc<Series>>>;

/// The request counts of this process. Cheap to clone; clones share counts.
#[derive(Clone, Default)]
pub struct RequestMetrics {
    /// Keyed by route template (never the raw path, which a client picks)
    /// and method label.
    series: Arc<RwLock<SeriesMap>>,
}

impl RequestMetrics {
    /// Counts one answered request.
    pub fn record(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let series = self.series_for(route, method_label(method));

        if let Some(count) = usize::from(status)
            .checked_sub(100)
            .and_then(|index| series.statuses.get(index))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        series.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        series.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The series of a route and method, made on its first request. Routes
    /// are the router's templates and `unmatched`, methods a fixed few, so
    /// the map stays small whatever clients send.
    fn series_for(&self, route: &str, method: &'static str) -> Arc<Series> {
        let found = self
            .read()
            .get(route)
            .and_then(|methods| methods.get(method))
            .cloned();
        if let Some(series) = found {
            return series;
        }
        self.series
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(route.to_string())
            .or_default()
            .entry(method)
            .or_default()
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SeriesMap> {
        self.series
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counts in Prometheus's text format: a counter of requests by
    /// route, method and status, and a histogram of their durations by
    /// route and method. Series are sorted, so that scrapes compare.
    pub fn render(&self, text: &mut String) {
        let mut all: Vec<((String, &str), Arc<Series>)> = self
            .read()
            .iter()
            .flat_map(|(route, methods)| {
                methods
                    .iter()
                    .map(|(method, series)| ((route.clone(), *method), series.clone()))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));

        let name = "valhalla_http_requests_total";
        let _ = writeln!(
            text,
            "# HELP {name} Requests this process answered since it started, by route, method and \
             status."
        );
        let _ = writeln!(text, "# TYPE {name} counter");
        for ((route, method), series) in &all {
            let labels = labels(route, method);
            for (index, count) in series.statuses.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let status = index + 100;
                    let _ = writeln!(text, "{name}{{{labels},status=\"{status}\"}} {count}");
                }
            }
        }

        let name = "valhalla_http_request_duration_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Time from a request's arrival to its answer, by route and method."
        );
        let _ = writeln!(text, "# TYPE {name} histogram");
        for ((route, method), series) in &all {
            let labels = labels(route, method);
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&series.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    text,
                    "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = series.count.load(Ordering::Relaxed);
            let seconds = series.micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(text, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(text, "{name}_sum{{{labels}}} {seconds}");
            let _ = writeln!(text, "{name}_count{{{labels}}} {count}");
        }
    }
}

fn labels(route: &str, method: &str) -> String {
    format!("route=\"{}\",method=\"{method}\"", escape_label(route))
}

/// Route templates hold `{` and `}`, which need no escape; a quote, a
/// backslash or a line break would, as the format asks.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_status_and_timed_in_cumulative_buckets() {
        let metrics = RequestMetrics::default();
        let route = "/security/policy/blocks/{id}";
        metrics.record(route, &Method::GET, 200, Duration::from_micros(300));
        metrics.record(route, &Method::GET, 200, Duration::from_millis(3));
        metrics.record(route, &Method::GET, 404, Duration::from_secs(60));
        metrics.record(
            route,
            &Method::from_bytes(b"BREW").unwrap(),
            405,
            Duration::ZERO,
        );

        let mut text = String::new();
        metrics.render(&mut text);

        let labels = "route=\"/security/policy/blocks/{id}\",method=\"GET\"";
        for line in [
            format!("valhalla_http_requests_total{{{labels},status=\"200\"}} 2"),
            format!("valhalla_http_requests_total{{{labels},status=\"404\"}} 1"),
            "valhalla_http_requests_total{route=\"/security/policy/blocks/{id}\",\
             method=\"other\",status=\"405\"} 1"
                .to_string(),
            format!("valhalla_http_request_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 1"),
            format!("valhalla_http_request_duration_seconds_bucket{{{labels},le=\"0.0025\"}} 1"),
            format!("valhalla_http_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 2"),
            format!("valhalla_http_request_duration_seconds_bucket{{{labels},le=\"30\"}} 2"),
            format!("valhalla_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("valhalla_http_request_duration_seconds_sum{{{labels}}} 60.0033"),
            format!("valhalla_http_request_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(
                text.lines().any(|written| written == line),
                "{line} not in\n{text}"
            );
        }
    }
}
