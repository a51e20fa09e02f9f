//! Decision durations as Go writes them, so that bouncers read them with
//! `time.ParseDuration`.
//!
//! Valhalla writes hours, minutes and seconds only, with any fraction on
//! the seconds (`3h59m58s`, `1m0s`, `0.5s`): hours are the largest unit,
//! as in Go, so a three-day block is `72h0m0s`, never `3d` (which Go
//! refuses). Go itself writes less than a second as `500ms`; Valhalla
//! writes `0.5s`, which Go parses the same and which keeps every duration
//! within one pattern, `^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$`. Decisions carry
//! whole seconds (see [`decision_duration`]).

use std::fmt::Write as _;

/// ipset's largest timeout, in seconds: the firewall bouncer hands a
/// decision's duration to ipset (and nftables) as the element's timeout,
/// and a larger one makes it refuse the element.
pub const MAX_DURATION_SECONDS: i64 = 2_147_483;

/// The duration a bouncer is sent for a block with `remaining_millis` left
/// (`None` for a permanent block): whole seconds rounded up, capped at
/// [`MAX_DURATION_SECONDS`], and never below one second. Bouncers cut the
/// duration to whole seconds for ipset and nftables, where a timeout of 0
/// means "never expires" and a negative one is refused, so a block with
/// half a second left must not be sent as `0.5s`.
pub fn decision_duration(remaining_millis: Option<i64>) -> String {
    let seconds = remaining_millis.map_or(MAX_DURATION_SECONDS, |left| {
        left.div_euclid(1000) + i64::from(left.rem_euclid(1000) > 0)
    });
    go_duration(seconds.clamp(1, MAX_DURATION_SECONDS) * 1000)
}

/// Writes a positive number of milliseconds in Go's duration syntax.
pub fn go_duration(millis: i64) -> String {
    let millis = millis.max(0);
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = millis / 1000 % 60;
    let fraction = millis % 1000;

    // Writing into a String cannot fail.
    let mut text = String::with_capacity(16);
    if hours > 0 {
        let _ = write!(text, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(text, "{minutes}m");
    }
    let _ = write!(text, "{seconds}");
    if fraction > 0 {
        let digits = format!("{fraction:03}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text.push('s');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading of Go's `time.ParseDuration` for the units Valhalla writes
    /// and a few it does not, to check that what is written parses back.
    fn parse_go_duration(text: &str) -> Result<f64, String> {
        let units = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ];
        if text == "0" {
            return Ok(0.0);
        }
        let mut rest = text;
        let mut total = 0.0;
        if rest.is_empty() {
            return Err("empty".to_string());
        }
        while !rest.is_empty() {
            let number_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("missing unit in {text}"))?;
            let number: f64 = rest[..number_end]
                .parse()
                .map_err(|_| format!("bad number in {text}"))?;
            rest = &rest[number_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            let scale = units
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| format!("unknown unit {unit} in {text}"))?;
            total += number * scale;
            rest = &rest[unit_end..];
        }
        Ok(total)
    }

    fn matches_pattern(text: &str) -> bool {
        // ^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$ without a regex crate.
        let mut rest = text;
        for unit in ['h', 'm'] {
            if let Some(end) = rest.find(unit) {
                let digits = &rest[..end];
                if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    rest = &rest[end + 1..];
                }
            }
        }
        let Some(number) = rest.strip_suffix('s') else {
            return rest.is_empty();
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
        let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
        digits(whole) && digits(fraction)
    }

    #[test]
    fn durations_are_written_in_hours_minutes_and_seconds() {
        assert_eq!(go_duration(14_398_000), "3h59m58s");
        assert_eq!(go_duration(14_398_250), "3h59m58.25s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(61_500), "1m1.5s");
        assert_eq!(go_duration(2_000), "2s");
        assert_eq!(go_duration(500), "0.5s");
        assert_eq!(go_duration(1), "0.001s");
        assert_eq!(go_duration(259_200_000), "72h0m0s");
    }

    #[test]
    fn a_permanent_or_very_long_block_is_capped_at_ipsets_maximum() {
        assert_eq!(decision_duration(None), "596h31m23s");
        assert_eq!(decision_duration(Some(i64::MAX)), "596h31m23s");
        assert_eq!(
            parse_go_duration(&decision_duration(None)).unwrap(),
            MAX_DURATION_SECONDS as f64
        );
    }

    #[test]
    fn an_almost_ended_block_never_gets_a_zero_or_negative_duration() {
        assert_eq!(decision_duration(Some(0)), "1s");
        assert_eq!(decision_duration(Some(-5_000)), "1s");
        assert_eq!(decision_duration(Some(1)), "1s");
        assert_eq!(decision_duration(Some(500)), "1s");
        assert_eq!(decision_duration(Some(1_001)), "2s");
        assert!(parse_go_duration(&decision_duration(Some(0))).unwrap() > 0.0);
    }

    #[test]
    fn every_written_duration_matches_the_pattern_and_parses_back() {
        let samples = [
            1,
            7,
            999,
            1000,
            59_999,
            60_000,
            3_599_999,
            3_600_000,
            86_400_000,
            259_200_000,
            MAX_DURATION_SECONDS * 1000,
        ];
        for millis in samples
            .into_iter()
            .chain((0..2000).map(|n| n * 7_919_117 + 3))
        {
            let text = decision_duration(Some(millis));
            assert!(matches_pattern(&text), "{millis} → {text}");
            assert!(!text.contains('d'), "{text}");
            let parsed = parse_go_duration(&text).unwrap();
            let expected = (millis as f64 / 1000.0)
                .ceil()
                .clamp(1.0, MAX_DURATION_SECONDS as f64);
            assert_eq!(parsed, expected, "{millis} → {text}");

            let exact = go_duration(millis);
            assert!(matches_pattern(&exact), "{millis} → {exact}");
            let parsed = parse_go_duration(&exact).unwrap();
            assert!((parsed - millis as f64 / 1000.0).abs() < 1e-6, "{exact}");
        }
    }

    #[test]
    fn the_test_parser_reads_go_written_durations() {
        assert_eq!(
            parse_go_duration("3h59m57.791015368s").unwrap().floor(),
            14397.0
        );
        assert_eq!(parse_go_duration("850ns").unwrap(), 850e-9);
        assert!(parse_go_duration("3d").is_err());
        assert!(!matches_pattern("3d"));
        assert!(!matches_pattern("500ms"));
    }
}
