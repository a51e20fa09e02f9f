//! Checks on names that people read back in lists, the dashboard and logs.

/// Unicode's explicit direction controls: embeddings, overrides, isolates
/// and their terminators (U+202A–U+202E, U+2066–U+2069). One inside a name
/// reorders how the text after it is shown, so `honeypot-gpj.exe` can show
/// as `honeypot-exe.jpg` and a blocked user can pass for another (the
/// "Trojan Source" spoofing, CVE-2021-42574). Unlike control characters
/// they are format characters, which `char::is_control` does not catch.
/// The direction marks (LRM, RLM, ALM) stay allowed: they only nudge
/// neutral characters, and right-to-left names use them legitimately.
pub fn is_direction_control(character: char) -> bool {
    matches!(character, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::is_direction_control;

    #[test]
    fn overrides_and_isolates_are_direction_controls_and_marks_are_not() {
        for control in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}',
        ] {
            assert!(is_direction_control(control), "{:?}", control);
        }
        for allowed in [
            '\u{200E}', '\u{200F}', '\u{061C}', 'a', 'ש', '\u{2065}', '\u{202F}',
        ] {
            assert!(!is_direction_control(allowed), "{:?}", allowed);
        }
    }
}
