//! Wire types of the Cloud Assistant task protocol (spec §3) and their lenient decoding.
//!
//! This module only describes and decodes data; it must never perform I/O or decide
//! what to do with a task. It is the only module that derives serde for the wire.

use std::collections::BTreeMap;
use std::fmt;

/// How a task repeats (spec §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RepeatType {
    #[default]
    Once,
    /// Cron expression in `cron`.
    Period,
    NextRebootOnly,
    EveryReboot,
    /// `rate(...)` expression in `cron`, aligned to `creationTime`.
    Rate,
    /// `at(...)` expression in `cron`.
    At,
}

impl RepeatType {
    /// Parses the wire name exactly as the server sends it.
    pub fn from_wire(s: &str) -> Option<RepeatType> {
        Some(match s {
            "Once" => RepeatType::Once,
            "Period" => RepeatType::Period,
            "NextRebootOnly" => RepeatType::NextRebootOnly,
            "EveryReboot" => RepeatType::EveryReboot,
            "Rate" => RepeatType::Rate,
            "At" => RepeatType::At,
            _ => return None,
        })
    }

    pub fn as_wire(self) -> &'static str {
        match self {
            RepeatType::Once => "Once",
            RepeatType::Period => "Period",
            RepeatType::NextRebootOnly => "NextRebootOnly",
            RepeatType::EveryReboot => "EveryReboot",
            RepeatType::Rate => "Rate",
            RepeatType::At => "At",
        }
    }

    /// Period, Rate and At are driven by the timer; the others run once when received.
    pub fn is_periodic(self) -> bool {
        matches!(self, RepeatType::Period | RepeatType::Rate | RepeatType::At)
    }
}

impl fmt::Display for RepeatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire())
    }
}

/// Output reporting settings of one task (spec §3.3), as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputInfo {
    /// Running-output period in milliseconds (raised to 1000 by the runner).
    pub interval_ms: i64,
    /// Total output quota in bytes (raised to 12000 by the runner).
    pub log_quota: i64,
    pub skip_empty: bool,
    pub send_start: bool,
    pub need_export: bool,
}

/// One run/stop/test task (spec §3.4), after the task-list normalisation of §3.1.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RunTaskInfo {
    pub instance_id: String,
    /// `type`: RunShellScript, RunBatScript, RunPowerShellScript.
    pub command_type: String,
    pub task_id: String,
    pub command_id: String,
    pub enable_parameter: bool,
    /// Seconds, as a string; not a number is 3600, "0" is no timeout.
    pub timeout: String,
    pub command_name: String,
    pub invoke_version: i64,
    /// Standard base64 of the script text, exactly as received (signatures cover this text).
    pub content: String,
    pub working_dir: String,
    pub args: String,
    /// `cron`: a cron, `rate(...)` or `at(...)` expression.
    pub cron: String,
    pub username: String,
    pub password_name: String,
    /// Milliseconds since the epoch; the origin of Rate schedules.
    pub creation_time: i64,
    pub container_id: String,
    pub container_name: String,
    pub builtin_params: BTreeMap<String, String>,
    pub termination_mode: String,
    pub launcher: String,
    pub signature: String,
    pub user_id: String,
    pub output: OutputInfo,
    pub repeat: RepeatType,
    /// What only a local task file can ask for; the wire never carries it. Boxed, so a task
    /// without it costs one pointer.
    pub local: Option<Box<LocalExtras>>,
}

/// The local task file's own settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalExtras {
    /// `env`: variables added to the child's environment, in the file's order.
    pub env: Vec<(String, String)>,
    /// `logOutput`: every line the task prints goes to the agent's log as it arrives.
    pub log_output: bool,
    /// `catchUp: "last"`: after start-up, run once if a run was due while no agent ran.
    pub catch_up: bool,
    /// `randomDelay`: each timer firing first waits a random time in [0, this) seconds.
    pub random_delay_secs: u32,
    /// `cron` as the file wrote it, when the agent rewrote it (a crontab(5) time); empty
    /// when `cron` is the file's own text.
    pub cron_written: String,
}

impl fmt::Debug for RunTaskInfo {
    // The script body and the signature stay out of logs (style: logs are for operators).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunTaskInfo")
            .field("task_id", &self.task_id)
            .field("invoke_version", &self.invoke_version)
            .field("repeat", &self.repeat)
            .field("command_type", &self.command_type)
            .field("cron", &self.cron)
            .field("timeout", &self.timeout)
            .field("username", &self.username)
            .field("working_dir", &self.working_dir)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

/// A `RunTaskInfo` as the engine keeps it between runs (a registered periodic task, a task
/// held for `assistd run`): the same fields, with the eighteen texts packed into one
/// allocation. A `RunTaskInfo` spends 24 bytes on each text whether it is set or not (most
/// are empty in local mode), about 560 bytes a task; this is 96 plus the texts' bytes and
/// one byte a text. A run gets its `RunTaskInfo` back from `unpack`.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactTask {
    /// The length of each text (LEB128: one byte below 128), then the texts, all in `Text`
    /// order. Lengths as `u32`s beside it were 72 bytes a task.
    packed: Box<[u8]>,
    invoke_version: i64,
    creation_time: i64,
    /// The map's entries in its order; `None` when empty (nearly always in local mode):
    /// one pointer instead of a map's 24 bytes.
    builtin_params: Option<Box<[(String, String)]>>,
    output: OutputInfo,
    local: Option<Box<LocalExtras>>,
    enable_parameter: bool,
    repeat: RepeatType,
}

/// The text fields of a `RunTaskInfo`, in the order `CompactTask` packs them.
#[derive(Clone, Copy)]
enum Text {
    InstanceId,
    CommandType,
    TaskId,
    CommandId,
    Timeout,
    CommandName,
    Content,
    WorkingDir,
    Args,
    Cron,
    Username,
    PasswordName,
    ContainerId,
    ContainerName,
    TerminationMode,
    Launcher,
    Signature,
    UserId,
}

const TEXTS: usize = Text::UserId as usize + 1;

impl From<RunTaskInfo> for CompactTask {
    fn from(info: RunTaskInfo) -> CompactTask {
        // No `..`: a field added to `RunTaskInfo` must be added here too.
        let RunTaskInfo {
            instance_id,
            command_type,
            task_id,
            command_id,
            enable_parameter,
            timeout,
            command_name,
            invoke_version,
            content,
            working_dir,
            args,
            cron,
            username,
            password_name,
            creation_time,
            container_id,
            container_name,
            builtin_params,
            termination_mode,
            launcher,
            signature,
            user_id,
            output,
            repeat,
            local,
        } = info;
        // In `Text` order.
        let texts: [String; TEXTS] = [
            instance_id,
            command_type,
            task_id,
            command_id,
            timeout,
            command_name,
            content,
            working_dir,
            args,
            cron,
            username,
            password_name,
            container_id,
            container_name,
            termination_mode,
            launcher,
            signature,
            user_id,
        ];
        let mut packed = Vec::with_capacity(texts.iter().map(|t| t.len() + 1).sum());
        for text in &texts {
            let mut len = text.len();
            while len >= 0x80 {
                packed.push(0x80 | (len & 0x7f) as u8);
                len >>= 7;
            }
            packed.push(len as u8);
        }
        for text in &texts {
            packed.extend_from_slice(text.as_bytes());
        }
        CompactTask {
            packed: packed.into_boxed_slice(),
            invoke_version,
            creation_time,
            builtin_params: (!builtin_params.is_empty())
                .then(|| builtin_params.into_iter().collect()),
            output,
            local,
            enable_parameter,
            repeat,
        }
    }
}

impl CompactTask {
    /// The task as a run needs it.
    pub fn unpack(&self) -> RunTaskInfo {
        let texts = self.texts();
        let t = |field: Text| texts[field as usize].to_string();
        RunTaskInfo {
            instance_id: t(Text::InstanceId),
            command_type: t(Text::CommandType),
            task_id: t(Text::TaskId),
            command_id: t(Text::CommandId),
            enable_parameter: self.enable_parameter,
            timeout: t(Text::Timeout),
            command_name: t(Text::CommandName),
            invoke_version: self.invoke_version,
            content: t(Text::Content),
            working_dir: t(Text::WorkingDir),
            args: t(Text::Args),
            cron: t(Text::Cron),
            username: t(Text::Username),
            password_name: t(Text::PasswordName),
            creation_time: self.creation_time,
            container_id: t(Text::ContainerId),
            container_name: t(Text::ContainerName),
            builtin_params: self.builtin_params.iter().flatten().cloned().collect(),
            termination_mode: t(Text::TerminationMode),
            launcher: t(Text::Launcher),
            signature: t(Text::Signature),
            user_id: t(Text::UserId),
            output: self.output.clone(),
            repeat: self.repeat,
            local: self.local.clone(),
        }
    }

    pub fn task_id(&self) -> &str {
        self.text(Text::TaskId)
    }

    pub fn invoke_version(&self) -> i64 {
        self.invoke_version
    }

    pub fn repeat(&self) -> RepeatType {
        self.repeat
    }

    pub fn cron(&self) -> &str {
        self.text(Text::Cron)
    }

    pub fn creation_time(&self) -> i64 {
        self.creation_time
    }

    pub fn local(&self) -> Option<&LocalExtras> {
        self.local.as_deref()
    }

    /// One text, decoding only the lengths before it.
    fn text(&self, field: Text) -> &str {
        let (lens, at) = self.lens();
        let i = field as usize;
        self.slice(at + lens[..i].iter().sum::<usize>(), lens[i])
    }

    /// Every text, in `Text` order, from one pass over the lengths (what `unpack` needs).
    fn texts(&self) -> [&str; TEXTS] {
        let (lens, mut at) = self.lens();
        lens.map(|len| {
            let text = self.slice(at, len);
            at += len;
            text
        })
    }

    /// The texts' lengths, and where the first text starts.
    fn lens(&self) -> ([usize; TEXTS], usize) {
        let mut lens = [0usize; TEXTS];
        let mut at = 0;
        for len in &mut lens {
            let mut shift = 0u32;
            loop {
                let Some(&byte) = self.packed.get(at) else {
                    return ([0; TEXTS], at);
                };
                at += 1;
                *len |= usize::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
        }
        (lens, at)
    }

    fn slice(&self, start: usize, len: usize) -> &str {
        // Packed from whole `str`s, so each text is valid UTF-8 on its own.
        self.packed
            .get(start..start + len)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }
}

impl fmt::Debug for CompactTask {
    // Like `RunTaskInfo`'s: no script body, no signature.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompactTask")
            .field("task_id", &self.task_id())
            .field("invoke_version", &self.invoke_version)
            .field("repeat", &self.repeat)
            .field("cron", &self.cron())
            .field("content_len", &self.text(Text::Content).len())
            .finish_non_exhaustive()
    }
}

/// A kept task as a map key found by its id, which it borrows from the task: a table of
/// 10,000 tasks needs no second copy of each id.
#[derive(Clone, Debug)]
pub struct ById(pub std::sync::Arc<CompactTask>);

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.task_id()
    }
}

// Equality, order and hash are the id's, as `Borrow<str>` requires.
impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.task_id() == other.0.task_id()
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &ById) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &ById) -> std::cmp::Ordering {
        self.0.task_id().cmp(other.0.task_id())
    }
}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.task_id().hash(state)
    }
}

/// One send-file task (spec §3.5), with the wrapper's output settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SendFileTaskInfo {
    /// Standard base64 of the file bytes.
    pub content: String,
    pub content_type: String,
    pub destination: String,
    pub group: String,
    /// Octal string of length 0, 3 or 4; empty is `"0644"` (applied by the consumer).
    pub mode: String,
    pub name: String,
    pub overwrite: bool,
    pub owner: String,
    /// Hex MD5 of the base64 `content` string.
    pub signature: String,
    /// assistd extension, not sent by the reference's server: a `taskSignature` over the entry
    /// (spec §7 rules, `content` in the place of `commandContent`), required in strict mode.
    pub task_signature: String,
    /// The account id the extension's signature covers (`userId`, as in run tasks).
    pub user_id: String,
    pub task_id: String,
    pub timeout: i64,
    pub output: OutputInfo,
}

impl fmt::Debug for SendFileTaskInfo {
    // The file body stays out of logs; its length is enough.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFileTaskInfo")
            .field("task_id", &self.task_id)
            .field("name", &self.name)
            .field("destination", &self.destination)
            .field("mode", &self.mode)
            .field("owner", &self.owner)
            .field("group", &self.group)
            .field("overwrite", &self.overwrite)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

/// One session task (spec §3.6), taken verbatim from the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTaskInfo {
    pub cmd_content: String,
    pub username: String,
    pub password_name: String,
    /// `channelId`: the session id, also used as its task id.
    pub session_id: String,
    pub websocket_url: String,
    pub target_host: String,
    /// Non-empty means a port-forwarding session.
    pub port_number: String,
    /// Bandwidth limit in bits per second.
    pub flow_limit: i64,
}

/// A list entry that could not be used; the other entries of the list are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Which list it came from: `run`, `stop`, `test`, `file` or `session`.
    pub list: &'static str,
    /// The entry's task id when it could be read, else empty.
    pub task_id: String,
    pub reason: String,
}

/// A decoded task list response (spec §3.1), run/stop/test entries normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskList {
    pub code: i64,
    pub instance_id: String,
    pub run: Vec<RunTaskInfo>,
    pub stop: Vec<RunTaskInfo>,
    pub test: Vec<RunTaskInfo>,
    pub files: Vec<SendFileTaskInfo>,
    pub sessions: Vec<SessionTaskInfo>,
    pub rejected: Vec<Rejected>,
}

/// Why a value could not be decoded.
#[derive(Debug)]
pub enum ModelError {
    /// The bytes are not JSON at all.
    Syntax(serde_json::Error),
    /// A value has a JSON type the Go agent would refuse (`key` is `""` for the value itself).
    Type {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// `repeat` holds a name outside spec §3.2.
    UnknownRepeat(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Syntax(_) => f.write_str("not valid JSON"),
            ModelError::Type {
                key: "",
                expected,
                found,
            } => write!(f, "expected {expected}, found {found}"),
            ModelError::Type {
                key,
                expected,
                found,
            } => write!(f, "\"{key}\": expected {expected}, found {found}"),
            ModelError::UnknownRepeat(s) => write!(f, "unknown repeat type \"{s}\""),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Syntax(e) => Some(e),
            ModelError::Type { .. } | ModelError::UnknownRepeat(_) => None,
        }
    }
}

/// Decodes a task list response body (spec §3.1) the way Go's `encoding/json` would, except
/// that a bad entry is set aside in `rejected` instead of failing the whole list.
///
/// Top-level fields of the wrong type (`code` as a string, `run` as an object) fail the whole
/// body: nothing in it can be trusted then.
pub fn decode_task_list(bytes: &[u8]) -> Result<TaskList, ModelError> {
    let root: serde_json::Value = serde_json::from_slice(bytes).map_err(ModelError::Syntax)?;
    if !root.is_object() {
        return Err(ModelError::Type {
            key: "",
            expected: "an object",
            found: json_kind(&root),
        });
    }
    let obj = Obj::new(&root, "")?;
    let mut list = TaskList {
        code: obj.int("code")?,
        instance_id: obj.string("instanceId")?,
        ..TaskList::default()
    };
    for (name, target) in [
        ("run", &mut list.run),
        ("stop", &mut list.stop),
        ("test", &mut list.test),
    ] {
        for entry in obj.array(name)? {
            match decode_task_entry(entry, &list.instance_id) {
                Ok(task) => target.push(task),
                Err(e) => list.rejected.push(rejected(name, entry.get("task"), e)),
            }
        }
    }
    for entry in obj.array("file")? {
        match decode_file_entry(entry) {
            Ok(file) => list.files.push(file),
            Err(e) => list.rejected.push(rejected("file", entry.get("task"), e)),
        }
    }
    for entry in obj.array("session")? {
        match decode_session(entry) {
            Ok(session) => list.sessions.push(session),
            Err(e) => list.rejected.push(rejected("session", Some(entry), e)),
        }
    }
    Ok(list)
}

/// Decodes one task object (the `task` of a run/stop/test entry) without normalisation:
/// `instance_id`, `output` and `repeat` are whatever the object holds (`repeat` stays `Once`).
///
/// Deviation from Go: `timeOut` may also be a JSON number; it becomes its decimal text.
pub fn decode_run_task(value: &serde_json::Value) -> Result<RunTaskInfo, ModelError> {
    let o = Obj::new(value, "task")?;
    Ok(RunTaskInfo {
        instance_id: o.string("instanceId")?,
        command_type: o.string("type")?,
        task_id: o.string("taskID")?,
        command_id: o.string("commandId")?,
        enable_parameter: o.boolean("enableParameter")?,
        timeout: o.string_or_number("timeOut")?,
        command_name: o.string("commandName")?,
        invoke_version: o.int("invokeVersion")?,
        content: o.string("commandContent")?,
        working_dir: o.string("workingDirectory")?,
        args: o.string("args")?,
        cron: o.string("cron")?,
        username: o.string("username")?,
        password_name: o.string("windowsPasswordName")?,
        creation_time: o.int("creationTime")?,
        container_id: o.string("containerId")?,
        container_name: o.string("containerName")?,
        builtin_params: o.string_map("builtInParameter")?,
        termination_mode: o.string("terminationMode")?,
        launcher: o.string("launcher")?,
        signature: o.string("taskSignature")?,
        user_id: o.string("userId")?,
        output: OutputInfo::default(),
        repeat: RepeatType::Once,
        local: None,
    })
}

/// Decodes an output settings object (spec §3.3); `null` is all defaults.
pub fn decode_output_info(value: &serde_json::Value) -> Result<OutputInfo, ModelError> {
    let o = Obj::new(value, "output")?;
    Ok(OutputInfo {
        interval_ms: o.int("interval")?,
        log_quota: o.int("logQuota")?,
        skip_empty: o.boolean("skipEmpty")?,
        send_start: o.boolean("sendStart")?,
        need_export: o.boolean("needExport")?,
    })
}

/// Decodes a send-file task object (spec §3.5); `output` stays at its default.
pub fn decode_send_file(value: &serde_json::Value) -> Result<SendFileTaskInfo, ModelError> {
    let o = Obj::new(value, "task")?;
    Ok(SendFileTaskInfo {
        content: o.string("content")?,
        content_type: o.string("contentType")?,
        destination: o.string("destination")?,
        group: o.string("group")?,
        mode: o.string("mode")?,
        name: o.string("name")?,
        overwrite: o.boolean("overwrite")?,
        owner: o.string("owner")?,
        signature: o.string("signature")?,
        task_signature: o.string("taskSignature")?,
        user_id: o.string("userId")?,
        task_id: o.string("taskID")?,
        timeout: o.int("timeout")?,
        output: OutputInfo::default(),
    })
}

/// Decodes a session task object (spec §3.6).
pub fn decode_session(value: &serde_json::Value) -> Result<SessionTaskInfo, ModelError> {
    let o = Obj::new(value, "session")?;
    Ok(SessionTaskInfo {
        cmd_content: o.string("cmdContent")?,
        username: o.string("username")?,
        password_name: o.string("windowsPasswordName")?,
        session_id: o.string("channelId")?,
        websocket_url: o.string("websocketUrl")?,
        target_host: o.string("targetHost")?,
        port_number: o.string("portNumber")?,
        flow_limit: o.int("flowLimit")?,
    })
}

/// Parses a wrapper's `repeat`: empty means Period when `cron` is set, else Once (spec §3.1).
pub fn normalise_repeat(wire: &str, cron: &str) -> Result<RepeatType, ModelError> {
    if wire.is_empty() {
        return Ok(if cron.is_empty() {
            RepeatType::Once
        } else {
            RepeatType::Period
        });
    }
    RepeatType::from_wire(wire).ok_or_else(|| ModelError::UnknownRepeat(wire.to_string()))
}

/// Sets the three builtin parameters the agent adds when `enableParameter` is on (spec §3.1).
pub fn add_builtin_params(task: &mut RunTaskInfo, instance_id: &str) {
    if task.enable_parameter {
        let params = &mut task.builtin_params;
        params.insert("InstanceId".to_string(), instance_id.to_string());
        params.insert("CommandId".to_string(), task.command_id.clone());
        params.insert("InvokeId".to_string(), task.task_id.clone());
    }
}

fn decode_task_entry(
    entry: &serde_json::Value,
    instance_id: &str,
) -> Result<RunTaskInfo, ModelError> {
    let wrapper = Obj::new(entry, "")?;
    let mut task = decode_run_task(wrapper.get("task").unwrap_or(&serde_json::Value::Null))?;
    task.instance_id = instance_id.to_string();
    task.output = decode_output_info(wrapper.get("output").unwrap_or(&serde_json::Value::Null))?;
    task.repeat = normalise_repeat(&wrapper.string("repeat")?, &task.cron)?;
    add_builtin_params(&mut task, instance_id);
    Ok(task)
}

fn decode_file_entry(entry: &serde_json::Value) -> Result<SendFileTaskInfo, ModelError> {
    let wrapper = Obj::new(entry, "")?;
    let mut file = decode_send_file(wrapper.get("task").unwrap_or(&serde_json::Value::Null))?;
    file.output = decode_output_info(wrapper.get("output").unwrap_or(&serde_json::Value::Null))?;
    Ok(file)
}

fn rejected(list: &'static str, task: Option<&serde_json::Value>, err: ModelError) -> Rejected {
    // Best effort: the id is only for the log line, so any readable string will do.
    let id_key = if list == "session" {
        "channelId"
    } else {
        "taskID"
    };
    let task_id = task
        .and_then(|t| Obj::new(t, "").ok())
        .and_then(|o| o.get(id_key).and_then(|v| v.as_str()).map(str::to_string))
        .unwrap_or_default();
    Rejected {
        list,
        task_id,
        reason: err.to_string(),
    }
}

/// The JSON type name used in error messages.
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Go's `strings.EqualFold`-like key comparison used by `encoding/json` for struct fields.
pub(crate) fn key_eq(a: &str, b: &str) -> bool {
    if a.len() == b.len() && a.eq_ignore_ascii_case(b) {
        return true;
    }
    let (mut x, mut y) = (a.chars(), b.chars());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(c), Some(d)) => {
                let same = c == d
                    || c.to_lowercase().eq(d.to_lowercase())
                    || c.to_uppercase().eq(d.to_uppercase());
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// A JSON object (or `null`, which reads as empty) with Go-style case-insensitive field access.
pub(crate) struct Obj<'a> {
    map: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(v: &'a serde_json::Value, key: &'static str) -> Result<Obj<'a>, ModelError> {
        match v {
            serde_json::Value::Object(map) => Ok(Obj { map: Some(map) }),
            serde_json::Value::Null => Ok(Obj { map: None }),
            other => Err(ModelError::Type {
                key,
                expected: "an object",
                found: json_kind(other),
            }),
        }
    }

    /// The value of the field `name`: an exact key wins, else the last key equal under case
    /// folding (the map iterates in key order, not document order; Go would take the last
    /// one in the document — only matters when one object spells a key two ways).
    pub(crate) fn get(&self, name: &str) -> Option<&'a serde_json::Value> {
        let map = self.map?;
        if let Some(v) = map.get(name) {
            return Some(v);
        }
        map.iter()
            .filter(|(k, _)| key_eq(k, name))
            .map(|(_, v)| v)
            .next_back()
    }

    fn present(&self, name: &str) -> Option<&'a serde_json::Value> {
        self.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn string(&self, name: &'static str) -> Result<String, ModelError> {
        match self.present(name) {
            None => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(ModelError::Type {
                key: name,
                expected: "a string",
                found: json_kind(other),
            }),
        }
    }

    /// A string field that also takes a JSON number, kept as its decimal text.
    pub(crate) fn string_or_number(&self, name: &'static str) -> Result<String, ModelError> {
        match self.present(name) {
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => self.string(name),
        }
    }

    pub(crate) fn int(&self, name: &'static str) -> Result<i64, ModelError> {
        match self.present(name) {
            None => Ok(0),
            Some(serde_json::Value::Number(n)) => n.as_i64().ok_or(ModelError::Type {
                key: name,
                expected: "an integer",
                found: "a number out of range",
            }),
            Some(other) => Err(ModelError::Type {
                key: name,
                expected: "an integer",
                found: json_kind(other),
            }),
        }
    }

    pub(crate) fn boolean(&self, name: &'static str) -> Result<bool, ModelError> {
        match self.present(name) {
            None => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ModelError::Type {
                key: name,
                expected: "a boolean",
                found: json_kind(other),
            }),
        }
    }

    pub(crate) fn string_map(
        &self,
        name: &'static str,
    ) -> Result<BTreeMap<String, String>, ModelError> {
        let mut out = BTreeMap::new();
        match self.present(name) {
            None => {}
            Some(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    let value = match v {
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::String(s) => s.clone(),
                        other => {
                            return Err(ModelError::Type {
                                key: name,
                                expected: "string values",
                                found: json_kind(other),
                            })
                        }
                    };
                    out.insert(k.clone(), value);
                }
            }
            Some(other) => {
                return Err(ModelError::Type {
                    key: name,
                    expected: "an object",
                    found: json_kind(other),
                })
            }
        }
        Ok(out)
    }

    fn array(&self, name: &'static str) -> Result<&'a [serde_json::Value], ModelError> {
        match self.present(name) {
            None => Ok(&[]),
            Some(serde_json::Value::Array(items)) => Ok(items),
            Some(other) => Err(ModelError::Type {
                key: name,
                expected: "an array",
                found: json_kind(other),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"{"code":200,"instanceId":"i-2zxxxx","stop":[],"run":[{"task":{"type":"RunBatScript","taskID":"t-bj0sgni1w9lnnk","commandId":"c-bj0sgni1w23ym8","commandContent":"ZWNobyAiMTIzIg==","workingDirectory":null,"args":null,"cron":null,"timeOut":"60","commandSignature":"K06G","taskSignature":""},"output":{"interval":3000,"logQuota":24576,"skipEmpty":true,"sendStart":false}}]}"#;

    fn list(json: &str) -> TaskList {
        decode_task_list(json.as_bytes()).expect("test input decodes")
    }

    fn run_entry(task: &str, wrapper_rest: &str) -> TaskList {
        list(&format!(
            r#"{{"instanceId":"i-1","run":[{{"task":{task}{wrapper_rest}}}]}}"#
        ))
    }

    #[test]
    fn spec_example_fetch_task() {
        let l = list(SPEC_EXAMPLE);
        assert_eq!(l.code, 200);
        assert_eq!(l.instance_id, "i-2zxxxx");
        assert_eq!(l.run.len(), 1);
        assert!(l.stop.is_empty() && l.test.is_empty() && l.rejected.is_empty());
        let t = &l.run[0];
        assert_eq!(t.task_id, "t-bj0sgni1w9lnnk");
        assert_eq!(t.command_type, "RunBatScript");
        assert_eq!(t.timeout, "60");
        assert!(t.output.skip_empty);
        assert_eq!(t.output.interval_ms, 3000);
        assert_eq!(t.output.log_quota, 24576);
        assert_eq!(t.repeat, RepeatType::Once);
        assert_eq!(t.instance_id, "i-2zxxxx");
        assert_eq!(t.working_dir, "");
        assert_eq!(t.cron, "");
        assert_eq!(t.content, "ZWNobyAiMTIzIg==");
        assert!(t.builtin_params.is_empty());
    }

    #[test]
    fn spec_example_session() {
        let l = list(r#"{"code":200,"instanceId":"i-2zxxxx","session":[{"cmdContent":"pwd"}]}"#);
        assert_eq!(l.sessions.len(), 1);
        assert_eq!(l.sessions[0].cmd_content, "pwd");
    }

    #[test]
    fn keys_match_case_insensitively() {
        for key in ["taskID", "taskId", "TASKID", "taskid"] {
            let l = run_entry(&format!(r#"{{"{key}":"t-1"}}"#), "");
            assert_eq!(l.run[0].task_id, "t-1", "key {key}");
        }
        let l = list(
            r#"{"CODE":408,"InstanceID":"i-9","RUN":[{"TASK":{"TimeOut":"5"},"Output":{"SKIPEMPTY":true}}]}"#,
        );
        assert_eq!(l.code, 408);
        assert_eq!(l.run[0].instance_id, "i-9");
        assert_eq!(l.run[0].timeout, "5");
        assert!(l.run[0].output.skip_empty);
    }

    #[test]
    fn exact_key_wins_over_folded_key() {
        let l = run_entry(r#"{"taskid":"a","taskID":"b"}"#, "");
        assert_eq!(l.run[0].task_id, "b");
    }

    #[test]
    fn nulls_and_missing_are_zero_values() {
        let l = list(
            r#"{"code":null,"instanceId":null,"run":[{"task":{"taskID":"t","invokeVersion":null,"enableParameter":null,"builtInParameter":null},"output":null,"repeat":null}],"stop":null,"session":null}"#,
        );
        assert_eq!(l.code, 0);
        let t = &l.run[0];
        assert_eq!(
            (t.invoke_version, t.enable_parameter, t.repeat),
            (0, false, RepeatType::Once)
        );
        assert_eq!(t.output, OutputInfo::default());
        let l = list(r#"{"run":[{"task":null}]}"#);
        assert_eq!(l.run[0], RunTaskInfo::default());
        assert_eq!(list("{}"), TaskList::default());
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let l = run_entry(
            r#"{"taskID":"t","somethingNew":[1,{"x":2}]}"#,
            r#","extra":{"a":1}"#,
        );
        assert_eq!(l.run[0].task_id, "t");
        assert!(l.rejected.is_empty());
    }

    #[test]
    fn empty_repeat_follows_cron() {
        let l = run_entry(r#"{"taskID":"t","cron":"0 * * * * ?"}"#, "");
        assert_eq!(l.run[0].repeat, RepeatType::Period);
        let l = run_entry(r#"{"taskID":"t","cron":"rate(5m)"}"#, r#","repeat":"Rate""#);
        assert_eq!(l.run[0].repeat, RepeatType::Rate);
        let l = run_entry(
            r#"{"taskID":"t","cron":"0 * * * * ?"}"#,
            r#","repeat":"EveryReboot""#,
        );
        assert_eq!(l.run[0].repeat, RepeatType::EveryReboot);
    }

    #[test]
    fn unknown_repeat_is_rejected_and_others_kept() {
        let l = list(
            r#"{"run":[{"task":{"taskID":"a"},"repeat":"Hourly"},{"task":{"taskID":"b"}}],"stop":[{"task":{"taskID":"c"},"repeat":"once"}]}"#,
        );
        assert_eq!(l.run.len(), 1);
        assert_eq!(l.run[0].task_id, "b");
        assert_eq!(l.rejected.len(), 2);
        assert_eq!(l.rejected[0].list, "run");
        assert_eq!(l.rejected[0].task_id, "a");
        assert_eq!(l.rejected[0].reason, "unknown repeat type \"Hourly\"");
        assert_eq!(l.rejected[1].list, "stop");
        assert_eq!(l.rejected[1].task_id, "c");
    }

    #[test]
    fn numbers_as_strings_reject_the_entry() {
        let l = list(
            r#"{"run":[{"task":{"taskID":"a","invokeVersion":"3"}}],"test":[{"task":{"taskID":"b","enableParameter":"true"}}],"file":[{"task":{"taskID":"f","overwrite":1}}],"session":[{"channelId":"s","flowLimit":"10"}]}"#,
        );
        assert!(
            l.run.is_empty() && l.test.is_empty() && l.files.is_empty() && l.sessions.is_empty()
        );
        let got: Vec<_> = l
            .rejected
            .iter()
            .map(|r| (r.list, r.task_id.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "run",
                    "a",
                    "\"invokeVersion\": expected an integer, found a string"
                ),
                (
                    "test",
                    "b",
                    "\"enableParameter\": expected a boolean, found a string"
                ),
                (
                    "file",
                    "f",
                    "\"overwrite\": expected a boolean, found a number"
                ),
                (
                    "session",
                    "s",
                    "\"flowLimit\": expected an integer, found a string"
                ),
            ]
        );
    }

    #[test]
    fn non_integer_numbers_are_errors() {
        let l = run_entry(r#"{"taskID":"a","creationTime":1.5}"#, "");
        assert_eq!(l.rejected.len(), 1);
        let l = run_entry(r#"{"taskID":"a","creationTime":1e3}"#, "");
        assert_eq!(l.rejected.len(), 1);
    }

    #[test]
    fn timeout_number_becomes_text() {
        let l = run_entry(r#"{"taskID":"a","timeOut":600}"#, "");
        assert_eq!(l.run[0].timeout, "600");
        let l = run_entry(r#"{"taskID":"a","timeOut":true}"#, "");
        assert_eq!(l.rejected.len(), 1);
    }

    #[test]
    fn builtin_params_are_set_when_enabled() {
        let l = list(
            r#"{"instanceId":"i-7","run":[{"task":{"taskID":"t-1","commandId":"c-1","enableParameter":true,"builtInParameter":{"InstanceId":"server","RegionId":"cn","Null":null}}},{"task":{"taskID":"t-2","builtInParameter":{"RegionId":"cn"}}}]}"#,
        );
        let p = &l.run[0].builtin_params;
        assert_eq!(p["InstanceId"], "i-7");
        assert_eq!(p["CommandId"], "c-1");
        assert_eq!(p["InvokeId"], "t-1");
        assert_eq!(p["RegionId"], "cn");
        assert_eq!(p["Null"], "");
        assert_eq!(l.run[1].builtin_params.len(), 1);
    }

    #[test]
    fn send_file_entries() {
        let l = list(
            r#"{"file":[{"task":{"taskID":"f-1","name":"a.txt","content":"aGk=","mode":"0755","overwrite":true,"destination":"/tmp","owner":"root","group":"root","signature":"ab","contentType":"Base64","timeout":60},"output":{"logQuota":100}}]}"#,
        );
        let f = &l.files[0];
        assert_eq!(
            (f.task_id.as_str(), f.name.as_str(), f.mode.as_str()),
            ("f-1", "a.txt", "0755")
        );
        assert!(f.overwrite);
        assert_eq!(f.timeout, 60);
        assert_eq!(f.output.log_quota, 100);
        let debug = format!("{f:?}");
        assert!(!debug.contains("aGk="), "{debug}");
    }

    #[test]
    fn session_fields() {
        let l = list(
            r#"{"session":[{"channelId":"s-1","username":"u","windowsPasswordName":"p","websocketUrl":"wss://x","targetHost":"h","portNumber":"22","flowLimit":1000}]}"#,
        );
        let s = &l.sessions[0];
        assert_eq!(s.session_id, "s-1");
        assert_eq!(s.port_number, "22");
        assert_eq!(s.flow_limit, 1000);
        assert_eq!(s.password_name, "p");
    }

    #[test]
    fn bad_entries_are_rejected_not_fatal() {
        let l = list(r#"{"run":[1,{"task":"x"},{"task":{"taskID":"ok"}}]}"#);
        assert_eq!(l.run.len(), 1);
        assert_eq!(l.rejected.len(), 2);
        assert_eq!(l.rejected[0].reason, "expected an object, found a number");
        assert_eq!(
            l.rejected[1].reason,
            "\"task\": expected an object, found a string"
        );
    }

    #[test]
    fn garbage_body_is_an_error() {
        for body in ["", "not json", "[1,2]", "\"x\"", "{\"run\":", "null"] {
            assert!(decode_task_list(body.as_bytes()).is_err(), "{body:?}");
        }
        let err = decode_task_list(br#"{"run":{}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"run\": expected an array, found an object"
        );
        let err = decode_task_list(br#"{"code":"200"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"code\": expected an integer, found a string"
        );
    }

    #[test]
    fn a_compact_task_unpacks_to_the_same_task() {
        let mut n = 0;
        let mut text = || {
            n += 1;
            format!("v{n}-\u{e9}")
        };
        let full = RunTaskInfo {
            instance_id: text(),
            command_type: text(),
            task_id: text(),
            command_id: text(),
            enable_parameter: true,
            timeout: text(),
            command_name: text(),
            invoke_version: 7,
            content: text(),
            working_dir: text(),
            args: text(),
            cron: text(),
            username: text(),
            password_name: text(),
            creation_time: 1_700_000_000_000,
            container_id: text(),
            container_name: text(),
            builtin_params: BTreeMap::from([("InvokeId".to_string(), text())]),
            termination_mode: text(),
            launcher: text(),
            signature: text(),
            user_id: text(),
            output: OutputInfo {
                interval_ms: 3000,
                log_quota: 24576,
                skip_empty: true,
                send_start: true,
                need_export: true,
            },
            repeat: RepeatType::Rate,
            local: Some(Box::new(LocalExtras {
                env: vec![("A".to_string(), text())],
                log_output: true,
                catch_up: true,
                random_delay_secs: 9,
                cron_written: text(),
            })),
        };
        let compact = CompactTask::from(full.clone());
        assert_eq!(compact.unpack(), full);
        // Lengths of one, two and three LEB128 bytes.
        for len in [127, 128, 20_000] {
            let long = RunTaskInfo {
                content: "x".repeat(len),
                ..full.clone()
            };
            assert_eq!(CompactTask::from(long.clone()).unpack(), long, "{len}");
        }
        assert!(
            std::mem::size_of::<CompactTask>() <= 96,
            "kept for every task"
        );
        assert_eq!(
            (compact.task_id(), compact.cron(), compact.invoke_version()),
            (full.task_id.as_str(), full.cron.as_str(), 7)
        );
        assert_eq!(
            CompactTask::from(RunTaskInfo::default()).unpack(),
            RunTaskInfo::default()
        );
        let debug = format!("{compact:?}");
        assert!(
            !debug.contains(&full.content) && !debug.contains(&full.signature),
            "{debug}"
        );
    }

    #[test]
    fn by_id_finds_a_task_by_its_id() {
        let task = |id: &str| {
            ById(std::sync::Arc::new(CompactTask::from(RunTaskInfo {
                task_id: id.to_string(),
                ..RunTaskInfo::default()
            })))
        };
        let set: std::collections::BTreeSet<ById> = [task("b"), task("a")].into();
        assert!(set.contains("a") && !set.contains("c"));
        let hashed: std::collections::HashSet<ById> = [task("b")].into();
        assert!(hashed.contains("b"));
    }

    #[test]
    fn key_folding() {
        assert!(key_eq("taskID", "TASKid"));
        assert!(!key_eq("taskID", "taskIDs"));
        assert!(key_eq("\u{212A}ey", "key"));
    }
}
