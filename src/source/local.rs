//! The local task directory: the hand-written task file format, the diff between scans, and
//! the reboot bookkeeping of `EveryReboot` / `NextRebootOnly` tasks.
//!
//! This module turns files into `SourceEvent`s; it must never run, schedule or report a task.
//!
//! A task file is a `*.json` object such as
//! `{"id":"backup","command":"tar czf /var/backups/etc.tgz /etc","cron":"0 30 3 * * ?","timeout":600}`.
//! Keys match case-insensitively like the server's; a key that is neither a local key nor a
//! server `RunTaskInfo` key refuses the file, so a typo never passes silently.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::escape::for_terminal;
use crate::fsutil::{self, Distrust};
use crate::model::{self, key_eq, ModelError, Obj, RepeatType, RunTaskInfo};
use crate::schedule::crontab::{self, CrontabError, CrontabTime};
use crate::source::SourceEvent;

/// Files larger than this are refused: a task file is a few hundred bytes.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Default timeout of a local task, in seconds.
pub const DEFAULT_TIMEOUT: &str = "3600";

/// Keys a local file may use that the server never sends, and the server key each one fills
/// (`None`: handled here, not by the model).
const LOCAL_KEYS: &[(&str, Option<&str>)] = &[
    ("id", Some("taskID")),
    ("command", Some("commandContent")),
    ("user", Some("username")),
    ("workdir", Some("workingDirectory")),
    ("parameters", Some("builtInParameter")),
    ("repeat", None),
    ("output", None),
    ("env", None),
    ("logOutput", None),
    ("catchUp", None),
    ("randomDelay", None),
];

/// The longest `randomDelay`, in seconds (a day).
pub const MAX_RANDOM_DELAY: u64 = 86_400;

/// The keys of `output` (the server's `OutputInfo`).
pub const OUTPUT_KEYS: &[&str] = &[
    "interval",
    "logQuota",
    "skipEmpty",
    "sendStart",
    "needExport",
];

/// Every key of a server `RunTaskInfo` (spec §3.4), plus `commandSignature` which the server
/// sends and the agent ignores. `timeout` folds onto `timeOut`.
const SERVER_KEYS: &[&str] = &[
    "instanceId",
    "type",
    "taskID",
    "commandId",
    "enableParameter",
    "timeOut",
    "commandName",
    "invokeVersion",
    "commandContent",
    "workingDirectory",
    "args",
    "cron",
    "username",
    "windowsPasswordName",
    "creationTime",
    "containerId",
    "containerName",
    "builtInParameter",
    "terminationMode",
    "launcher",
    "taskSignature",
    "userId",
    "commandSignature",
];

/// A task file (or the directory, or the reboot state) that could not be used.
#[derive(Debug)]
pub struct LoadError {
    pub path: PathBuf,
    pub kind: LoadErrorKind,
}

/// Why a task file was refused.
#[derive(Debug)]
pub enum LoadErrorKind {
    /// The file or directory could not be read.
    Read(io::Error),
    /// The file is larger than `MAX_FILE_SIZE`.
    TooLarge(u64),
    /// Not JSON; `message` is serde_json's, without its position suffix.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    NotObject,
    UnknownKey(String),
    /// Two keys that fill the same field (`id` and `taskID`, `command` and `commandContent`).
    ConflictingKeys(String, String),
    /// A value of the wrong type.
    Field(ModelError),
    NoCommand,
    /// A value of the wrong type, under the key as the file spells it.
    Type {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A key inside `output` that is not one of `OUTPUT_KEYS`.
    UnknownOutputKey(String),
    /// A periodic `repeat` without a `cron` to say when.
    NoCron(RepeatType),
    /// The id is empty or holds characters other than `A-Za-z0-9._-`.
    BadId(String),
    /// `timeout` is not a whole number of seconds.
    BadTimeout(String),
    BadRepeat(String),
    /// A crontab(5) time in `cron` that cannot be rewritten in the seconds-first grammar.
    Crontab(String, CrontabError),
    /// `cron` is `@reboot` but `repeat` names a repeat that does not run at boot.
    RebootRepeat(String),
    /// Another file, read earlier, has the same id.
    DuplicateId {
        id: String,
        first: PathBuf,
    },
    /// The reboot state could not be saved.
    SaveState(io::Error),
    /// `env` is not an object of strings with shell-variable names, or sets a variable the
    /// agent owns.
    BadEnv(String),
    /// `catchUp` or `randomDelay` has a value it cannot take, or does not fit the repeat.
    BadTiming(String),
    /// Someone other than root or the agent could change the file (or its directory), or it
    /// is a symlink out of the task directory: a root agent does not run it (sshd's
    /// StrictModes, cron's rule for crontabs).
    Untrusted(Distrust),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        match &self.kind {
            LoadErrorKind::Read(_) => f.write_str("cannot read"),
            LoadErrorKind::TooLarge(n) => {
                write!(f, "file too large ({n} bytes, limit {MAX_FILE_SIZE})")
            }
            LoadErrorKind::Syntax {
                line,
                column,
                message,
            } => write!(f, "line {line} column {column}: {message}"),
            LoadErrorKind::NotObject => f.write_str("not a JSON object"),
            LoadErrorKind::UnknownKey(k) => write!(f, "unknown key \"{k}\""),
            LoadErrorKind::ConflictingKeys(a, b) => {
                write!(f, "keys \"{a}\" and \"{b}\" set the same field")
            }
            LoadErrorKind::Field(e) => write!(f, "{e}"),
            LoadErrorKind::NoCommand => f.write_str("no command"),
            LoadErrorKind::Type {
                key,
                expected,
                found,
            } => write!(f, "\"{key}\": expected {expected}, found {found}"),
            LoadErrorKind::UnknownOutputKey(k) => write!(
                f,
                "unknown key \"{k}\" in \"output\" (it takes {})",
                OUTPUT_KEYS.join(", ")
            ),
            LoadErrorKind::NoCron(repeat) => {
                let example = match repeat {
                    RepeatType::Rate => "\"rate(5m)\"",
                    RepeatType::At => "\"at(2030-01-01T03:30:00)\"",
                    _ => "\"0 30 3 * * ?\" (seconds first) or \"30 3 * * *\" (crontab)",
                };
                write!(
                    f,
                    "repeat \"{repeat}\" needs a \"cron\" saying when, e.g. \"cron\": {example}"
                )
            }
            LoadErrorKind::BadId(id) if id.starts_with('.') => write!(
                f,
                "invalid id \"{id}\": an id must not start with a dot (the agent skips dot-files; rename the file or set \"id\")"
            ),
            LoadErrorKind::BadId(id) if id.is_empty() => {
                f.write_str("empty id (set \"id\" or name the file after the task)")
            }
            LoadErrorKind::BadId(id) => write!(
                f,
                "invalid id \"{id}\" (use letters, digits, '.', '_' and '-', not starting with '.')"
            ),
            LoadErrorKind::BadTimeout(t) => write!(f, "timeout \"{t}\" is not a number of seconds"),
            LoadErrorKind::BadRepeat(r) => write!(f, "unknown repeat \"{r}\""),
            LoadErrorKind::Crontab(text, _) => write!(f, "cron \"{text}\""),
            LoadErrorKind::RebootRepeat(r) => {
                write!(f, "cron \"@reboot\" runs at boot, but repeat is \"{r}\"")
            }
            LoadErrorKind::DuplicateId { id, first } => {
                write!(f, "id \"{id}\" is already used by {}", first.display())
            }
            LoadErrorKind::SaveState(_) => f.write_str("cannot save the reboot state"),
            LoadErrorKind::Untrusted(d) => write!(f, "refused: {d}"),
            LoadErrorKind::BadEnv(why) => write!(f, "env: {why}"),
            LoadErrorKind::BadTiming(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            LoadErrorKind::Read(e) | LoadErrorKind::SaveState(e) => Some(e),
            LoadErrorKind::Crontab(_, e) => Some(e),
            _ => None,
        }
    }
}

fn err(path: &Path, kind: LoadErrorKind) -> LoadError {
    LoadError {
        path: path.to_path_buf(),
        kind,
    }
}

/// Loads one task file. `invoke_version` is whatever the file says (normally 0): the
/// `LocalSource` numbers versions itself. `creationTime` defaults to the file's mtime in
/// milliseconds, so a `rate(...)` is anchored to when the file was last written.
pub fn load_file(path: &Path) -> Result<RunTaskInfo, LoadError> {
    read_task(path).map(|(_, task)| task)
}

/// What a scan keeps of a task file's bytes: enough to tell a change and a once task's
/// earlier run, so that a scan of 10,000 files does not hold all their bytes at once.
struct FileFacts {
    len: usize,
    digest: Digest,
    /// The digest state files held before SHA-256 (`legacy_digest_matches`); only a once
    /// task's earlier run is recorded by digest, so only a once task's file is hashed so.
    legacy: Option<u64>,
}

impl FileFacts {
    fn of(bytes: &[u8], repeat: RepeatType) -> FileFacts {
        use std::hash::Hasher;
        let legacy = (repeat == RepeatType::Once).then(|| {
            let mut h = std::hash::DefaultHasher::new();
            h.write(bytes);
            h.finish()
        });
        FileFacts {
            len: bytes.len(),
            digest: Digest::of(bytes),
            legacy,
        }
    }

    fn tracked_len(&self) -> u32 {
        u32::try_from(self.len).unwrap_or(u32::MAX)
    }

    fn tracked_digest(&self) -> [u8; 16] {
        let mut half = [0; 16];
        half.copy_from_slice(&self.digest.0[..16]);
        half
    }
}

/// The task directory may be trusted: owned by root or the agent, not writable by group or
/// others, and so are its ancestors (sticky ones excepted). `check` and every scan ask.
pub fn check_dir_trust(dir: &Path) -> Result<(), LoadError> {
    let uid = fsutil::euid();
    let untrusted = |d| err(dir, LoadErrorKind::Untrusted(d));
    let meta = fs::metadata(dir).map_err(|e| err(dir, LoadErrorKind::Read(e)))?;
    fsutil::trusted_meta(dir, &meta, uid, false).map_err(untrusted)?;
    let real = fs::canonicalize(dir).map_err(|e| err(dir, LoadErrorKind::Read(e)))?;
    fsutil::trusted_ancestors(&real, uid).map_err(untrusted)
}

/// A symlink may only point at a file in the same directory.
fn check_link(path: &Path) -> Result<(), LoadError> {
    let meta = fs::symlink_metadata(path).map_err(|e| err(path, LoadErrorKind::Read(e)))?;
    if !meta.file_type().is_symlink() {
        return Ok(());
    }
    let target = fs::canonicalize(path).map_err(|e| err(path, LoadErrorKind::Read(e)))?;
    let dir = path
        .parent()
        .map(fs::canonicalize)
        .transpose()
        .map_err(|e| err(path, LoadErrorKind::Read(e)))?;
    if target.parent() != dir.as_deref() {
        return Err(err(
            path,
            LoadErrorKind::Untrusted(Distrust::Symlink {
                path: path.to_path_buf(),
            }),
        ));
    }
    Ok(())
}

fn read_task(path: &Path) -> Result<(FileFacts, RunTaskInfo), LoadError> {
    check_link(path)?;
    let file = fs::File::open(path).map_err(|e| err(path, LoadErrorKind::Read(e)))?;
    let meta = file
        .metadata()
        .map_err(|e| err(path, LoadErrorKind::Read(e)))?;
    // Judged on the open file, so a rename between the check and the read changes nothing.
    fsutil::trusted_meta(path, &meta, fsutil::euid(), false)
        .map_err(|d| err(path, LoadErrorKind::Untrusted(d)))?;
    if meta.len() > MAX_FILE_SIZE {
        return Err(err(path, LoadErrorKind::TooLarge(meta.len())));
    }
    let mut bytes = Vec::new();
    // The bound also holds when the file grows between the stat and the read.
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(path, LoadErrorKind::Read(e)))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(err(path, LoadErrorKind::TooLarge(bytes.len() as u64)));
    }
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = parse_task(&bytes, &stem, mtime_ms).map_err(|kind| err(path, kind))?;
    Ok((FileFacts::of(&bytes, task.repeat), task))
}

/// Variables the agent sets for every task; a task file cannot change them.
pub const AGENT_ENV: &[&str] = &["ASSISTD_TASK_ID", "ASSISTD_INVOKE_VERSION"];

/// `env`: an object of strings whose names are shell variable names, minus the agent's own.
fn local_env(value: &Value) -> Result<Vec<(String, String)>, LoadErrorKind> {
    let map = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Object(map) => map,
        other => {
            return Err(LoadErrorKind::BadEnv(format!(
                "must be an object of strings, not {}",
                model::json_kind(other)
            )))
        }
    };
    let mut env = Vec::with_capacity(map.len());
    for (name, v) in map {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(LoadErrorKind::BadEnv(format!(
                "\"{name}\" is not a variable name (A-Z a-z 0-9 _, not starting with a digit)"
            )));
        }
        if AGENT_ENV.contains(&name.as_str()) {
            return Err(LoadErrorKind::BadEnv(format!(
                "\"{name}\" is set by the agent"
            )));
        }
        let Value::String(text) = v else {
            return Err(LoadErrorKind::BadEnv(format!(
                "\"{name}\" must be a string, not {}",
                model::json_kind(v)
            )));
        };
        if text.contains('\0') {
            return Err(LoadErrorKind::BadEnv(format!(
                "\"{name}\" holds a NUL byte"
            )));
        }
        env.push((name.clone(), text.clone()));
    }
    Ok(env)
}

/// Parses the bytes of a task file; `stem` is the default id, `mtime_ms` the default
/// creation time.
pub fn parse_task(bytes: &[u8], stem: &str, mtime_ms: i64) -> Result<RunTaskInfo, LoadErrorKind> {
    let root: Value = serde_json::from_slice(bytes).map_err(syntax)?;
    let Value::Object(file) = &root else {
        return Err(LoadErrorKind::NotObject);
    };

    // Translate local keys to server keys, so the model's decoding does the typing.
    let mut server = serde_json::Map::new();
    let mut spelled: BTreeMap<&str, String> = BTreeMap::new();
    let mut repeat = Value::Null;
    let mut output = Value::Null;
    let mut env = Value::Null;
    let mut log_output = Value::Null;
    let mut timing = (Value::Null, Value::Null);
    for (key, value) in file {
        let target: &str =
            if let Some((_, target)) = LOCAL_KEYS.iter().find(|(k, _)| key_eq(k, key)) {
                match target {
                    Some(t) => t,
                    None => {
                        let slot = if key_eq(key, "repeat") {
                            &mut repeat
                        } else if key_eq(key, "env") {
                            &mut env
                        } else if key_eq(key, "logOutput") {
                            &mut log_output
                        } else if key_eq(key, "catchUp") {
                            &mut timing.0
                        } else if key_eq(key, "randomDelay") {
                            &mut timing.1
                        } else {
                            &mut output
                        };
                        *slot = value.clone();
                        continue;
                    }
                }
            } else if let Some(k) = SERVER_KEYS.iter().find(|k| key_eq(k, key)) {
                k
            } else {
                return Err(LoadErrorKind::UnknownKey(key.clone()));
            };
        if value.is_null() {
            continue;
        }
        if let Some(first) = spelled.insert(target, key.clone()) {
            return Err(LoadErrorKind::ConflictingKeys(first, key.clone()));
        }
        let value = if key_eq(key, "command") {
            match value {
                Value::String(text) => {
                    Value::String(crate::runner::params::encode_base64(text.as_bytes()))
                }
                other => {
                    let found = model::json_kind(other);
                    return Err(LoadErrorKind::Field(ModelError::Type {
                        key: "command",
                        expected: "a string",
                        found,
                    }));
                }
            }
        } else {
            value.clone()
        };
        server.insert(target.to_string(), value);
    }

    // A type error names the key as the file spells it (`timeout`, `id`), not the server's.
    let as_spelled = |e: ModelError| match e {
        ModelError::Type {
            key,
            expected,
            found,
        } => {
            let spelled_key = spelled.get(key).cloned().unwrap_or_else(|| key.to_string());
            let expected = if key == "timeOut" {
                "a number of seconds"
            } else {
                expected
            };
            LoadErrorKind::Type {
                key: spelled_key,
                expected,
                found,
            }
        }
        other => LoadErrorKind::Field(other),
    };
    let mut task = model::decode_run_task(&Value::Object(server)).map_err(as_spelled)?;
    if let Value::Object(map) = &output {
        if let Some(k) = map
            .keys()
            .find(|k| !OUTPUT_KEYS.iter().any(|known| key_eq(known, k)))
        {
            return Err(LoadErrorKind::UnknownOutputKey(k.clone()));
        }
    }
    task.output = model::decode_output_info(&output).map_err(|e| match e {
        ModelError::Type {
            key,
            expected,
            found,
        } if !key.is_empty() && key != "output" => LoadErrorKind::Type {
            key: format!("output.{key}"),
            expected,
            found,
        },
        other => LoadErrorKind::Field(other),
    })?;
    // Unlike the server's, a local task skips empty running reports unless its file says
    // otherwise: each one is a journal line, one a second for as long as a quiet task runs,
    // and they would push real results out of the rotated journal.
    let skip_empty_set = Obj::new(&output, "output")
        .map_err(LoadErrorKind::Field)?
        .get("skipEmpty")
        .is_some_and(|v| !v.is_null());
    if !skip_empty_set {
        task.output.skip_empty = true;
    }
    let repeat_text = Obj::new(&serde_json::json!({ "repeat": repeat }), "")
        .and_then(|o| o.string("repeat"))
        .map_err(LoadErrorKind::Field)?;
    let mut cron_written = String::new();
    task.repeat = match crontab_time(&task.cron)? {
        None => local_repeat(&repeat_text, &task.cron)?,
        Some(CrontabTime::Cron(text)) => {
            cron_written = std::mem::replace(&mut task.cron, text);
            local_repeat(&repeat_text, &task.cron)?
        }
        Some(CrontabTime::Reboot) => {
            cron_written = std::mem::take(&mut task.cron);
            // No repeat means every boot; NextRebootOnly narrows it; any other contradicts it.
            match local_repeat(&repeat_text, "@reboot")? {
                _ if repeat_text.trim().is_empty() => RepeatType::EveryReboot,
                r @ (RepeatType::EveryReboot | RepeatType::NextRebootOnly) => r,
                _ => return Err(LoadErrorKind::RebootRepeat(repeat_text.trim().to_string())),
            }
        }
    };
    let (catch_up, random_delay_secs) = local_timing(&timing.0, &timing.1, task.repeat)?;
    let extras = model::LocalExtras {
        catch_up,
        random_delay_secs,
        cron_written,
        env: local_env(&env)?,
        log_output: match log_output {
            Value::Null => false,
            Value::Bool(b) => b,
            other => {
                return Err(LoadErrorKind::Field(ModelError::Type {
                    key: "logOutput",
                    expected: "true or false",
                    found: model::json_kind(&other),
                }))
            }
        },
    };
    if extras != model::LocalExtras::default() {
        task.local = Some(Box::new(extras));
    }

    if task.repeat.is_periodic() && task.cron.trim().is_empty() {
        return Err(LoadErrorKind::NoCron(task.repeat));
    }
    if task.task_id.is_empty() {
        task.task_id = stem.to_string();
    }
    if !valid_id(&task.task_id) {
        return Err(LoadErrorKind::BadId(task.task_id));
    }
    if task.content.is_empty() {
        return Err(LoadErrorKind::NoCommand);
    }
    if task.command_type.is_empty() {
        task.command_type = "RunShellScript".to_string();
    }
    if task.timeout.is_empty() {
        task.timeout = DEFAULT_TIMEOUT.to_string();
    } else if task.timeout.parse::<u32>().is_err() {
        return Err(LoadErrorKind::BadTimeout(task.timeout));
    }
    if task.creation_time == 0 {
        task.creation_time = mtime_ms;
    }
    let instance_id = task.instance_id.clone();
    model::add_builtin_params(&mut task, &instance_id);
    Ok(task)
}

/// `catchUp` (`"none"` or `"last"`, for cron and rate tasks) and `randomDelay` (whole
/// seconds up to `MAX_RANDOM_DELAY`, for tasks the timer fires: cron, rate, at).
fn local_timing(
    catch_up: &Value,
    delay: &Value,
    repeat: RepeatType,
) -> Result<(bool, u32), LoadErrorKind> {
    let catch_up = match catch_up {
        Value::Null => false,
        Value::String(s) if s.eq_ignore_ascii_case("none") => false,
        Value::String(s) if s.eq_ignore_ascii_case("last") => true,
        other => {
            return Err(LoadErrorKind::BadTiming(format!(
                "catchUp must be \"none\" or \"last\", not {}",
                match other {
                    Value::String(s) => format!("\"{s}\""),
                    other => model::json_kind(other).to_string(),
                }
            )))
        }
    };
    if catch_up && !matches!(repeat, RepeatType::Period | RepeatType::Rate) {
        return Err(LoadErrorKind::BadTiming(format!(
            "catchUp \"last\" needs a cron or rate schedule, and this task's repeat is {}",
            repeat.as_wire()
        )));
    }
    let delay = match delay {
        Value::Null => 0,
        Value::Number(n) => match n.as_u64().filter(|n| *n <= MAX_RANDOM_DELAY) {
            Some(n) => n as u32,
            None => {
                return Err(LoadErrorKind::BadTiming(format!(
                    "randomDelay must be whole seconds from 0 to {MAX_RANDOM_DELAY}, not {n}"
                )))
            }
        },
        other => {
            return Err(LoadErrorKind::BadTiming(format!(
                "randomDelay must be whole seconds from 0 to {MAX_RANDOM_DELAY}, not {}",
                model::json_kind(other)
            )))
        }
    };
    if delay > 0 && !repeat.is_periodic() {
        return Err(LoadErrorKind::BadTiming(format!(
            "randomDelay applies to tasks the timer fires (cron, rate, at), and this task's repeat is {}",
            repeat.as_wire()
        )));
    }
    Ok((catch_up, delay))
}

/// A crontab(5) time in a task file's `cron` (five fields, or a nickname such as `@daily`),
/// rewritten in the seconds-first grammar; `None` for any other text, which is left as it is.
fn crontab_time(cron: &str) -> Result<Option<CrontabTime>, LoadErrorKind> {
    let lower = cron.trim().to_ascii_lowercase();
    if lower.starts_with("rate") || lower.starts_with("at(") || !crontab::is_crontab_form(cron) {
        return Ok(None);
    }
    crontab::to_seconds_first(cron)
        .map(Some)
        .map_err(|e| LoadErrorKind::Crontab(cron.trim().to_string(), e))
}

/// The repeat of a local task: explicit names match case-insensitively; without one the
/// `cron` text decides (`rate…` → Rate, `at(` → At, anything else non-empty → Period).
fn local_repeat(explicit: &str, cron: &str) -> Result<RepeatType, LoadErrorKind> {
    let explicit = explicit.trim();
    if !explicit.is_empty() {
        const ALL: [RepeatType; 6] = [
            RepeatType::Once,
            RepeatType::Period,
            RepeatType::NextRebootOnly,
            RepeatType::EveryReboot,
            RepeatType::Rate,
            RepeatType::At,
        ];
        return ALL
            .into_iter()
            .find(|r| r.as_wire().eq_ignore_ascii_case(explicit))
            .ok_or_else(|| LoadErrorKind::BadRepeat(explicit.to_string()));
    }
    let cron = cron.trim().to_ascii_lowercase();
    Ok(if cron.is_empty() {
        RepeatType::Once
    } else if cron.starts_with("rate") {
        RepeatType::Rate
    } else if cron.starts_with("at(") {
        RepeatType::At
    } else {
        RepeatType::Period
    })
}

/// Ids end up in script file names and in logs, so hand-written ones stay plain.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn syntax(e: serde_json::Error) -> LoadErrorKind {
    let (line, column) = (e.line(), e.column());
    let text = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    LoadErrorKind::Syntax {
        line,
        column,
        message,
    }
}

/// Reboot bookkeeping of one task id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebootEntry {
    /// The boot in which the task file was first seen.
    pub first_seen_boot: String,
    /// The last boot in which the task was handed to the engine; empty if never.
    pub last_run_boot: String,
    /// `Once` tasks: the SHA-256 (hex) of the file content last handed to the engine, so a
    /// once task runs once per content, not again at every agent start; empty if never.
    pub once_digest: String,
}

/// `<state_dir>/reboot-tasks.json` plus the current boot id. Entries are never pruned: they
/// are tiny, and a file that is briefly invalid must not lose its first-seen boot.
///
/// The file also keeps the last invoke version of every task id (`last_version`, absent in
/// files written before it), so versions keep counting up across agent restarts: a one-shot
/// task edited after a restart never gets a version (and a script file name) it had before.
#[derive(Debug)]
pub struct RebootState {
    /// `None`: kept in memory only.
    path: Option<PathBuf>,
    boot_id: String,
    entries: BTreeMap<String, RebootEntry>,
    /// Last invoke version per id, for every repeat type; kept after a file goes away so a
    /// re-added file gets a new version.
    versions: BTreeMap<Box<str>, i64>,
    dirty: bool,
}

impl RebootState {
    /// Loads the state file; a missing file is an empty state. A corrupt file is an error:
    /// the caller may log it and start over with `RebootState::fresh`.
    pub fn load(path: PathBuf, boot_id: String) -> Result<RebootState, LoadError> {
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RebootState::fresh(Some(path), boot_id))
            }
            Err(e) => return Err(err(&path, LoadErrorKind::Read(e))),
        };
        let (entries, versions) = parse_reboot_state(&bytes).map_err(|kind| err(&path, kind))?;
        Ok(RebootState {
            path: Some(path),
            boot_id,
            entries,
            versions,
            dirty: false,
        })
    }

    /// An empty state, saved to `path` (if any) on the first change.
    pub fn fresh(path: Option<PathBuf>, boot_id: String) -> RebootState {
        RebootState {
            path,
            boot_id,
            entries: BTreeMap::new(),
            versions: BTreeMap::new(),
            dirty: false,
        }
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    pub fn entry(&self, task_id: &str) -> Option<&RebootEntry> {
        self.entries.get(task_id)
    }

    /// The last invoke version given to `task_id`; 0 if never.
    pub fn last_version(&self, task_id: &str) -> i64 {
        self.versions.get(task_id).copied().unwrap_or(0)
    }

    /// Gives `task_id` its next invoke version and records it.
    fn next_version(&mut self, task_id: &str) -> i64 {
        let version = self.versions.entry(task_id.into()).or_insert(0);
        *version = version.saturating_add(1);
        self.dirty = true;
        *version
    }

    /// Decides whether a task of this repeat type is handed to the engine now, and records
    /// it when it is (before the engine runs it: a crash then loses that boot's run rather
    /// than repeating it).
    fn admit(&mut self, task_id: &str, repeat: RepeatType, file: &FileFacts) -> bool {
        if !matches!(
            repeat,
            RepeatType::EveryReboot | RepeatType::NextRebootOnly | RepeatType::Once
        ) {
            return true;
        }
        let boot = self.boot_id.clone();
        let entry = self.entries.entry(task_id.to_string()).or_insert_with(|| {
            self.dirty = true;
            RebootEntry {
                first_seen_boot: boot.clone(),
                last_run_boot: String::new(),
                once_digest: String::new(),
            }
        });
        if repeat == RepeatType::Once {
            let hex = file.digest.hex();
            if entry.once_digest == hex {
                return false;
            }
            if file
                .legacy
                .is_some_and(|legacy| legacy_digest_matches(&entry.once_digest, legacy))
            {
                // Ran before the upgrade: keep it run, and store the stable digest.
                entry.once_digest = hex;
                self.dirty = true;
                return false;
            }
            entry.once_digest = hex;
            self.dirty = true;
            return true;
        }
        let due = match repeat {
            RepeatType::EveryReboot => entry.last_run_boot != boot,
            _ => entry.first_seen_boot != boot && entry.last_run_boot.is_empty(),
        };
        if due {
            entry.last_run_boot = boot;
            self.dirty = true;
        }
        due
    }

    /// Forgets that a once task ran: its file went away, so adding it again runs it again.
    fn forget_once(&mut self, task_id: &str) {
        if let Some(entry) = self.entries.get_mut(task_id) {
            if !entry.once_digest.is_empty() {
                entry.once_digest.clear();
                self.dirty = true;
            }
        }
    }

    /// Writes the state atomically if it changed since the last save.
    pub fn save(&mut self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        // An id with reboot bookkeeping has `first_seen_boot`; one without (a periodic task)
        // only its `last_version`.
        let mut map = serde_json::Map::new();
        for (id, e) in &self.entries {
            let v = serde_json::json!({
                "first_seen_boot": e.first_seen_boot,
                "last_run_boot": e.last_run_boot,
                "once_digest": e.once_digest,
            });
            map.insert(id.clone(), v);
        }
        for (id, version) in &self.versions {
            let v = map
                .entry(id.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(o) = v {
                o.insert("last_version".to_string(), Value::from(*version));
            }
        }
        let mut bytes = serde_json::to_vec_pretty(&Value::Object(map)).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(path, &bytes, 0o600)?;
        self.dirty = false;
        Ok(())
    }
}

/// Reboot entries and last versions per id.
type ParsedState = (BTreeMap<String, RebootEntry>, BTreeMap<Box<str>, i64>);

fn parse_reboot_state(bytes: &[u8]) -> Result<ParsedState, LoadErrorKind> {
    let root: Value = serde_json::from_slice(bytes).map_err(syntax)?;
    let Value::Object(map) = root else {
        return Err(LoadErrorKind::NotObject);
    };
    let mut entries = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for (id, v) in &map {
        let o = Obj::new(v, "").map_err(LoadErrorKind::Field)?;
        // Absent in state files written before versions were kept.
        let version = o.int("last_version").map_err(LoadErrorKind::Field)?;
        if version > 0 {
            versions.insert(id.as_str().into(), version);
        }
        if o.get("first_seen_boot").is_none() {
            continue;
        }
        let entry = RebootEntry {
            first_seen_boot: o.string("first_seen_boot").map_err(LoadErrorKind::Field)?,
            last_run_boot: o.string("last_run_boot").map_err(LoadErrorKind::Field)?,
            // Absent in state files written before once tasks were tracked.
            once_digest: o.string("once_digest").map_err(LoadErrorKind::Field)?,
        };
        entries.insert(id.clone(), entry);
    }
    Ok((entries, versions))
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub events: Vec<SourceEvent>,
    pub errors: Vec<LoadError>,
}

/// What the source remembers of a task file: enough to notice a change and to stop the task,
/// not the task itself (the engine holds that; keeping a second copy of 10,000 tasks here
/// doubled the agent's memory per task).
#[derive(Clone)]
struct Tracked {
    /// Length and the first half of the SHA-256 of the file's bytes: a change of either is a
    /// new version (128 bits tell an edit as surely as 256, in half the bytes a task). A
    /// length beyond `u32` (never: `MAX_FILE_SIZE`) counts as `u32::MAX`; the digest decides.
    len: u32,
    digest: [u8; 16],
    invoke_version: i64,
    repeat: RepeatType,
    /// Whether the last version was handed to the engine (a reboot task may be held back).
    emitted: bool,
    /// The name of the file it was last read from, when that is not `<id>.json` (a file
    /// may name its own id): a file that stops loading keeps the version the engine has.
    file: Option<Box<OsStr>>,
}

impl Tracked {
    fn new(path: &Path, file: &FileFacts, task: &RunTaskInfo, emitted: bool) -> Tracked {
        Tracked {
            len: file.tracked_len(),
            digest: file.tracked_digest(),
            invoke_version: task.invoke_version,
            repeat: task.repeat,
            emitted,
            file: other_file_name(path, &task.task_id),
        }
    }

    fn same_file(&self, file: &FileFacts) -> bool {
        self.len == file.tracked_len() && self.digest == file.tracked_digest()
    }

    /// The version the engine last received, as a stop request.
    fn stop_info(&self, id: &str) -> RunTaskInfo {
        RunTaskInfo {
            task_id: id.to_string(),
            invoke_version: self.invoke_version,
            repeat: self.repeat,
            ..RunTaskInfo::default()
        }
    }

    fn stop_event(&self, id: &str) -> SourceEvent {
        SourceEvent::Stop(self.stop_info(id))
    }

    /// Its file is gone: journaled as a removal, not a kill.
    fn removed_event(&self, id: &str) -> SourceEvent {
        SourceEvent::Removed(self.stop_info(id))
    }
}

/// `path`'s file name, unless it is `<id>.json`.
fn other_file_name(path: &Path, id: &str) -> Option<Box<OsStr>> {
    let name = path.file_name()?;
    let is_id = name
        .to_str()
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|stem| stem == id);
    (!is_id).then(|| name.into())
}

/// The SHA-256 of a task file's bytes. It is persisted (`once_digest`), so it must stay the
/// same across builds, which `std`'s `DefaultHasher` does not promise: a toolchain update
/// would have run every once task again.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest([u8; 32]);

impl Digest {
    fn of(bytes: &[u8]) -> Digest {
        Digest(crate::sha256::sha256(bytes))
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether `stored` is the 16-hex-digit `DefaultHasher` digest that state files held before
/// SHA-256, for the bytes whose `DefaultHasher` digest is `legacy`. Only read, so an upgrade
/// does not run every once task again; a toolchain whose hasher differs makes this false,
/// which runs the task once.
fn legacy_digest_matches(stored: &str, legacy: u64) -> bool {
    stored.len() == 16 && stored == format!("{legacy:016x}")
}

/// The task directory and what it last told the engine.
pub struct LocalSource {
    dir: PathBuf,
    state: RebootState,
    tracked: BTreeMap<Box<str>, Tracked>,
}

impl LocalSource {
    pub fn new(dir: PathBuf, state: RebootState) -> LocalSource {
        LocalSource {
            dir,
            state,
            tracked: BTreeMap::new(),
        }
    }

    /// The tracked id last read from `path` (a file of the task directory).
    fn tracked_id(&self, path: &Path) -> Option<&str> {
        let name = path.file_name()?;
        let stem = name.to_str().and_then(|n| n.strip_suffix(".json"));
        if let Some((id, _)) = stem
            .and_then(|stem| self.tracked.get_key_value(stem))
            .filter(|(_, t)| t.file.is_none())
        {
            return Some(id);
        }
        // A file that names another id: rare, and only asked for a file that fails to load.
        self.tracked
            .iter()
            .find(|(_, t)| t.file.as_deref() == Some(name))
            .map(|(id, _)| &**id)
    }

    pub fn reboot_state(&self) -> &RebootState {
        &self.state
    }

    /// Reads the directory and returns what changed since the last scan: `Run` for new and
    /// changed tasks (a change bumps the invoke version), `Stop` for tasks whose file went
    /// away or became invalid. If the directory itself cannot be read nothing is stopped:
    /// a transient failure must not stop every task.
    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        if let Err(e) = check_dir_trust(&self.dir) {
            // Like an unreadable directory: nothing new runs, nothing running is stopped.
            scan.errors.push(e);
            return scan;
        }
        let paths = match task_files(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                scan.errors.push(err(&self.dir, LoadErrorKind::Read(e)));
                return scan;
            }
        };

        let read: Vec<_> = paths
            .into_iter()
            .map(|p| match read_task(&p) {
                Ok(ok) => Ok((p, ok)),
                Err(e) => Err((p, e)),
            })
            .collect();
        // A file that loaded before and no longer does keeps its id and the version the
        // engine runs: a typo saved by an editor must not stop a schedule.
        let mut first_path: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut found: Vec<(PathBuf, FileFacts, RunTaskInfo)> = Vec::new();
        let mut results: Vec<(PathBuf, (FileFacts, RunTaskInfo))> = Vec::with_capacity(read.len());
        for r in read {
            match r {
                Ok(ok) => results.push(ok),
                Err((path, e)) => {
                    let kept = Some(&e.kind)
                        .filter(|kind| keeps_last_good(kind))
                        .and_then(|_| self.tracked_id(&path));
                    if let Some(id) = kept {
                        log::warn!(
                            "task={} invoke_version={} phase=load {} no longer loads; the last good version stays",
                            for_terminal(id),
                            self.tracked[id].invoke_version,
                            for_terminal(&path.display().to_string())
                        );
                        first_path.insert(id.to_string(), path);
                    }
                    scan.errors.push(e);
                }
            }
        }
        for (path, (file, task)) in results {
            if let Some(first) = first_path.get(&task.task_id) {
                let kind = LoadErrorKind::DuplicateId {
                    id: task.task_id.clone(),
                    first: first.clone(),
                };
                scan.errors.push(err(&path, kind));
                continue;
            }
            first_path.insert(task.task_id.clone(), path.clone());
            found.push((path, file, task));
        }

        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|id| !first_path.contains_key(&***id))
            .map(|id| id.to_string())
            .collect();
        for id in gone {
            self.state.forget_once(&id);
            if let Some(old) = self.tracked.remove(id.as_str()) {
                if old.emitted {
                    log::info!(
                        "task={} invoke_version={} phase=load its task file was removed or refused; stopping it",
                        for_terminal(&id),
                        old.invoke_version
                    );
                    scan.events.push(old.removed_event(&id));
                }
            }
        }

        for (path, file, mut task) in found {
            let id = task.task_id.clone();
            let previous = match self.tracked.remove(id.as_str()) {
                Some(mut prev) if prev.same_file(&file) => {
                    // The same bytes, perhaps under another name.
                    prev.file = other_file_name(&path, &id);
                    self.tracked.insert(id.into(), prev);
                    continue;
                }
                previous => previous,
            };
            task.invoke_version = self.state.next_version(&id);
            let admitted = self.state.admit(&id, task.repeat, &file);
            self.tracked.insert(
                id.as_str().into(),
                Tracked::new(&path, &file, &task, admitted),
            );
            if admitted {
                // Moved, not cloned: the engine keeps the task, this source only `Tracked`.
                scan.events.push(SourceEvent::Run(task));
            } else {
                log::info!(
                    "task={} invoke_version={} phase=load {} task already handled for this boot",
                    id,
                    task.invoke_version,
                    task.repeat
                );
                // A periodic predecessor would keep firing; a one-shot one has run already.
                if let Some(prev) = previous.filter(|p| p.emitted && p.repeat.is_periodic()) {
                    scan.events.push(prev.stop_event(&id));
                }
            }
        }
        // Rebuilt from their sorted entries, the maps' nodes are full: grown one insert at a
        // time, a `BTreeMap` leaves about half of each node empty (80 bytes a task here).
        self.tracked = std::mem::take(&mut self.tracked).into_iter().collect();
        self.state.versions = std::mem::take(&mut self.state.versions)
            .into_iter()
            .collect();

        if let Err(e) = self.state.save() {
            let path = self.state.path.clone().unwrap_or_default();
            scan.errors.push(LoadError {
                path,
                kind: LoadErrorKind::SaveState(e),
            });
        }
        scan
    }
}

/// The task files of `dir` as the agent reads them: the directory's trust, each file's own
/// checks, and ids used by two files (the later file in name order is refused, as by a scan).
/// `assistd check DIR` asks this; it keeps no state and changes nothing.
pub fn load_dir(dir: &Path) -> (Vec<(PathBuf, RunTaskInfo)>, Vec<LoadError>) {
    let mut errors = Vec::new();
    if let Err(e) = check_dir_trust(dir) {
        errors.push(e);
        return (Vec::new(), errors);
    }
    let paths = match task_files(dir) {
        Ok(p) => p,
        Err(e) => {
            errors.push(err(dir, LoadErrorKind::Read(e)));
            return (Vec::new(), errors);
        }
    };
    let mut tasks: Vec<(PathBuf, RunTaskInfo)> = Vec::new();
    for path in paths {
        match read_task(&path) {
            Ok((_, task)) => {
                if let Some((first, _)) = tasks.iter().find(|(_, t)| t.task_id == task.task_id) {
                    let kind = LoadErrorKind::DuplicateId {
                        id: task.task_id.clone(),
                        first: first.clone(),
                    };
                    errors.push(err(&path, kind));
                    continue;
                }
                tasks.push((path, task));
            }
            Err(e) => errors.push(e),
        }
    }
    (tasks, errors)
}

/// Whether a file that loaded before keeps its last good version when it fails to load now:
/// yes for what an edit can break, no when the file went (a race with `rm`) or is no longer
/// trusted (then it must not run at all).
fn keeps_last_good(kind: &LoadErrorKind) -> bool {
    match kind {
        LoadErrorKind::Read(e) => e.kind() != io::ErrorKind::NotFound,
        LoadErrorKind::Untrusted(_) => false,
        _ => true,
    }
}

/// The `*.json` files of `dir`, dot-files excluded, in sorted order.
fn task_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            continue;
        }
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;

    fn parse(json: &str) -> Result<RunTaskInfo, String> {
        parse_task(json.as_bytes(), "stem", 1_000)
            .map_err(|kind| err(Path::new("t.json"), kind).to_string())
    }

    fn ok(json: &str) -> RunTaskInfo {
        parse(json).expect("task parses")
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).expect("write task file");
        p
    }

    fn runs(scan: &Scan) -> Vec<(String, i64)> {
        scan.events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Run(t) => Some((t.task_id.clone(), t.invoke_version)),
                _ => None,
            })
            .collect()
    }

    fn stops(scan: &Scan) -> Vec<(String, i64)> {
        scan.events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Stop(t) => Some((t.task_id.clone(), t.invoke_version)),
                _ => None,
            })
            .collect()
    }

    fn set_mode(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn removals(scan: &Scan) -> Vec<(String, i64)> {
        scan.events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Removed(t) => Some((t.task_id.clone(), t.invoke_version)),
                _ => None,
            })
            .collect()
    }

    fn id_v(id: &str, v: i64) -> (String, i64) {
        (id.to_string(), v)
    }

    #[test]
    fn example_file() {
        let t = ok(
            r#"{"id":"backup","command":"tar czf /var/backups/etc.tgz /etc","cron":"0 30 3 * * ?","timeout":600}"#,
        );
        assert_eq!(t.task_id, "backup");
        assert_eq!(
            t.content,
            crate::runner::params::encode_base64(b"tar czf /var/backups/etc.tgz /etc")
        );
        assert_eq!(t.cron, "0 30 3 * * ?");
        assert_eq!(t.repeat, RepeatType::Period);
        assert_eq!(t.timeout, "600");
        assert_eq!(t.command_type, "RunShellScript");
        assert_eq!(t.creation_time, 1_000);
        assert_eq!(t.invoke_version, 0);
    }

    #[test]
    fn defaults() {
        let t = ok(r#"{"command":"true"}"#);
        assert_eq!(
            (t.task_id.as_str(), t.timeout.as_str(), t.repeat),
            ("stem", "3600", RepeatType::Once)
        );
        assert_eq!(ok(r#"{"command":"x","timeout":"42"}"#).timeout, "42");
        assert_eq!(ok(r#"{"command":"x","creationTime":7}"#).creation_time, 7);
    }

    #[test]
    fn repeat_follows_cron_text() {
        let repeat = |cron: &str| ok(&format!(r#"{{"command":"x","cron":"{cron}"}}"#)).repeat;
        assert_eq!(repeat("rate(5m)"), RepeatType::Rate);
        assert_eq!(repeat("  RATE(1h)"), RepeatType::Rate);
        assert_eq!(repeat("at(2031-01-02 03:04:05)"), RepeatType::At);
        assert_eq!(repeat("0 * * * * ?"), RepeatType::Period);
        assert_eq!(repeat(""), RepeatType::Once);
        assert_eq!(
            ok(r#"{"command":"x","repeat":"EveryReboot"}"#).repeat,
            RepeatType::EveryReboot
        );
        assert_eq!(
            ok(r#"{"command":"x","repeat":"nextrebootonly"}"#).repeat,
            RepeatType::NextRebootOnly
        );
        assert_eq!(
            parse(r#"{"command":"x","repeat":"Hourly"}"#).unwrap_err(),
            "t.json: unknown repeat \"Hourly\""
        );
    }

    #[test]
    fn local_tasks_skip_empty_running_reports_unless_told() {
        assert!(ok(r#"{"command":"x"}"#).output.skip_empty);
        assert!(
            ok(r#"{"command":"x","output":{"interval":2000}}"#)
                .output
                .skip_empty
        );
        assert!(
            ok(r#"{"command":"x","output":{"skipEmpty":null}}"#)
                .output
                .skip_empty
        );
        assert!(
            !ok(r#"{"command":"x","output":{"skipEmpty":false}}"#)
                .output
                .skip_empty
        );
        assert!(
            !ok(r#"{"command":"x","output":{"SKIPEMPTY":false}}"#)
                .output
                .skip_empty
        );
        assert!(
            ok(r#"{"command":"x","output":{"skipEmpty":true}}"#)
                .output
                .skip_empty
        );
    }

    #[test]
    fn once_digests_are_sha256_and_old_ones_still_count() {
        let dir = TempDir::new("local-digest");
        let tasks = dir.path().join("tasks");
        fs::create_dir(&tasks).expect("mkdir");
        let state = dir.path().join("reboot-tasks.json");
        let body = r#"{"command":"echo 1"}"#;
        write(&tasks, "o.json", body);
        assert_eq!(boot_scan(&tasks, &state, "A"), [id_v("o", 1)]);
        let saved = RebootState::load(state.clone(), "A".into()).expect("loads");
        assert_eq!(
            saved.entry("o").expect("entry").once_digest,
            "86ed9bba316f28defe4770b01bc8b52726d3e90c425af172f7f5376ac3ea97ce",
            "sha256 of the file, the same with every build"
        );

        // A state file from before: the DefaultHasher digest of the same bytes.
        let legacy = {
            use std::hash::Hasher;
            let mut h = std::hash::DefaultHasher::new();
            h.write(body.as_bytes());
            format!("{:016x}", h.finish())
        };
        let old = format!(
            r#"{{"o":{{"first_seen_boot":"A","last_run_boot":"","once_digest":"{legacy}"}}}}"#
        );
        fs::write(&state, old).expect("write");
        assert!(
            boot_scan(&tasks, &state, "A").is_empty(),
            "ran before the upgrade"
        );
        let saved = RebootState::load(state.clone(), "A".into()).expect("loads");
        assert_eq!(saved.entry("o").expect("entry").once_digest.len(), 64);
        write(&tasks, "o.json", r#"{"command":"echo 2"}"#);
        assert_eq!(boot_scan(&tasks, &state, "A").len(), 1, "new content runs");
    }

    #[test]
    fn aliases_and_server_keys() {
        let t = ok(
            r#"{"ID":"a","user":"nobody","workdir":"/tmp","parameters":{"P":"v"},"type":"RunBatScript","commandName":"n","enableParameter":true,"output":{"interval":2000,"sendStart":true},"command":"x"}"#,
        );
        assert_eq!(
            (
                t.task_id.as_str(),
                t.username.as_str(),
                t.working_dir.as_str()
            ),
            ("a", "nobody", "/tmp")
        );
        assert_eq!(t.builtin_params["P"], "v");
        assert_eq!(t.builtin_params["InvokeId"], "a");
        assert_eq!(t.command_type, "RunBatScript");
        assert_eq!((t.output.interval_ms, t.output.send_start), (2000, true));
        let t = ok(
            r#"{"taskID":"t-1","commandContent":"dHJ1ZQ==","timeOut":"5","username":"u","workingDirectory":"/","builtInParameter":{},"commandSignature":"x","taskSignature":"","launcher":"","terminationMode":"ProcessTree"}"#,
        );
        assert_eq!(
            (t.task_id.as_str(), t.content.as_str(), t.timeout.as_str()),
            ("t-1", "dHJ1ZQ==", "5")
        );
        assert_eq!(t.termination_mode, "ProcessTree");
    }

    /// A task file's `cron` and `repeat` after loading, or the error chain.
    fn check_cron(json: &str, expect: &str) {
        let got = match parse_task(json.as_bytes(), "stem", 1_000) {
            Ok(t) => format!("{} {:?}", t.cron, t.repeat),
            Err(kind) => crate::error_chain::error_chain(&err(Path::new("t.json"), kind)),
        };
        assert_eq!(got, expect, "{json}");
    }

    #[test]
    fn crontab_five_fields() {
        check_cron(
            r#"{"command":"x","cron":"*/15 * * * *"}"#,
            "0 */15 * * * * Period",
        );
    }
    #[test]
    fn crontab_nickname() {
        check_cron(r#"{"command":"x","cron":"@daily"}"#, "0 0 0 * * * Period");
    }
    #[test]
    fn crontab_reboot_is_every_reboot() {
        check_cron(r#"{"command":"x","cron":"@reboot"}"#, " EveryReboot");
        check_cron(
            r#"{"command":"x","cron":"@reboot","repeat":"everyreboot"}"#,
            " EveryReboot",
        );
        check_cron(
            r#"{"command":"x","cron":"@reboot","repeat":"NextRebootOnly"}"#,
            " NextRebootOnly",
        );
    }
    #[test]
    fn crontab_reboot_with_a_periodic_repeat_is_refused() {
        check_cron(
            r#"{"command":"x","cron":"@reboot","repeat":"Period"}"#,
            "t.json: cron \"@reboot\" runs at boot, but repeat is \"Period\"",
        );
    }
    #[test]
    fn crontab_intersection_is_refused() {
        check_cron(
            r#"{"command":"x","cron":"0 0 */2 * 1"}"#,
            "t.json: cron \"0 0 */2 * 1\": day-of-month \"*/2\" with day-of-week \"1\" means days matching both in cron (a field starting with '*' is not a restriction there), which the seconds-first grammar cannot express; list the days instead of a '*/' step",
        );
    }
    #[test]
    fn seconds_first_and_rate_are_left_alone() {
        check_cron(
            r#"{"command":"x","cron":"0 0 8 * * ?"}"#,
            "0 0 8 * * ? Period",
        );
        check_cron(r#"{"command":"x","cron":"rate(5m)"}"#, "rate(5m) Rate");
    }

    #[test]
    fn refused_files() {
        let cases = [
            (
                r#"{"command":"x","crn":"0 * * * * ?"}"#,
                "t.json: unknown key \"crn\"",
            ),
            (r#"{"cron":"0 * * * * ?"}"#, "t.json: no command"),
            (r#"{"command":""}"#, "t.json: no command"),
            (
                r#"{"id":"a","taskID":"b","command":"x"}"#,
                "t.json: keys \"id\" and \"taskID\" set the same field",
            ),
            (
                r#"{"command":"x","commandContent":"eA=="}"#,
                "t.json: keys \"command\" and \"commandContent\" set the same field",
            ),
            (
                r#"{"command":1}"#,
                "t.json: \"command\": expected a string, found a number",
            ),
            (
                r#"{"command":"x","timeout":"soon"}"#,
                "t.json: timeout \"soon\" is not a number of seconds",
            ),
            (
                r#"{"command":"x","timeout":-1}"#,
                "t.json: timeout \"-1\" is not a number of seconds",
            ),
            (
                r#"{"command":"x","enableParameter":"yes"}"#,
                "t.json: \"enableParameter\": expected a boolean, found a string",
            ),
            (
                r#"{"command":"x","id":"a b"}"#,
                "t.json: invalid id \"a b\" (use letters, digits, '.', '_' and '-', not starting with '.')",
            ),
            (
                r#"{"command":"x","output":[]}"#,
                "t.json: \"output\": expected an object, found an array",
            ),
            ("[1]", "t.json: not a JSON object"),
            (
                "{\n  \"command\": \"x\"\n  \"cron\": \"\"\n}",
                "t.json: line 3 column 3: expected `,` or `}`",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(parse(json).unwrap_err(), want, "{json}");
        }
    }

    #[test]
    fn type_errors_name_the_key_as_the_file_spells_it() {
        assert_eq!(
            parse(r#"{"command":"x","timeout":true}"#).unwrap_err(),
            "t.json: \"timeout\": expected a number of seconds, found a boolean"
        );
        assert_eq!(
            parse(r#"{"command":"x","TimeOut":[1]}"#).unwrap_err(),
            "t.json: \"TimeOut\": expected a number of seconds, found an array"
        );
        assert_eq!(
            parse(r#"{"id":5,"command":"x"}"#).unwrap_err(),
            "t.json: \"id\": expected a string, found a number"
        );
        assert_eq!(
            parse(r#"{"command":"x","workdir":false}"#).unwrap_err(),
            "t.json: \"workdir\": expected a string, found a boolean"
        );
        assert_eq!(
            parse(r#"{"command":"x","output":{"skipEmpty":"no"}}"#).unwrap_err(),
            "t.json: \"output.skipEmpty\": expected a boolean, found a string"
        );
    }

    #[test]
    fn output_refuses_unknown_keys() {
        assert_eq!(
            parse(r#"{"command":"x","output":{"skipEmty":true}}"#).unwrap_err(),
            "t.json: unknown key \"skipEmty\" in \"output\" (it takes interval, logQuota, skipEmpty, sendStart, needExport)"
        );
        // Known keys match case-insensitively, like every other key.
        assert!(
            ok(r#"{"command":"x","output":{"SKIPEMPTY":false,"logquota":20000}}"#)
                .output
                .log_quota
                == 20000
        );
    }

    #[test]
    fn a_periodic_repeat_without_a_cron_says_what_to_add() {
        assert_eq!(
            parse(r#"{"command":"x","repeat":"Period"}"#).unwrap_err(),
            "t.json: repeat \"Period\" needs a \"cron\" saying when, e.g. \"cron\": \"0 30 3 * * ?\" (seconds first) or \"30 3 * * *\" (crontab)"
        );
        assert_eq!(
            parse(r#"{"command":"x","repeat":"rate","cron":" "}"#).unwrap_err(),
            "t.json: repeat \"Rate\" needs a \"cron\" saying when, e.g. \"cron\": \"rate(5m)\""
        );
        assert_eq!(
            parse(r#"{"command":"x","repeat":"At"}"#).unwrap_err(),
            "t.json: repeat \"At\" needs a \"cron\" saying when, e.g. \"cron\": \"at(2030-01-01T03:30:00)\""
        );
    }

    #[test]
    fn a_dot_file_is_told_why_its_id_is_refused() {
        let e = parse_task(br#"{"command":"x"}"#, ".hidden", 0)
            .map_err(|k| err(Path::new(".hidden.json"), k).to_string())
            .unwrap_err();
        assert_eq!(
            e,
            ".hidden.json: invalid id \".hidden\": an id must not start with a dot (the agent skips dot-files; rename the file or set \"id\")"
        );
    }

    #[test]
    fn load_file_names_path_and_uses_mtime() {
        let dir = TempDir::new("local-load");
        let p = write(dir.path(), "b.json", r#"{"command":"x","crn":""}"#);
        assert_eq!(
            load_file(&p).unwrap_err().to_string(),
            format!("{}: unknown key \"crn\"", p.display())
        );
        let p = write(dir.path(), "nightly.json", r#"{"command":"x"}"#);
        let t = load_file(&p).expect("loads");
        assert_eq!(t.task_id, "nightly");
        let mtime = fs::metadata(&p).and_then(|m| m.modified()).expect("mtime");
        let ms = mtime
            .duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_millis() as i64;
        assert_eq!(t.creation_time, ms);
        let big = dir.path().join("big.json");
        fs::write(&big, vec![b' '; MAX_FILE_SIZE as usize + 1]).expect("write");
        assert!(matches!(
            load_file(&big).unwrap_err().kind,
            LoadErrorKind::TooLarge(_)
        ));
        assert!(matches!(
            load_file(&dir.path().join("none.json")).unwrap_err().kind,
            LoadErrorKind::Read(_)
        ));
    }

    #[test]
    fn base64_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                crate::runner::params::encode_base64(plain.as_bytes()),
                encoded
            );
        }
        assert_eq!(
            crate::runner::params::encode_base64(&[0xff, 0xfe, 0x00]),
            "//4A"
        );
        assert_eq!(crate::runner::params::encode_base64(b"pwd"), "cHdk");
    }

    #[test]
    fn scans_diff_against_the_previous_scan() {
        let dir = TempDir::new("local-scan");
        let d = dir.path();
        write(d, "a.json", r#"{"command":"echo a"}"#);
        write(d, "b.json", r#"{"command":"echo b","cron":"rate(5m)"}"#);
        write(d, "notes.txt", "not a task");
        write(d, ".hidden.json", "{broken");
        fs::create_dir(d.join("dir.json")).expect("mkdir");
        let mut src = LocalSource::new(d.to_path_buf(), RebootState::fresh(None, "boot-1".into()));

        let s = src.scan();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(runs(&s), [id_v("a", 1), id_v("b", 1)]);
        assert!(stops(&s).is_empty());

        let s = src.scan();
        assert!(s.events.is_empty() && s.errors.is_empty());

        write(d, "a.json", r#"{"command":"echo A"}"#);
        write(d, "c.json", r#"{"command":"echo c"}"#);
        fs::remove_file(d.join("b.json")).expect("rm");
        let s = src.scan();
        assert_eq!(runs(&s), [id_v("a", 2), id_v("c", 1)]);
        assert_eq!(removals(&s), [id_v("b", 1)]);
        assert!(stops(&s).is_empty());

        // A file that breaks keeps its last good version: no stop, no run, one error.
        write(d, "c.json", r#"{"command":"echo c","bogus":1}"#);
        let s = src.scan();
        assert!(s.events.is_empty(), "{:?}", s.events);
        assert_eq!(s.errors.len(), 1);
        let s = src.scan();
        assert!(s.events.is_empty(), "still kept: {:?}", s.events);

        // Fixed back to what the engine has: nothing to do. Changed: a new version.
        write(d, "c.json", r#"{"command":"echo c"}"#);
        write(d, "b.json", r#"{"command":"echo b","cron":"rate(5m)"}"#);
        let s = src.scan();
        assert_eq!(runs(&s), [id_v("b", 2)], "re-added files get new versions");
        write(d, "c.json", r#"{"command":"echo C"}"#);
        assert_eq!(runs(&src.scan()), [id_v("c", 2)]);

        // A broken file that is then removed is a removal of its last good version.
        write(d, "c.json", "{");
        assert!(src.scan().events.is_empty());
        fs::remove_file(d.join("c.json")).expect("rm");
        assert_eq!(removals(&src.scan()), [id_v("c", 2)]);
    }

    #[test]
    fn a_broken_file_keeps_its_id_against_a_newcomer_and_a_never_good_one_runs_nothing() {
        let dir = TempDir::new("local-keep");
        let d = dir.path();
        write(d, "a.json", r#"{"id":"x","command":"echo a"}"#);
        write(d, "bad.json", r#"{"command":"echo bad","timeout":"soon"}"#);
        let mut src = LocalSource::new(d.to_path_buf(), RebootState::fresh(None, "boot".into()));
        let s = src.scan();
        assert_eq!(runs(&s), [id_v("x", 1)]);
        assert_eq!(s.errors.len(), 1, "bad.json never loaded");
        write(d, "a.json", r#"{"id":"x","command":"#);
        let b = write(d, "b.json", r#"{"id":"x","command":"echo b"}"#);
        let s = src.scan();
        assert!(s.events.is_empty(), "{:?}", s.events);
        let msgs: Vec<String> = s.errors.iter().map(ToString::to_string).collect();
        assert!(
            msgs.contains(&format!(
                "{}: id \"x\" is already used by {}",
                b.display(),
                d.join("a.json").display()
            )),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_tracked_file_is_small() {
        // One per task file, kept for as long as the agent runs.
        assert!(std::mem::size_of::<Tracked>() <= 48);
    }

    #[test]
    fn a_renamed_file_is_known_by_its_new_name_when_it_breaks() {
        let dir = TempDir::new("local-rename");
        let d = dir.path();
        let body = r#"{"id":"p","command":"echo p"}"#;
        write(d, "a.json", body);
        write(d, "q.json", r#"{"command":"echo q"}"#);
        let mut src = LocalSource::new(d.to_path_buf(), RebootState::fresh(None, "boot".into()));
        assert_eq!(runs(&src.scan()), [id_v("p", 1), id_v("q", 1)]);
        fs::rename(d.join("a.json"), d.join("b.json")).expect("rename");
        assert!(src.scan().events.is_empty(), "the same bytes");
        write(d, "b.json", r#"{"id":"p","command":"#);
        write(d, "q.json", r#"{"command":"#);
        let s = src.scan();
        assert!(
            s.events.is_empty(),
            "both keep their last good: {:?}",
            s.events
        );
        assert_eq!(s.errors.len(), 2);
        fs::remove_file(d.join("b.json")).expect("rm");
        assert_eq!(removals(&src.scan()), [id_v("p", 1)]);
    }

    #[test]
    fn a_file_that_becomes_untrusted_is_removed_not_kept() {
        let dir = TempDir::new("local-untrusted");
        let d = dir.path();
        let a = write(d, "a.json", r#"{"command":"echo a","cron":"rate(5m)"}"#);
        set_mode(&a, 0o644);
        let mut src = LocalSource::new(d.to_path_buf(), RebootState::fresh(None, "boot".into()));
        assert_eq!(runs(&src.scan()), [id_v("a", 1)]);
        set_mode(&a, 0o666);
        let s = src.scan();
        assert_eq!(removals(&s), [id_v("a", 1)]);
        assert!(
            s.errors[0].to_string().contains("refused"),
            "{:?}",
            s.errors
        );
    }

    #[test]
    fn duplicate_ids_name_both_files() {
        let dir = TempDir::new("local-dup");
        let a = write(dir.path(), "a.json", r#"{"id":"same","command":"x"}"#);
        let b = write(dir.path(), "b.json", r#"{"id":"same","command":"y"}"#);
        let mut src = LocalSource::new(
            dir.path().to_path_buf(),
            RebootState::fresh(None, "boot".into()),
        );
        let s = src.scan();
        assert_eq!(runs(&s), [id_v("same", 1)]);
        assert_eq!(s.errors.len(), 1);
        let msg = s.errors[0].to_string();
        assert_eq!(
            msg,
            format!(
                "{}: id \"same\" is already used by {}",
                b.display(),
                a.display()
            )
        );
    }

    #[test]
    fn missing_directory_is_an_error_and_stops_nothing() {
        let dir = TempDir::new("local-missing");
        write(dir.path(), "a.json", r#"{"command":"x"}"#);
        let mut src = LocalSource::new(
            dir.path().to_path_buf(),
            RebootState::fresh(None, "boot".into()),
        );
        assert_eq!(runs(&src.scan()), [id_v("a", 1)]);
        src.dir = dir.path().join("gone");
        let s = src.scan();
        assert!(s.events.is_empty());
        assert_eq!(s.errors.len(), 1);
    }

    /// Runs one "agent start" in `boot` over `dir`, with the state file in `state`.
    fn boot_scan(dir: &Path, state: &Path, boot: &str) -> Vec<(String, i64)> {
        let reboot = RebootState::load(state.to_path_buf(), boot.to_string()).expect("state loads");
        let mut src = LocalSource::new(dir.to_path_buf(), reboot);
        let s = src.scan();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let again = src.scan();
        assert!(
            again.events.is_empty(),
            "a rescan in the same boot emits nothing"
        );
        runs(&s)
    }

    #[test]
    fn every_reboot_runs_once_per_boot() {
        let dir = TempDir::new("local-every");
        let tasks = dir.path().join("tasks");
        fs::create_dir(&tasks).expect("mkdir");
        let state = dir.path().join("reboot-tasks.json");
        write(
            &tasks,
            "r.json",
            r#"{"command":"x","repeat":"EveryReboot"}"#,
        );
        assert_eq!(boot_scan(&tasks, &state, "A"), [id_v("r", 1)]);
        assert!(
            boot_scan(&tasks, &state, "A").is_empty(),
            "agent restart in the same boot"
        );
        assert_eq!(
            boot_scan(&tasks, &state, "B"),
            [id_v("r", 3)],
            "versions keep counting across agent starts"
        );

        // Within one boot: an edit is not a reboot, and a periodic task turned EveryReboot stops.
        write(&tasks, "p.json", r#"{"command":"x","cron":"rate(1h)"}"#);
        let reboot = RebootState::load(state.clone(), "B".into()).expect("state loads");
        let mut src = LocalSource::new(tasks.clone(), reboot);
        assert_eq!(runs(&src.scan()), [id_v("p", 1)]);
        write(
            &tasks,
            "r.json",
            r#"{"command":"y","repeat":"EveryReboot"}"#,
        );
        write(
            &tasks,
            "p.json",
            r#"{"command":"x","repeat":"EveryReboot"}"#,
        );
        let s = src.scan();
        assert_eq!(runs(&s), [id_v("p", 2)], "p never ran in this boot");
        assert!(stops(&s).is_empty());
        write(&tasks, "r.json", r#"{"command":"y","cron":"rate(1h)"}"#);
        assert_eq!(runs(&src.scan()), [id_v("r", 6)]);
        write(
            &tasks,
            "r.json",
            r#"{"command":"z","repeat":"EveryReboot"}"#,
        );
        let s = src.scan();
        assert!(runs(&s).is_empty());
        assert_eq!(
            stops(&s),
            [id_v("r", 6)],
            "versions count every edit, emitted or not"
        );
        fs::remove_file(tasks.join("p.json")).expect("rm");

        let saved = RebootState::load(state.clone(), "C".into()).expect("loads");
        let entry = saved.entry("r").expect("entry");
        assert_eq!(
            (entry.first_seen_boot.as_str(), entry.last_run_boot.as_str()),
            ("A", "B")
        );
        let text = fs::read_to_string(&state).expect("state file");
        let v: Value = serde_json::from_str(&text).expect("state is JSON");
        assert_eq!(v["r"]["last_run_boot"], "B");
        assert_eq!(v["r"]["last_version"], 7);
        assert_eq!(saved.last_version("p"), 2);
        assert!(saved.entry("p").is_some());
    }

    #[test]
    fn versions_continue_after_an_agent_restart() {
        let dir = TempDir::new("local-versions");
        let tasks = dir.path().join("tasks");
        fs::create_dir(&tasks).expect("mkdir");
        let state = dir.path().join("reboot-tasks.json");
        write(&tasks, "o.json", r#"{"command":"echo 1"}"#);
        write(&tasks, "p.json", r#"{"command":"x","cron":"rate(1h)"}"#);
        assert_eq!(boot_scan(&tasks, &state, "A"), [id_v("o", 1), id_v("p", 1)]);
        // The restart: the once task was edited meanwhile, and must not come back as version 1
        // (whose script file name a run before the restart used).
        write(&tasks, "o.json", r#"{"command":"echo 2"}"#);
        assert_eq!(boot_scan(&tasks, &state, "A"), [id_v("o", 2), id_v("p", 2)]);
        let saved = RebootState::load(state.clone(), "A".into()).expect("loads");
        assert_eq!((saved.last_version("o"), saved.last_version("p")), (2, 2));
        assert!(
            saved.entry("p").is_none(),
            "a periodic task's version is no reboot bookkeeping"
        );

        // A file written before versions were kept counts from 0.
        fs::write(
            &state,
            r#"{"o":{"first_seen_boot":"A","last_run_boot":"","once_digest":""}}"#,
        )
        .expect("write");
        let old = RebootState::load(state, "A".into()).expect("loads");
        assert_eq!(old.last_version("o"), 0);
        assert_eq!(old.entry("o").expect("entry").first_seen_boot, "A");
    }

    #[test]
    fn next_reboot_only_runs_once_after_a_reboot() {
        let dir = TempDir::new("local-next");
        let tasks = dir.path().join("tasks");
        fs::create_dir(&tasks).expect("mkdir");
        let state = dir.path().join("reboot-tasks.json");
        write(
            &tasks,
            "n.json",
            r#"{"command":"x","repeat":"NextRebootOnly"}"#,
        );
        assert!(boot_scan(&tasks, &state, "A").is_empty());
        assert!(boot_scan(&tasks, &state, "A").is_empty());
        assert_eq!(boot_scan(&tasks, &state, "B"), [id_v("n", 3)]);
        assert!(boot_scan(&tasks, &state, "B").is_empty());
        assert!(boot_scan(&tasks, &state, "C").is_empty());
    }

    #[test]
    fn corrupt_reboot_state_is_an_error() {
        let dir = TempDir::new("local-corrupt");
        let state = dir.path().join("reboot-tasks.json");
        fs::write(&state, "{\"r\":").expect("write");
        let e = RebootState::load(state.clone(), "A".into()).unwrap_err();
        assert!(matches!(e.kind, LoadErrorKind::Syntax { .. }), "{e}");
        fs::write(
            &state,
            r#"{"r":{"first_seen_boot":"A","last_run_boot":null,"extra":1}}"#,
        )
        .expect("write");
        let s = RebootState::load(state, "A".into()).expect("lenient entries");
        assert_eq!(s.entry("r").expect("entry").last_run_boot, "");
    }

    #[test]
    fn catch_up_and_random_delay_are_read_and_checked_against_the_repeat() {
        let t = ok(r#"{"command":"x","cron":"*/5 * * * *","catchUp":"LAST","randomDelay":30}"#);
        let extras = t.local.expect("extras");
        assert!(extras.catch_up);
        assert_eq!(extras.random_delay_secs, 30);
        assert_eq!(extras.cron_written, "*/5 * * * *");
        let t = ok(r#"{"command":"x","cron":"rate(5m)","catchUp":"none"}"#);
        assert!(t.local.is_none(), "defaults leave no extras");
        for (json, needle) in [
            (
                r#"{"command":"x","cron":"rate(5m)","catchUp":"lst"}"#,
                "not \"lst\"",
            ),
            (
                r#"{"command":"x","cron":"rate(5m)","catchUp":true}"#,
                "not a boolean",
            ),
            (r#"{"command":"x","catchUp":"last"}"#, "repeat is Once"),
            (
                r#"{"command":"x","cron":"at(2030-01-01T00:00:00)","catchUp":"last"}"#,
                "repeat is At",
            ),
            (
                r#"{"command":"x","cron":"rate(5m)","randomDelay":-1}"#,
                "not -1",
            ),
            (
                r#"{"command":"x","cron":"rate(5m)","randomDelay":1.5}"#,
                "not 1.5",
            ),
            (
                r#"{"command":"x","cron":"rate(5m)","randomDelay":86401}"#,
                "0 to 86400",
            ),
            (
                r#"{"command":"x","cron":"rate(5m)","randomDelay":"10"}"#,
                "not a string",
            ),
            (r#"{"command":"x","randomDelay":5}"#, "repeat is Once"),
        ] {
            let e = parse(json).expect_err(json);
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
