//! `teal.yaml` (local mode): parsing and validation never panic, an accepted
//! config has no validation errors, and survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teal_local::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, std::path::Path::new("/srv/app")) else {
        return;
    };
    let errors = config.validate();
    assert!(
        errors.is_empty(),
        "parse accepted a config with errors: {errors:?}"
    );
    let value = serde_json::to_value(&config).unwrap();
    let again: Config = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("an accepted config does not deserialize again: {e}\n{value}"));
    assert_eq!(config, again, "{value}");
});
