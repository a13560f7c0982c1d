//! Fuzzes crontab files (`source::crontab::import`, which calls `schedule::crontab`): any text
//! gives task files and problems, no more of them than it has lines, and every task file loads.
#![no_main]

use assistd::source::crontab::{import, ImportConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for system in [false, true] {
        let cfg = ImportConfig {
            system,
            user: None,
            prefix: "fuzz".to_string(),
        };
        let got = import(text, &cfg);
        assert!(got.tasks.len() + got.problems.len() <= text.lines().count());
        for t in &got.tasks {
            let _ = assistd::source::local::parse_task(t.json.as_bytes(), "fuzz", 0);
        }
    }
});
