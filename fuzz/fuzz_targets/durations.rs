//! Durations as written in specs (`teal-api`) and in the router's config:
//! parsing never panics, and what parses prints back to the same value (the
//! router's, which accepts fractions, to within a millisecond).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = text.parse::<teal_api::Duration>() {
        let printed = d.to_string();
        let again: teal_api::Duration = printed.parse().unwrap_or_else(|e| {
            panic!("{text:?} printed as {printed:?}, which does not parse: {e}")
        });
        assert_eq!(d, again, "{text:?} -> {printed:?}");
    }
    if let Ok(d) = teal_router::parse_duration(text) {
        let printed = teal_router::format_duration(d);
        let again = teal_router::parse_duration(&printed).unwrap_or_else(|e| {
            panic!("{text:?} printed as {printed:?}, which does not parse: {e}")
        });
        // Printed with millisecond precision (it is for messages).
        let diff = d.abs_diff(again);
        assert!(
            diff < std::time::Duration::from_millis(1),
            "{text:?} -> {printed:?} is off by {diff:?}"
        );
    }
});
