//! The agent's configuration: the JSON config file, then command-line flags on top, validated
//! into one `Config`. Errors name the key and the file. It never starts anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Default of `signature_required_fields`: what a task's signature must cover in strict mode
/// (spec §7 names these three; parameters, user name and directory are never signed).
pub const DEFAULT_SIGNATURE_REQUIRED_FIELDS: [&str; 3] = ["userId", "instanceId", "commandContent"];

/// Default of `poweroff_command`: what exit code 193 runs (with `allow_power_actions`).
pub const DEFAULT_POWEROFF_COMMAND: &str = "/sbin/poweroff";
/// Default of `reboot_command`: what exit code 194 runs.
pub const DEFAULT_REBOOT_COMMAND: &str = "/sbin/reboot";

/// Default location of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/assistd/config.json";
/// Default of `max_log_quota`: 4 MiB, 700 times the reference's default quota and still a
/// bounded share of a small host's memory per running task.
pub const DEFAULT_MAX_LOG_QUOTA: usize = 4 * 1024 * 1024;
/// Default state directory (journal, boot tracking, scripts).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/assistd";
/// The largest worker pool (`workers`) the engine accepts: the reference's concurrency hard limit.
pub const MAX_WORKERS: usize = 500;
/// Remote mode: where the ECS metadata service answers (spec §2.5); `metadata_url`.
pub const DEFAULT_METADATA_URL: &str = "http://100.100.100.200";
/// Remote mode: the reference's RAM flag (spec §1.5); shared with the Go agent on purpose, so
/// replacing it on a running host is not mistaken for a boot.
pub const DEFAULT_COLDSTART_FLAG: &str = "/dev/shm/aliyun-assist-agent-coldstarted";
/// Remote mode: the reference's update check interval (spec §1.1 step 8);
/// `update_check_interval_secs`.
pub const DEFAULT_UPDATE_CHECK_INTERVAL: Duration = Duration::from_secs(1800);

/// Whether `text` can be a server address: a host name or IP address, with an optional
/// `:port`, or an `http://` / `https://` URL with a host. The error says what to write.
pub fn check_server(text: &str) -> Result<(), String> {
    const FORMS: &str = "is not a server address: write a host name (server.example.com), host:port, or a URL such as https://server.example.com";
    let t = text.trim();
    let rest = match t.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "has the scheme {scheme:?}; the server speaks http:// or https:// (write e.g. https://server.example.com)"
            ))
        }
        None => t,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None),
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    let port_ok = match port {
        None => true,
        Some(p) => p.parse::<u16>().is_ok_and(|n| n > 0),
    };
    if !host_ok || !port_ok || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FORMS.to_string());
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Local mode: the directory of task files. `None` means remote mode.
    pub local_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub allow_power_actions: bool,
    /// The programs exit codes 193 and 194 run (absolute paths, no arguments).
    pub poweroff_command: PathBuf,
    pub reboot_command: PathBuf,
    pub journal_max_bytes: u64,
    pub journal_keep: usize,
    pub log_level: log::LevelFilter,
    /// Remote mode: the server, `host[:port]` (HTTPS) or a full URL. `None`: the environment
    /// (`ALIYUN_ASSIST_SERVER_HOST`), then metadata discovery.
    pub server: Option<String>,
    /// Remote mode: sent as `X-Client-Instance-ID`.
    pub instance_id: Option<String>,
    /// Remote mode: PEM roots to trust instead of the bundled ones.
    pub ca_file: Option<PathBuf>,
    /// Remote mode: proxy URL (else `ALIYUN_ASSIST_PROXY`).
    pub proxy: Option<String>,
    /// Remote mode: the metadata service used for discovery.
    pub metadata_url: String,
    /// Remote mode without a kick channel: fetch the task list this often; 0 turns it off.
    pub poll_interval_secs: u64,
    /// Refuse tasks whose signature cannot be verified (the signature work reads it).
    pub strict_signatures: bool,
    /// The RAM flag file that tells a cold start (spec §1.5).
    pub coldstart_flag: PathBuf,
    /// Log to this file (rotated by size) instead of stderr.
    pub log_file: Option<PathBuf>,
    /// Rotate `log_file` past this size; 0 never rotates.
    pub log_max_bytes: u64,
    /// Rotated log files kept; 0 truncates in place.
    pub log_keep: usize,
    /// Remote mode: ask the server for a newer agent this often (first check one interval
    /// after start); 0 turns the checks off.
    pub update_check_interval_secs: u64,
    /// Remote mode: install an offered update and restart into it; false only logs offers.
    pub allow_self_update: bool,
    /// Remote mode, tests and development only: accept `http://` update downloads from a
    /// loopback host (127.0.0.0/8, ::1, localhost); any other host still needs `https://`.
    pub update_allow_insecure_loopback: bool,
    /// Remote mode: the release key updates must be signed with (base64 of the 32 bytes of an
    /// Ed25519 public key, or the absolute path of a file holding that).
    pub update_public_key: Option<String>,
    /// Remote mode: the only keys task-signing certificates may carry; each entry is a PEM
    /// `PUBLIC KEY` or the absolute path of a file of them. Empty: any key the server sends.
    pub signature_pinned_keys: Vec<String>,
    /// Remote mode, strict signatures: what every certificate must sign.
    pub signature_required_fields: Vec<String>,
    /// Remote mode: the report spool's bounds (past either, the oldest report is dropped).
    pub spool_max_reports: usize,
    pub spool_max_bytes: u64,
    /// The largest output a task's `logQuota` may make the agent keep, in bytes.
    pub max_log_quota: usize,
    /// Give tasks run as root the clean environment of tasks run as another user.
    pub clean_task_env: bool,
    /// Every task's output lines go to the agent's log as they arrive.
    pub log_task_output: bool,
    /// Remote mode: a session without a valid frame from the server this long ends as
    /// `Timeout` (the reference's 180 s).
    pub session_idle_timeout_secs: u64,
    /// Remote mode: a session ends as `Timeout` this long after it started (the reference's
    /// 3 h).
    pub session_max_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            local_dir: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            workers: 8,
            shutdown_grace: Duration::from_secs(10),
            allow_power_actions: false,
            poweroff_command: PathBuf::from(DEFAULT_POWEROFF_COMMAND),
            reboot_command: PathBuf::from(DEFAULT_REBOOT_COMMAND),
            journal_max_bytes: 10 * 1024 * 1024,
            journal_keep: 3,
            log_level: log::LevelFilter::Info,
            server: None,
            instance_id: None,
            ca_file: None,
            proxy: None,
            metadata_url: DEFAULT_METADATA_URL.to_string(),
            poll_interval_secs: 60,
            strict_signatures: false,
            coldstart_flag: PathBuf::from(DEFAULT_COLDSTART_FLAG),
            log_file: None,
            log_max_bytes: crate::logging::DEFAULT_LOG_MAX_BYTES,
            log_keep: crate::logging::DEFAULT_LOG_KEEP,
            update_check_interval_secs: DEFAULT_UPDATE_CHECK_INTERVAL.as_secs(),
            allow_self_update: true,
            update_allow_insecure_loopback: false,
            update_public_key: None,
            signature_pinned_keys: Vec::new(),
            signature_required_fields: DEFAULT_SIGNATURE_REQUIRED_FIELDS
                .map(str::to_string)
                .to_vec(),
            spool_max_reports: 10_000,
            spool_max_bytes: 64 * 1024 * 1024,
            max_log_quota: DEFAULT_MAX_LOG_QUOTA,
            clean_task_env: false,
            session_idle_timeout_secs: 180,
            session_max_secs: 3 * 60 * 60,
            log_task_output: false,
        }
    }
}

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Syntax {
        path: PathBuf,
        source: serde_json::Error,
    },
    NotAnObject {
        path: PathBuf,
    },
    UnknownKey {
        path: PathBuf,
        key: String,
    },
    BadValue {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, .. } => write!(f, "cannot read config {}", path.display()),
            ConfigError::Syntax { path, .. } => {
                write!(f, "config {} is not valid JSON", path.display())
            }
            ConfigError::NotAnObject { path } => {
                write!(f, "config {} must be a JSON object", path.display())
            }
            ConfigError::UnknownKey { path, key } => {
                write!(f, "config {}: unknown key \"{key}\"", path.display())
            }
            ConfigError::BadValue {
                path,
                key,
                expected,
            } => {
                write!(
                    f,
                    "config {}: key \"{key}\" must be {expected}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Syntax { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Config {
    /// Where and how much the agent logs, for `logging::init`.
    pub fn log_config(&self) -> crate::logging::LogConfig {
        use crate::logging::{LogConfig, LogTarget};
        LogConfig {
            level: self.log_level,
            target: match &self.log_file {
                Some(path) => LogTarget::File {
                    path: path.clone(),
                    max_bytes: self.log_max_bytes,
                    keep: self.log_keep,
                },
                None => LogTarget::Stderr,
            },
        }
    }

    /// Reads `path` over the defaults. A missing file at the default location is not an error.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Config::from_json(path, &bytes)
    }

    /// Parses config bytes; `path` only names the file in errors.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| ConfigError::Syntax {
            path: path.to_path_buf(),
            source,
        })?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotAnObject {
                path: path.to_path_buf(),
            });
        };
        let mut cfg = Config::default();
        let bad = |key: &str, expected| ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected,
        };
        for (key, v) in &map {
            match key.as_str() {
                "local_dir" => {
                    cfg.local_dir = Some(PathBuf::from(
                        v.as_str().ok_or_else(|| bad(key, "a string"))?,
                    ))
                }
                "state_dir" => {
                    cfg.state_dir = PathBuf::from(v.as_str().ok_or_else(|| bad(key, "a string"))?)
                }
                "workers" => {
                    cfg.workers = v
                        .as_u64()
                        .filter(|n| (1..=MAX_WORKERS as u64).contains(n))
                        .ok_or_else(|| bad(key, "a number from 1 to 500"))?
                        as usize
                }
                "shutdown_grace_secs" => {
                    cfg.shutdown_grace = Duration::from_secs(
                        v.as_u64()
                            .ok_or_else(|| bad(key, "a whole number of seconds"))?,
                    )
                }
                "poweroff_command" | "reboot_command" => {
                    let path = v
                        .as_str()
                        .filter(|p| p.starts_with('/'))
                        .map(PathBuf::from)
                        .ok_or_else(|| bad(key, "an absolute path"))?;
                    if key == "poweroff_command" {
                        cfg.poweroff_command = path;
                    } else {
                        cfg.reboot_command = path;
                    }
                }
                "allow_power_actions" => {
                    cfg.allow_power_actions =
                        v.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                "journal_max_bytes" => {
                    cfg.journal_max_bytes = v
                        .as_u64()
                        .filter(|n| *n >= 4096)
                        .ok_or_else(|| bad(key, "a number of bytes of at least 4096"))?
                }
                "journal_keep" => {
                    cfg.journal_keep = v
                        .as_u64()
                        .filter(|n| *n <= 100)
                        .ok_or_else(|| bad(key, "a number from 0 to 100"))?
                        as usize
                }
                "log_level" => {
                    cfg.log_level = v
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad(key, "one of off, error, warn, info, debug, trace"))?
                }
                "server" | "instance_id" | "proxy" | "metadata_url" => {
                    let text = v
                        .as_str()
                        .filter(|s| !s.trim().is_empty())
                        .ok_or_else(|| bad(key, "a non-empty string"))?
                        .to_string();
                    match key.as_str() {
                        "server" => cfg.server = Some(text),
                        "instance_id" => cfg.instance_id = Some(text),
                        "proxy" => cfg.proxy = Some(text),
                        _ => cfg.metadata_url = text,
                    }
                }
                "ca_file" => {
                    cfg.ca_file = Some(PathBuf::from(
                        v.as_str().ok_or_else(|| bad(key, "a string"))?,
                    ))
                }
                "coldstart_flag" => {
                    cfg.coldstart_flag =
                        PathBuf::from(v.as_str().ok_or_else(|| bad(key, "a string"))?)
                }
                "poll_interval_secs" => {
                    cfg.poll_interval_secs = v
                        .as_u64()
                        .ok_or_else(|| bad(key, "a whole number of seconds (0: off)"))?
                }
                "strict_signatures" => {
                    cfg.strict_signatures = v.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                "log_file" => {
                    cfg.log_file = Some(PathBuf::from(
                        v.as_str().ok_or_else(|| bad(key, "a string"))?,
                    ))
                }
                "log_max_bytes" => {
                    cfg.log_max_bytes = v
                        .as_u64()
                        .ok_or_else(|| bad(key, "a number of bytes (0: never rotate)"))?
                }
                "log_keep" => {
                    cfg.log_keep = v
                        .as_u64()
                        .filter(|n| *n <= 100)
                        .ok_or_else(|| bad(key, "a number from 0 to 100"))?
                        as usize
                }
                "update_check_interval_secs" => {
                    cfg.update_check_interval_secs = v
                        .as_u64()
                        .ok_or_else(|| bad(key, "a whole number of seconds (0: off)"))?
                }
                "spool_max_reports" => {
                    cfg.spool_max_reports = v
                        .as_u64()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| bad(key, "a number from 1 to 1000000"))?
                        as usize
                }
                "spool_max_bytes" => {
                    cfg.spool_max_bytes = v
                        .as_u64()
                        .filter(|n| *n >= 65_536)
                        .ok_or_else(|| bad(key, "a number of bytes of at least 65536"))?
                }
                "max_log_quota" => {
                    cfg.max_log_quota = v
                        .as_u64()
                        .filter(|n| (12_000..=1 << 30).contains(n))
                        .ok_or_else(|| bad(key, "a number of bytes from 12000 to 1073741824"))?
                        as usize
                }
                "log_task_output" => {
                    cfg.log_task_output = v.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                "session_idle_timeout_secs" => {
                    cfg.session_idle_timeout_secs = v
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad(key, "a whole number of seconds, at least 1"))?
                }
                "session_max_secs" => {
                    cfg.session_max_secs = v
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad(key, "a whole number of seconds, at least 1"))?
                }
                "clean_task_env" => {
                    cfg.clean_task_env = v.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                "allow_self_update" => {
                    cfg.allow_self_update = v.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                "update_allow_insecure_loopback" => {
                    cfg.update_allow_insecure_loopback =
                        v.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                "signature_pinned_keys" => {
                    cfg.signature_pinned_keys = string_list(v)
                        .filter(|l| l.iter().all(|k| !k.trim().is_empty()))
                        .ok_or_else(|| {
                            bad(key, "a list of PEM public keys or absolute file paths")
                        })?
                }
                "signature_required_fields" => {
                    cfg.signature_required_fields = string_list(v)
                        .filter(|l| {
                            l.iter().all(|f| {
                                ["userId", "instanceId", "commandContent"].contains(&f.as_str())
                            })
                        })
                        .ok_or_else(|| bad(key, "a list of userId, instanceId, commandContent"))?
                }
                "update_public_key" => {
                    cfg.update_public_key = Some(
                        v.as_str()
                            .filter(|s| !s.trim().is_empty())
                            .ok_or_else(|| {
                                bad(key, "base64 of an Ed25519 public key, or a file path")
                            })?
                            .to_string(),
                    )
                }
                _ => {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_path_buf(),
                        key: key.clone(),
                    })
                }
            }
        }
        Ok(cfg)
    }
}

/// A JSON array of strings.
fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The configuration file as the agent started with it, re-read on SIGHUP: `log_level` takes
/// effect at once; any other changed key is named in the log as needing a restart (threads,
/// sockets and directories were set up from the old values). A file that no longer loads is
/// reported and the running configuration stays.
pub struct ConfigWatch {
    path: PathBuf,
    required: bool,
    loaded: Config,
}

impl ConfigWatch {
    pub fn new(path: PathBuf, required: bool, loaded: Config) -> ConfigWatch {
        ConfigWatch {
            path,
            required,
            loaded,
        }
    }

    pub fn reload(&mut self) {
        let fresh = match Config::load(&self.path, self.required) {
            Ok(cfg) => cfg,
            Err(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                log::error!("phase=reload {text}; keeping the running configuration");
                return;
            }
        };
        if fresh.log_level != self.loaded.log_level {
            log::set_max_level(fresh.log_level);
            log::warn!("phase=reload log_level is now {}", fresh.log_level);
        }
        for key in self.loaded.changed_keys(&fresh) {
            if key != "log_level" {
                log::warn!(
                    "phase=reload {}: \"{key}\" changed; it takes effect when the agent restarts",
                    self.path.display()
                );
            }
        }
        self.loaded = fresh;
    }
}

impl Config {
    /// The names of the keys whose values differ between two configurations.
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |differs: bool, key: &'static str| {
            if differs {
                keys.push(key);
            }
        };
        check(self.local_dir != other.local_dir, "local_dir");
        check(self.state_dir != other.state_dir, "state_dir");
        check(self.workers != other.workers, "workers");
        check(
            self.shutdown_grace != other.shutdown_grace,
            "shutdown_grace_secs",
        );
        check(
            self.allow_power_actions != other.allow_power_actions,
            "allow_power_actions",
        );
        check(
            self.poweroff_command != other.poweroff_command,
            "poweroff_command",
        );
        check(
            self.reboot_command != other.reboot_command,
            "reboot_command",
        );
        check(
            self.journal_max_bytes != other.journal_max_bytes,
            "journal_max_bytes",
        );
        check(self.journal_keep != other.journal_keep, "journal_keep");
        check(self.log_level != other.log_level, "log_level");
        check(self.server != other.server, "server");
        check(self.instance_id != other.instance_id, "instance_id");
        check(self.ca_file != other.ca_file, "ca_file");
        check(self.proxy != other.proxy, "proxy");
        check(self.metadata_url != other.metadata_url, "metadata_url");
        check(
            self.poll_interval_secs != other.poll_interval_secs,
            "poll_interval_secs",
        );
        check(
            self.strict_signatures != other.strict_signatures,
            "strict_signatures",
        );
        check(
            self.coldstart_flag != other.coldstart_flag,
            "coldstart_flag",
        );
        check(self.log_file != other.log_file, "log_file");
        check(self.log_max_bytes != other.log_max_bytes, "log_max_bytes");
        check(self.log_keep != other.log_keep, "log_keep");
        check(
            self.update_check_interval_secs != other.update_check_interval_secs,
            "update_check_interval_secs",
        );
        check(
            self.allow_self_update != other.allow_self_update,
            "allow_self_update",
        );
        check(
            self.update_allow_insecure_loopback != other.update_allow_insecure_loopback,
            "update_allow_insecure_loopback",
        );
        check(
            self.update_public_key != other.update_public_key,
            "update_public_key",
        );
        check(
            self.signature_pinned_keys != other.signature_pinned_keys,
            "signature_pinned_keys",
        );
        check(
            self.signature_required_fields != other.signature_required_fields,
            "signature_required_fields",
        );
        check(
            self.session_idle_timeout_secs != other.session_idle_timeout_secs,
            "session_idle_timeout_secs",
        );
        check(
            self.session_max_secs != other.session_max_secs,
            "session_max_secs",
        );
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_must_be_an_address() {
        for ok in [
            "server.example.com",
            "server.example.com:8443",
            "10.0.0.1",
            "https://server.example.com",
            "http://127.0.0.1:9/base",
            "https://[::1]:8443",
        ] {
            assert_eq!(check_server(ok), Ok(()), "{ok}");
        }
        let forms = "is not a server address: write a host name (server.example.com), host:port, or a URL such as https://server.example.com";
        for bad in [
            "not a url",
            "",
            "https://",
            "host:port",
            "host:0",
            "a\u{1b}b",
            "https://x y",
        ] {
            assert_eq!(check_server(bad), Err(forms.to_string()), "{bad:?}");
        }
        assert_eq!(
            check_server("ftp://server"),
            Err("has the scheme \"ftp\"; the server speaks http:// or https:// (write e.g. https://server.example.com)".to_string())
        );
    }

    fn parse(json: &str) -> Result<Config, String> {
        Config::from_json(Path::new("c.json"), json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn changed_keys_are_named() {
        let a = parse(r#"{"workers": 3, "log_level": "info"}"#).expect("valid");
        let b = parse(r#"{"workers": 4, "log_level": "debug"}"#).expect("valid");
        assert_eq!(a.changed_keys(&b), vec!["workers", "log_level"]);
        assert!(a.changed_keys(&a).is_empty());
    }

    #[test]
    fn signature_trust_keys() {
        let cfg = parse(
            r#"{"signature_pinned_keys": ["/etc/assistd/signing.pem"],
            "signature_required_fields": ["commandContent"]}"#,
        )
        .expect("valid");
        assert_eq!(cfg.signature_pinned_keys, ["/etc/assistd/signing.pem"]);
        assert_eq!(cfg.signature_required_fields, ["commandContent"]);
        assert_eq!(
            Config::default().signature_required_fields,
            ["userId", "instanceId", "commandContent"]
        );
        for bad in [
            r#"{"signature_pinned_keys": "/one.pem"}"#,
            r#"{"signature_pinned_keys": [""]}"#,
            r#"{"signature_required_fields": ["username"]}"#,
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("signature_"), "{e}");
        }
    }

    #[test]
    fn empty_object_is_the_defaults() {
        assert_eq!(parse("{}"), Ok(Config::default()));
    }

    #[test]
    fn known_keys_are_read() {
        let cfg = parse(r#"{"workers": 3, "state_dir": "/tmp/s", "allow_power_actions": true, "log_level": "debug"}"#)
            .expect("valid config");
        assert_eq!(cfg.workers, 3);
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/s"));
        assert!(cfg.allow_power_actions);
        assert_eq!(cfg.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn session_limits_default_to_the_reference_and_are_read() {
        let d = Config::default();
        assert_eq!(
            (d.session_idle_timeout_secs, d.session_max_secs),
            (180, 10_800)
        );
        let cfg = parse(r#"{"session_idle_timeout_secs": 2, "session_max_secs": 5}"#)
            .expect("valid config");
        assert_eq!(
            (cfg.session_idle_timeout_secs, cfg.session_max_secs),
            (2, 5)
        );
        assert!(parse(r#"{"session_max_secs": 0}"#)
            .unwrap_err()
            .contains("session_max_secs"));
    }

    #[test]
    fn remote_keys_are_read() {
        let cfg = parse(
            r#"{"server": "http://127.0.0.1:9", "instance_id": "i-1", "ca_file": "/ca.pem",
            "proxy": "http://p:3128", "metadata_url": "http://127.0.0.1:1", "poll_interval_secs": 0,
            "strict_signatures": true, "coldstart_flag": "/tmp/flag"}"#,
        )
        .expect("valid config");
        assert_eq!(cfg.server.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(cfg.instance_id.as_deref(), Some("i-1"));
        assert_eq!(cfg.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(cfg.proxy.as_deref(), Some("http://p:3128"));
        assert_eq!(cfg.metadata_url, "http://127.0.0.1:1");
        assert_eq!(cfg.poll_interval_secs, 0);
        assert!(cfg.strict_signatures);
        assert_eq!(cfg.coldstart_flag, PathBuf::from("/tmp/flag"));
        assert_eq!(
            parse(r#"{"server": ""}"#),
            Err("config c.json: key \"server\" must be a non-empty string".to_string())
        );
    }

    #[test]
    fn update_keys_are_read() {
        let cfg = Config::default();
        assert_eq!(cfg.update_check_interval_secs, 1800);
        assert!(cfg.allow_self_update);
        let cfg = parse(r#"{"update_check_interval_secs": 0, "allow_self_update": false}"#)
            .expect("valid config");
        assert_eq!(cfg.update_check_interval_secs, 0);
        assert!(!cfg.allow_self_update);
        assert!(!Config::default().update_allow_insecure_loopback);
        assert_eq!(Config::default().update_public_key, None);
        let cfg = parse(
            r#"{"update_allow_insecure_loopback": true, "update_public_key": "/etc/assistd/release.pub"}"#,
        )
        .expect("valid config");
        assert!(cfg.update_allow_insecure_loopback);
        assert_eq!(
            cfg.update_public_key.as_deref(),
            Some("/etc/assistd/release.pub")
        );
        assert!(parse(r#"{"update_public_key": ""}"#).is_err());
        assert!(parse(r#"{"update_allow_insecure_loopback": "yes"}"#).is_err());
        assert_eq!(
            parse(r#"{"update_check_interval_secs": -1}"#),
            Err("config c.json: key \"update_check_interval_secs\" must be a whole number of seconds (0: off)".to_string())
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        assert_eq!(
            parse(r#"{"worker": 3}"#),
            Err("config c.json: unknown key \"worker\"".to_string())
        );
        assert_eq!(
            parse(r#"{"workers": 501}"#),
            Err("config c.json: key \"workers\" must be a number from 1 to 500".to_string())
        );
        assert_eq!(
            parse(r#"{"workers": "8"}"#),
            Err("config c.json: key \"workers\" must be a number from 1 to 500".to_string())
        );
        assert_eq!(
            parse("[]"),
            Err("config c.json must be a JSON object".to_string())
        );
    }
}
