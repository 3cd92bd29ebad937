//! Route tables as the admin API receives them: parsing never panics, what
//! is accepted is valid, and survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teal_router::RouteTable;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = RouteTable::from_json(data) else {
        return;
    };
    table
        .validate()
        .expect("from_json accepted an invalid table");
    let json = serde_json::to_vec(&table).unwrap();
    let again = RouteTable::from_json(&json).unwrap_or_else(|e| {
        panic!(
            "an accepted table does not parse after a round trip: {e}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(table, again);
});
