//! Fuzzes the server's task list decoding (`model::decode_task_list`): any bytes decode or fail
//! cleanly, and no more entries come out than the input could hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = assistd::model::decode_task_list(data) {
        let entries = list.run.len()
            + list.stop.len()
            + list.test.len()
            + list.files.len()
            + list.sessions.len()
            + list.rejected.len();
        // Every entry is at least `{}` plus a separator in the input.
        assert!(
            entries <= data.len() / 2 + 1,
            "{entries} entries from {} bytes",
            data.len()
        );
    }
});
