//! Crontab files (a user's crontab, `/etc/crontab`, `/etc/cron.d/*`) turned into the text of
//! local task files, one per entry, and the lines that cannot be turned. Pure: it never reads
//! or writes a file, looks up a user, or runs anything.
//!
//! Choices, as README "Importing a crontab" documents them:
//! - times go through `schedule::crontab` (seconds-first text; `@reboot` → `EveryReboot`);
//! - `%`: as cron does, the first unescaped `%` ends the command and the rest, with `%` as
//!   newlines, is its standard input, given to the script as a quoted here-document;
//! - environment lines become `export` lines at the top of the scripts of the entries after
//!   them; `SHELL` other than `/bin/sh` runs the command with that shell; `MAILTO` (unless
//!   empty), `MAILFROM` and `CRON_TZ` are reported as unsupported;
//! - a task has no timeout (`"timeout": 0`), as a cron job has none;
//! - the id is the file's name and a hash of the entry's user, time and command, so
//!   importing again gives the same ids.

use std::fmt;

use crate::schedule::crontab::{self as time, CrontabError, CrontabTime};

/// How to read a crontab.
#[derive(Clone, Debug)]
pub struct ImportConfig {
    /// A system crontab: the sixth field of an entry is its user.
    pub system: bool,
    /// The user of every task of a user crontab (`None`: the agent's).
    pub user: Option<String>,
    /// The start of every id (the crontab's file name).
    pub prefix: String,
}

/// One task file made from one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFile {
    /// The line of the crontab (from 1).
    pub line: usize,
    pub id: String,
    /// The file's JSON text, ending in a newline.
    pub json: String,
}

/// A crontab line that did not carry over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub kind: ProblemKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Time(CrontabError),
    /// An entry with a time and nothing after it (in a system crontab: no user or command).
    NoCommand,
    /// Neither an entry, an environment setting nor a comment.
    NotAnEntry,
    /// An environment name that cannot be exported from a shell script.
    BadEnvName(String),
    /// `MAILTO`, `MAILFROM`, `CRON_TZ`: cron features the agent does not have.
    UnsupportedEnv {
        name: String,
        why: &'static str,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            ProblemKind::Time(e) => write!(f, "{e}"),
            ProblemKind::NoCommand => f.write_str("entry has no command"),
            ProblemKind::NotAnEntry => f.write_str("neither an entry nor an environment setting"),
            ProblemKind::BadEnvName(n) => {
                write!(
                    f,
                    "environment name {n:?} cannot be exported; setting not carried over"
                )
            }
            ProblemKind::UnsupportedEnv { name, why } => {
                write!(f, "{name} is not supported: {why}")
            }
        }
    }
}

/// What a crontab became.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub tasks: Vec<TaskFile>,
    pub problems: Vec<Problem>,
}

/// Reads a whole crontab. Entries see the environment lines above them, as in cron.
pub fn import(text: &str, cfg: &ImportConfig) -> Imported {
    let mut out = Imported::default();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut shell = "/bin/sh".to_string();
    let prefix = id_prefix(&cfg.prefix);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start_matches([' ', '\t']);
        let problem = |kind| Problem { line, kind };
        if trimmed.trim().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let first = trimmed.as_bytes()[0];
        if !(first.is_ascii_digit() || first == b'*' || first == b'@') {
            match env_setting(trimmed) {
                None => out.problems.push(problem(ProblemKind::NotAnEntry)),
                Some((name, value)) => {
                    if let Some(kind) = apply_env(name, value, &mut env, &mut shell) {
                        out.problems.push(problem(kind));
                    }
                }
            }
            continue;
        }
        match entry(trimmed, cfg) {
            Err(kind) => out.problems.push(problem(kind)),
            Ok(e) => {
                let base = format!("{prefix}-{}", short_hash(&e.key));
                let mut id = base.clone();
                let mut n = 1;
                while out.tasks.iter().any(|t| t.id == id) {
                    n += 1;
                    id = format!("{base}-{n}");
                }
                let script = script(&env, &shell, e.command);
                let json = task_json(&id, &e.time, e.user.as_deref(), &script);
                out.tasks.push(TaskFile { line, id, json });
            }
        }
    }
    out
}

/// True for `/etc/crontab` and any file in a `cron.d` directory: crontabs with a user column.
pub fn looks_system(path: &std::path::Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    matches!(
        (name.as_deref(), parent.as_deref()),
        (Some("crontab"), Some("etc")) | (_, Some("cron.d"))
    )
}

struct Entry<'a> {
    time: CrontabTime,
    user: Option<String>,
    command: &'a str,
    /// What the id hashes: user, time fields and command.
    key: String,
}

fn entry<'a>(line: &'a str, cfg: &ImportConfig) -> Result<Entry<'a>, ProblemKind> {
    let mut rest = line;
    let mut fields = Vec::new();
    let count = if line.starts_with('@') { 1 } else { 5 };
    for _ in 0..count {
        let (word, after) = split_word(rest);
        if word.is_empty() {
            break;
        }
        fields.push(word);
        rest = after;
    }
    let time_text = fields.join(" ");
    if fields.len() < count {
        return Err(ProblemKind::Time(CrontabError::FieldCount(fields.len())));
    }
    let time = time::to_seconds_first(&time_text).map_err(ProblemKind::Time)?;
    let user = if cfg.system {
        let (word, after) = split_word(rest);
        if word.is_empty() {
            return Err(ProblemKind::NoCommand);
        }
        rest = after;
        Some(word.to_string())
    } else {
        cfg.user.clone()
    };
    let command = rest.trim_start_matches([' ', '\t']);
    if command.trim().is_empty() {
        return Err(ProblemKind::NoCommand);
    }
    let key = format!(
        "{}\0{time_text}\0{command}",
        user.as_deref().unwrap_or_default()
    );
    Ok(Entry {
        time,
        user,
        command,
        key,
    })
}

/// The first blank-separated word of `s` and what follows it (not trimmed).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    s.split_at(end)
}

/// `name = value`, with optional blanks around `=` and the value optionally in matching quotes.
fn env_setting(line: &str) -> Option<(&str, String)> {
    let (name, value) = line.split_once('=')?;
    let name = name.trim_end_matches([' ', '\t']);
    if name.is_empty() || name.contains([' ', '\t']) {
        return None;
    }
    let value = value.trim_matches([' ', '\t', '\r']);
    let unquoted = [b'"', b'\'']
        .iter()
        .find(|q| value.len() >= 2 && value.as_bytes()[0] == **q && value.ends_with(**q as char))
        .map(|_| &value[1..value.len() - 1])
        .unwrap_or(value);
    Some((name, unquoted.to_string()))
}

/// Records one environment setting; `Some` when it does not carry over.
fn apply_env(
    name: &str,
    value: String,
    env: &mut Vec<(String, String)>,
    shell: &mut String,
) -> Option<ProblemKind> {
    let unsupported = |why| {
        Some(ProblemKind::UnsupportedEnv {
            name: format!("{name}={value}"),
            why,
        })
    };
    match name {
        "SHELL" => {
            *shell = value;
            return None;
        }
        // Empty means "send no mail", which is what the agent does anyway.
        "MAILTO" if value.is_empty() => return None,
        "MAILTO" | "MAILFROM" => {
            return unsupported("assistd sends no mail; output goes to the journal")
        }
        "CRON_TZ" => {
            return unsupported("put the zone in the task's cron (seconds-first, 7th field)")
        }
        _ => {}
    }
    let shell_name = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !shell_name {
        return Some(ProblemKind::BadEnvName(name.to_string()));
    }
    match env.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_string(), value)),
    }
    None
}

/// The command of an entry as cron runs it (Vixie cron's do_command.c): `\%` is `%` and `\\`
/// is `\`, the first other `%` ends the command, and what follows is standard input, where
/// `%` is a newline and `\%` a `%`, ending in a newline.
fn split_percent(command: &str) -> (String, Option<String>) {
    let mut cmd = String::new();
    let mut chars = command.chars();
    let mut escaped = false;
    let mut input = None;
    for c in chars.by_ref() {
        if escaped {
            if c != '%' && c != '\\' {
                cmd.push('\\');
            }
            cmd.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '%' {
            input = Some(String::new());
            break;
        } else {
            cmd.push(c);
        }
    }
    if escaped {
        cmd.push('\\');
    }
    let input = input.map(|mut data| {
        let mut escaped = false;
        for c in chars {
            if escaped && c != '%' {
                data.push('\\');
            }
            let c = if !escaped && c == '%' { '\n' } else { c };
            escaped = c == '\\';
            if !escaped {
                data.push(c);
            }
        }
        if escaped {
            data.push('\\');
        }
        if !data.is_empty() && !data.ends_with('\n') {
            data.push('\n');
        }
        data
    });
    (cmd, input.filter(|d| !d.is_empty()))
}

/// The script of one entry: the exports, then the command (through `shell` unless it is
/// `/bin/sh`), with its standard input as a quoted here-document.
fn script(env: &[(String, String)], shell: &str, command: &str) -> String {
    let (cmd, input) = split_percent(command);
    let mut out = String::new();
    for (name, value) in env {
        out.push_str(&format!("export {name}={}\n", sh_quote(value)));
    }
    let body = if shell == "/bin/sh" || shell.is_empty() {
        cmd
    } else {
        format!("exec {} -c {}", sh_quote(shell), sh_quote(&cmd))
    };
    match input {
        None => {
            out.push_str(&body);
            out.push('\n');
        }
        Some(data) => {
            let mut delim = "CRONTAB_STDIN".to_string();
            while data.lines().any(|l| l == delim) {
                delim.push('_');
            }
            // A group, so that every command of the line reads the input, as under cron.
            out.push_str(&format!("{{\n{body}\n}} <<'{delim}'\n{data}{delim}\n"));
        }
    }
    out
}

/// `value` in single quotes for /bin/sh.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn task_json(id: &str, time: &CrontabTime, user: Option<&str>, script: &str) -> String {
    let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let mut out = format!("{{\n  \"id\": {},\n", s(id));
    match time {
        CrontabTime::Cron(text) => out.push_str(&format!("  \"cron\": {},\n", s(text))),
        CrontabTime::Reboot => out.push_str("  \"repeat\": \"EveryReboot\",\n"),
    }
    if let Some(user) = user {
        out.push_str(&format!("  \"user\": {},\n", s(user)));
    }
    out.push_str("  \"timeout\": 0,\n");
    out.push_str(&format!("  \"command\": {}\n}}\n", s(script)));
    out
}

/// The file name made into an id: characters outside `A-Za-z0-9._-` become `_`, and no
/// leading dot.
fn id_prefix(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "crontab".to_string()
    } else {
        cleaned.to_string()
    }
}

/// The first 10 hex digits of the SHA-256 of `key`.
fn short_hash(key: &str) -> String {
    let digest = crate::sha256::sha256(key.as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_cfg() -> ImportConfig {
        ImportConfig {
            system: false,
            user: None,
            prefix: "tab".to_string(),
        }
    }

    fn system_cfg() -> ImportConfig {
        ImportConfig {
            system: true,
            ..user_cfg()
        }
    }

    /// One crontab line read as a user crontab: its cron (or `reboot`) and script, or the problem.
    fn check(line: &str, expect: &str) {
        check_with(&user_cfg(), line, expect);
    }

    fn check_with(cfg: &ImportConfig, text: &str, expect: &str) {
        let got = import(text, cfg);
        let mut parts = Vec::new();
        for t in &got.tasks {
            let v: serde_json::Value = serde_json::from_str(&t.json).expect("valid JSON");
            let time = v["cron"].as_str().unwrap_or("reboot").to_string();
            let user = v["user"]
                .as_str()
                .map(|u| format!(" as {u}"))
                .unwrap_or_default();
            parts.push(format!(
                "{time}{user}: {}",
                v["command"].as_str().unwrap_or("?")
            ));
        }
        for p in &got.problems {
            parts.push(p.to_string());
        }
        assert_eq!(parts.join(" | "), expect, "{text:?}");
    }

    #[test]
    fn five_fields() {
        check("*/15 * * * * date", "0 */15 * * * *: date\n");
    }
    #[test]
    fn blanks_inside_the_command_are_kept() {
        check("0 3 * * *\techo  a\tb", "0 0 3 * * *: echo  a\tb\n");
    }
    #[test]
    fn nickname() {
        check("@daily run-parts /x", "0 0 0 * * *: run-parts /x\n");
    }
    #[test]
    fn reboot() {
        check("@reboot /usr/bin/start", "reboot: /usr/bin/start\n");
    }
    #[test]
    fn system_user_column() {
        check_with(
            &system_cfg(),
            "17 * * * * root cd / && run-parts --report /etc/cron.hourly",
            "0 17 * * * * as root: cd / && run-parts --report /etc/cron.hourly\n",
        );
    }
    #[test]
    fn system_reboot_user_column() {
        check_with(
            &system_cfg(),
            "@reboot daemon /bin/x",
            "reboot as daemon: /bin/x\n",
        );
    }
    #[test]
    fn user_flag() {
        let cfg = ImportConfig {
            user: Some("alice".into()),
            ..user_cfg()
        };
        check_with(&cfg, "0 1 * * * ~/bin/x", "0 0 1 * * * as alice: ~/bin/x\n");
    }
    #[test]
    fn percent_is_stdin() {
        check(
            "0 22 * * 1-5 mail -s \"It's 10pm\" joe%Joe,%%Where are your kids?%",
            "0 0 22 * * 1-5: {\nmail -s \"It's 10pm\" joe\n} <<'CRONTAB_STDIN'\nJoe,\n\nWhere are your kids?\nCRONTAB_STDIN\n",
        );
    }
    #[test]
    fn escaped_percent_stays_in_the_command() {
        check(
            r"33 22 * * * expr $(date +\%s) / 60 \% 9",
            "0 33 22 * * *: expr $(date +%s) / 60 % 9\n",
        );
    }
    #[test]
    fn stdin_without_trailing_newline_gets_one() {
        check(
            "0 0 * * * cat%a\\%b",
            "0 0 0 * * *: {\ncat\n} <<'CRONTAB_STDIN'\na%b\nCRONTAB_STDIN\n",
        );
    }
    #[test]
    fn here_document_delimiter_avoids_the_data() {
        check(
            "0 0 * * * cat%CRONTAB_STDIN",
            "0 0 0 * * *: {\ncat\n} <<'CRONTAB_STDIN_'\nCRONTAB_STDIN\nCRONTAB_STDIN_\n",
        );
    }
    #[test]
    fn other_backslashes_are_kept() {
        check(r"0 0 * * * printf 'a\n'", "0 0 0 * * *: printf 'a\\n'\n");
    }
    #[test]
    fn env_lines_become_exports_for_later_entries() {
        check(
            "1 * * * * a\nPATH=/usr/bin:/bin\n FOO = \"two words \"\n2 * * * * b",
            "0 1 * * * *: a\n | 0 2 * * * *: export PATH='/usr/bin:/bin'\nexport FOO='two words '\nb\n",
        );
    }
    #[test]
    fn env_quote_in_value() {
        check(
            "X='it'\"s\"\n@hourly y",
            "0 0 * * * *: export X=''\\''it'\\''\"s\"'\ny\n",
        );
    }
    #[test]
    fn shell_other_than_sh() {
        check(
            "SHELL=/bin/bash\n0 0 * * * echo {a,b}",
            "0 0 0 * * *: exec '/bin/bash' -c 'echo {a,b}'\n",
        );
    }
    #[test]
    fn shell_sh_changes_nothing() {
        check("SHELL=/bin/sh\n0 0 * * * x", "0 0 0 * * *: x\n");
    }
    #[test]
    fn mailto_is_unsupported() {
        check(
            "MAILTO=paul\n0 0 * * * x",
            "0 0 0 * * *: x\n | line 1: MAILTO=paul is not supported: assistd sends no mail; output goes to the journal",
        );
    }
    #[test]
    fn empty_mailto_is_fine() {
        check("MAILTO=\"\"\n0 0 * * * x", "0 0 0 * * *: x\n");
    }
    #[test]
    fn cron_tz_is_unsupported() {
        check(
            "CRON_TZ=Asia/Shanghai",
            "line 1: CRON_TZ=Asia/Shanghai is not supported: put the zone in the task's cron (seconds-first, 7th field)",
        );
    }
    #[test]
    fn bad_env_name() {
        check(
            "A-B=1",
            "line 1: environment name \"A-B\" cannot be exported; setting not carried over",
        );
    }
    #[test]
    fn refused_entries_name_their_line() {
        check(
            "# comment\n\n0 0 */2 * 1 x\n0 0 * * *\n0 0 * *\nhello world\n@often x",
            "line 3: day-of-month \"*/2\" with day-of-week \"1\" means days matching both in cron (a field starting with '*' is not a restriction there), which the seconds-first grammar cannot express; list the days instead of a '*/' step \
             | line 4: entry has no command \
             | line 5: a crontab time has 5 fields or is a @nickname, not 4 fields \
             | line 6: neither an entry nor an environment setting \
             | line 7: unknown nickname \"@often\" (use @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly)",
        );
    }
    #[test]
    fn system_entry_without_command() {
        check_with(
            &system_cfg(),
            "0 0 * * * root",
            "line 1: entry has no command",
        );
    }

    #[test]
    fn ids_are_stable_valid_and_unique() {
        let cfg = ImportConfig {
            prefix: ".my crontab".to_string(),
            ..user_cfg()
        };
        let a = import("0 0 * * * x\n0 0 * * * x\n5 0 * * * x", &cfg);
        let b = import("# moved down\n0  0 * * *   x", &cfg);
        let ids: Vec<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[1], format!("{}-2", ids[0]));
        assert_ne!(ids[0], ids[2]);
        assert_eq!(b.tasks[0].id, ids[0], "same entry, same id");
        assert!(ids[0].starts_with("my_crontab-"), "{}", ids[0]);
        assert!(ids.iter().all(|id| id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))));
        assert_eq!((a.tasks[0].line, a.tasks[2].line), (1, 3));
    }

    #[test]
    fn task_files_load_as_local_tasks() {
        let got = import(
            "PATH=/bin\n17 * * * * root cd / && run-parts x\n@reboot root y",
            &system_cfg(),
        );
        assert!(got.problems.is_empty());
        let periodic =
            crate::source::local::parse_task(got.tasks[0].json.as_bytes(), "s", 0).expect("loads");
        assert_eq!(
            (
                periodic.cron.as_str(),
                periodic.username.as_str(),
                periodic.timeout.as_str()
            ),
            ("0 17 * * * *", "root", "0")
        );
        assert_eq!(periodic.repeat, crate::model::RepeatType::Period);
        let reboot =
            crate::source::local::parse_task(got.tasks[1].json.as_bytes(), "s", 0).expect("loads");
        assert_eq!(reboot.repeat, crate::model::RepeatType::EveryReboot);
    }

    #[test]
    fn system_crontab_paths() {
        use std::path::Path;
        assert!(looks_system(Path::new("/etc/crontab")));
        assert!(looks_system(Path::new("/etc/cron.d/e2scrub_all")));
        assert!(looks_system(Path::new("fixtures/etc/cron.d/x")));
        assert!(!looks_system(Path::new("/var/spool/cron/crontabs/alice")));
        assert!(!looks_system(Path::new("crontab")));
    }
}
