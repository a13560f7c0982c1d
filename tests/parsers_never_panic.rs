//! Every parser of outside input, fed a few thousand inputs mutated from the fuzz seeds
//! (`fuzz/corpus/<target>/`) by a fixed xorshift generator: each returns, none panics, and
//! what comes out is bounded by what went in. The same properties as the fuzz targets
//! (`make fuzz`), at a size that fits in `make test`; deterministic, so a failure repeats.

use std::path::{Path, PathBuf};

use assistd::schedule::tz::{LocalInstant, NamedZone, Zone, ZoneDb};
use assistd::schedule::{Schedule, ScheduleKind};
use chrono::{DateTime, Duration};

/// Inputs per parser.
const ROUNDS: usize = 3000;

/// Marsaglia's xorshift64: deterministic and dependency-free.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes and tokens worth splicing into the inputs of text parsers.
const SPLICES: [&[u8]; 16] = [
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"1e308",
    b"-1",
    b"99999999999999999999",
    b"\\u0000",
    b" ",
    b"*/0",
    b"L",
    b"\xff",
];

/// The committed seeds of one fuzz target.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read seed"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// `ROUNDS` inputs for `target`: its seeds as they are, then seeds with bytes flipped,
/// removed, duplicated or spliced, and cut at a random length.
fn inputs(target: &str, seed: u64) -> Vec<Vec<u8>> {
    let seeds = seeds(target);
    let mut rng = XorShift(seed);
    let mut out = seeds.clone();
    while out.len() < ROUNDS {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(5) {
                0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => {
                    let splice = SPLICES[rng.below(SPLICES.len())];
                    bytes.splice(at..at, splice.iter().copied());
                }
                3 => {
                    let end = (at + rng.below(16)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
                _ => bytes.truncate(at),
            }
        }
        out.push(bytes);
    }
    out
}

#[test]
fn task_lists() {
    for input in inputs("task_list", 1) {
        if let Ok(list) = assistd::model::decode_task_list(&input) {
            let entries = list.run.len()
                + list.stop.len()
                + list.test.len()
                + list.files.len()
                + list.sessions.len()
                + list.rejected.len();
            assert!(entries <= input.len() / 2 + 1, "{entries} from {input:?}");
        }
    }
}

#[test]
fn local_task_files() {
    for input in inputs("local_task", 2) {
        let _ = assistd::source::local::parse_task(&input, "prop", 1_700_000_000_000);
    }
}

#[test]
fn crontab_files() {
    for input in inputs("crontab", 9) {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        for system in [false, true] {
            let cfg = assistd::source::crontab::ImportConfig {
                system,
                user: None,
                prefix: "prop".to_string(),
            };
            let got = assistd::source::crontab::import(text, &cfg);
            assert!(got.tasks.len() + got.problems.len() <= text.lines().count());
            for t in &got.tasks {
                assistd::source::local::parse_task(t.json.as_bytes(), "prop", 0)
                    .unwrap_or_else(|e| panic!("{:?} from {text:?}: {e:?}", t.json));
            }
        }
    }
}

#[test]
fn config_files() {
    for input in inputs("config", 3) {
        let _ = assistd::config::Config::from_json(Path::new("prop.json"), &input);
    }
}

/// Input layout as in the fuzz target: grammar byte, 8 bytes of `from`, the expression.
#[test]
fn schedules_parse_and_their_runs_increase() {
    let db = ZoneDb::in_dirs([
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/schedule/testdata/zoneinfo")
    ]);
    for input in inputs("schedule", 4) {
        let Some((&kind, rest)) = input.split_first() else {
            continue;
        };
        let Some((from, expr)) = rest.split_first_chunk::<8>() else {
            continue;
        };
        let expr = String::from_utf8_lossy(expr);
        let kind = [ScheduleKind::Cron, ScheduleKind::Rate, ScheduleKind::At][kind as usize % 3];
        let from_secs = i64::from_be_bytes(*from) % 8_200_000_000_000;
        let Some(from) = DateTime::from_timestamp(from_secs, 0) else {
            continue;
        };
        let Ok(schedule) = Schedule::parse_in(&expr, kind, from_secs / 3, &Zone::utc(), &db) else {
            continue;
        };
        let mut at = from;
        for _ in 0..3 {
            let Some(next) = schedule.next_after(at) else {
                break;
            };
            assert!(next > at, "{expr:?}: {next} is not after {at}");
            at = next;
        }
    }
}

#[test]
fn tzif_files() {
    for input in inputs("tzif", 5) {
        let Ok(tz) = assistd::schedule::tzif::parse(&input) else {
            continue;
        };
        let zone = Zone::Named(std::sync::Arc::new(NamedZone::new("Prop/Zone", tz.clone())));
        let mut probes = vec![-1_000_000_000, 0, 1_900_000_000];
        probes.extend(tz.transitions().iter().take(16).map(|&(at, _)| at));
        for at in probes {
            assert!((-89_999..=93_599).contains(&tz.offset_at(at)));
            let Some(local) = DateTime::from_timestamp(at, 0).map(|t| t.naive_utc()) else {
                continue;
            };
            match zone.resolve_local(local) {
                Some(LocalInstant::Single(t)) => assert_eq!(zone.to_local(t), Some(local)),
                Some(LocalInstant::Ambiguous { earliest, latest }) => {
                    assert_eq!(zone.to_local(earliest), Some(local));
                    assert_eq!(zone.to_local(latest), Some(local));
                }
                Some(LocalInstant::Gap { next_valid }) => {
                    assert!(zone.to_local(next_valid) >= Some(local));
                    let before = next_valid - Duration::seconds(1);
                    assert!(zone.to_local(before) < Some(local));
                }
                None => {}
            }
        }
    }
}

#[cfg(feature = "remote")]
mod remote {
    use super::inputs;
    use assistd::remote::{heartbeat, kick, update};

    #[test]
    fn kick_messages() {
        for input in inputs("kick", 6) {
            let msg = String::from_utf8_lossy(&input);
            let _ = kick::parse_kick(&msg);
            let (reply, _) = kick::handle_message(&msg, false);
            assert!(reply.len() <= msg.len() + 64);
        }
    }

    /// As the `session_frame` fuzz target: frames decode or fail, payloads are the rest of the
    /// message, command lines split, and the UTF-8 carry gives back every byte it was given.
    #[test]
    fn session_frames_command_lines_and_the_utf8_carry() {
        use assistd::remote::session::{frame, shell};
        for input in inputs("session_frame", 9) {
            if let Ok(f) = frame::decode(&input) {
                assert_eq!(f.payload.len() + frame::HEADER_LEN, input.len());
                let _ = frame::decode_window_size(&f.payload);
                let _ = frame::decode_set_speed(&f.payload);
            }
            let line = String::from_utf8_lossy(&input);
            if let Ok(words) = shell::split_command(&line) {
                assert!(words.iter().map(String::len).sum::<usize>() <= line.len());
            }
            let mut carry = shell::Utf8Carry::default();
            let mut out = Vec::new();
            for chunk in input.chunks(7) {
                out.extend(carry.push(chunk));
            }
            out.extend(carry.finish());
            assert_eq!(out, input);
        }
    }

    /// As the `websocket` fuzz target: upgrade answers and the frames behind them; messages
    /// and replies bounded by the input, a close the last message.
    #[test]
    fn websocket_answers_and_frames() {
        use assistd::remote::{websocket, ws_conn};
        for (n, input) in inputs("websocket", 10).into_iter().enumerate() {
            let head_end = input
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(input.len(), |i| i + 4);
            if websocket::check_answer(&input[..head_end], "dGhlIHNhbXBsZSBub25jZQ==").is_ok() {
                let head = String::from_utf8_lossy(&input[..head_end]);
                assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
            }
            let frames = if input.starts_with(b"HTTP/") {
                &input[head_end..]
            } else {
                &input[..]
            };
            let (messages, end, written) = ws_conn::replay(frames, 1 + n % 8);
            assert!(messages.len() <= frames.len() / 2 + 1);
            assert!(written.len() <= 3 * frames.len() + 8);
            assert!(!end.is_would_block());
            if let Some(at) = messages.iter().position(|m| *m == ws_conn::Message::Close) {
                assert_eq!(at + 1, messages.len());
                assert!(matches!(end, ws_conn::Error::Closed), "{end}");
            }
        }
    }

    #[test]
    fn heartbeat_answers() {
        for input in inputs("heartbeat", 7) {
            let _ = heartbeat::parse_answer(&input);
        }
    }

    #[test]
    fn update_check_answers() {
        for input in inputs("update_check", 8) {
            if let Ok(Some(offer)) = update::parse_offer(&input) {
                assert!(!offer.url.is_empty());
            }
        }
    }
}
