//! Fuzzes `update_check` answers (`remote::update::parse_offer`): an offer, none, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(offer)) = assistd::remote::update::parse_offer(data) {
        assert!(!offer.url.is_empty());
    }
});
