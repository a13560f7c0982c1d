//! Fuzzes the config file (`config::Config::from_json`): a config or a `ConfigError`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = assistd::config::Config::from_json(Path::new("fuzz.json"), data);
});
