//! Send-file tasks (spec §8.1): check, decode and write one file atomically with its mode and
//! owner, then send the reference's finish or invalid report.
//!
//! This module never runs a command and never writes outside the task's destination directory
//! (a `name` with a `/` or equal to `.`/`..` is refused).

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::remote::hash::md5;

use crate::model::SendFileTaskInfo;
use crate::remote::transport::{Http, TransportError, DEFAULT_TIMEOUT};
use crate::runner::params::decode_base64;

/// The reference's result codes (`sendfile.go`); 14 and 15 are unused there too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFileCode {
    Success = 0,
    FileCreateFail = 1,
    ChownError = 2,
    ChmodError = 3,
    CreateDirFailed = 4,
    InvalidFilePath = 10,
    FileAlreadyExist = 11,
    EmptyContent = 12,
    InvalidContent = 13,
    InvalidSignature = 16,
    InvalidFileMode = 17,
    InvalidGid = 18,
    InvalidUid = 19,
}

impl SendFileCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Codes up to 4 are reported as finished, 10 and up as invalid.
    pub fn is_invalid(self) -> bool {
        self.code() >= 10
    }

    /// The invalid report's `param` and the task field that becomes its `value`.
    fn invalid_param(self, task: &SendFileTaskInfo) -> (&'static str, String) {
        match self {
            SendFileCode::InvalidFilePath => ("FileNameInvalid", task.name.clone()),
            SendFileCode::FileAlreadyExist => ("FileExist", task.name.clone()),
            SendFileCode::EmptyContent => ("EmptyFile", String::new()),
            SendFileCode::InvalidContent => ("InvalidFileContent", String::new()),
            SendFileCode::InvalidSignature => ("InvalidSignature", task.signature.clone()),
            SendFileCode::InvalidFileMode => ("InvalidFileMode", task.mode.clone()),
            SendFileCode::InvalidGid => ("FileGroupNotExist", task.group.clone()),
            SendFileCode::InvalidUid => ("FileOwnerNotExist", task.owner.clone()),
            _ => ("", String::new()),
        }
    }
}

/// Where files go when the task names no destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFileConfig {
    /// `/root` on Linux, as the reference does.
    pub default_destination: PathBuf,
}

impl Default for SendFileConfig {
    fn default() -> SendFileConfig {
        SendFileConfig {
            default_destination: PathBuf::from("/root"),
        }
    }
}

/// Why a file was not written: the code the server gets, and the OS error behind it if any.
#[derive(Debug)]
pub struct SendFileFailure {
    pub code: SendFileCode,
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SendFileFailure {
    fn new(code: SendFileCode) -> SendFileFailure {
        SendFileFailure { code, cause: None }
    }
    fn io(code: SendFileCode, e: io::Error) -> SendFileFailure {
        SendFileFailure {
            code,
            cause: Some(Box::new(e)),
        }
    }
    fn walk(code: SendFileCode, e: crate::fsutil::WalkError) -> SendFileFailure {
        SendFileFailure {
            code,
            cause: Some(Box::new(e)),
        }
    }
}

impl fmt::Display for SendFileFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.code {
            SendFileCode::Success => "no failure",
            SendFileCode::FileCreateFail => "writing the file failed",
            SendFileCode::ChownError => "changing the owner failed",
            SendFileCode::ChmodError => "changing the mode failed",
            SendFileCode::CreateDirFailed => "creating the destination failed",
            SendFileCode::InvalidFilePath => "invalid file name or destination",
            SendFileCode::FileAlreadyExist => "file exists and overwrite is off",
            SendFileCode::EmptyContent => "content is empty",
            SendFileCode::InvalidContent => "content is not base64",
            SendFileCode::InvalidSignature => "content MD5 does not match the signature",
            SendFileCode::InvalidFileMode => "invalid file mode",
            SendFileCode::InvalidGid => "group does not exist",
            SendFileCode::InvalidUid => "owner does not exist",
        };
        write!(f, "{what} (code {})", self.code.code())
    }
}

impl std::error::Error for SendFileFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as _)
    }
}

/// What `handle_send_file` did.
#[derive(Debug)]
pub struct SendFileResult {
    pub code: SendFileCode,
    /// The file written, on success.
    pub path: Option<PathBuf>,
    /// The report's fate; a failed report is only logged (one attempt, as the reference).
    pub report: Result<(), TransportError>,
}

/// Writes the file, then sends its report: `task/finish` for codes ≤ 4, `task/invalid` for
/// codes ≥ 10 (spec §2.3 E13/E14).
pub fn handle_send_file(
    http: &dyn Http,
    task: &SendFileTaskInfo,
    cfg: &SendFileConfig,
) -> SendFileResult {
    let id = &task.task_id;
    let (code, path) = match send_file(task, cfg) {
        Ok(path) => {
            log::info!("task={id} phase=sendfile wrote {}", path.display());
            (SendFileCode::Success, Some(path))
        }
        Err(e) => {
            log::warn!(
                "task={id} phase=sendfile {}",
                crate::error_chain::error_chain(&e)
            );
            (e.code, None)
        }
    };
    SendFileResult {
        code,
        path,
        report: send_report(http, task, code),
    }
}

/// Reports an entry refused before any check of its own (a signature strict mode requires):
/// nothing is written.
pub fn report_refused(
    http: &dyn Http,
    task: &SendFileTaskInfo,
    code: SendFileCode,
) -> SendFileResult {
    SendFileResult {
        code,
        path: None,
        report: send_report(http, task, code),
    }
}

fn send_report(
    http: &dyn Http,
    task: &SendFileTaskInfo,
    code: SendFileCode,
) -> Result<(), TransportError> {
    let url = report_path(task, code);
    let report = http.post(&url, b"", "", DEFAULT_TIMEOUT).map(|_| ());
    if let Err(e) = &report {
        log::warn!("task={} phase=sendfile report failed: {e}", task.task_id);
    }
    report
}

/// The report URL (path and query) for a result.
pub fn report_path(task: &SendFileTaskInfo, code: SendFileCode) -> String {
    let id = &task.task_id;
    if code.is_invalid() {
        let (param, value) = code.invalid_param(task);
        // The reference does not escape `value`; escaping is the same bytes for safe values
        // and keeps a name with `&` or spaces from breaking the query.
        format!(
            "/luban/api/v1/task/invalid?taskId={id}&taskType=sendfile&param={param}&value={}",
            query_escape(&value)
        )
    } else {
        let status = if code == SendFileCode::Success {
            "Success"
        } else {
            "Failed"
        };
        format!(
            "/luban/api/v1/task/finish?taskId={id}&status={status}&taskType=sendfile&errorcode={}",
            code.code()
        )
    }
}

/// Go's `url.QueryEscape`: unreserved bytes stay, space is `+`, the rest `%XX`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The checks and the write, in the reference's order of codes (spec §8.1), without any
/// report. Differences from the reference: the name may not hold `/` or be `.`/`..` (the
/// reference joins it unchecked, so `../x` escapes the destination); the owner and group are
/// looked up and applied to a temp file before it is renamed into place, so a failure leaves
/// no file behind and the final file never has the wrong owner or mode (the reference writes
/// first and chmods/chowns afterwards); an existing symlink at the path is replaced, not
/// followed. The destination is walked from `/` without following anything another user
/// could plant (`fsutil::open_dir_no_follow`): a symlink not owned by root or the agent, or a
/// directory owned by a user other than root, the agent or the file's own owner, is refused
/// as an invalid path (10), where the reference would write through it as root.
pub fn send_file(
    task: &SendFileTaskInfo,
    cfg: &SendFileConfig,
) -> Result<PathBuf, SendFileFailure> {
    use SendFileCode as C;
    let name = task.name.as_str();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(SendFileFailure::new(C::InvalidFilePath));
    }
    if task.content.is_empty() {
        return Err(SendFileFailure::new(C::EmptyContent));
    }
    // The user the file is for may own the directories it goes to (a file delivered into
    // their home): looked up once, here, for the walk; a lookup failure is reported in the
    // reference's order below.
    let owner = resolve_owner(&task.owner, &task.group);
    let for_user: Vec<libc::uid_t> = owner.iter().flatten().map(|(uid, _)| *uid).collect();
    let (dir_path, create) = if task.destination.is_empty() {
        (cfg.default_destination.clone(), None)
    } else {
        (PathBuf::from(&task.destination), Some(0o755))
    };
    let dir_path = std::path::absolute(&dir_path).unwrap_or(dir_path);
    let dir = match crate::fsutil::open_dir_no_follow(&dir_path, create, &for_user) {
        Ok(fd) => Some(fd),
        Err(e) => match e {
            // MkdirAll fails on an existing regular file too; the reference then reports 4.
            crate::fsutil::WalkError::NotADirectory(_) if create.is_some() => {
                return Err(SendFileFailure::walk(C::CreateDirFailed, e))
            }
            crate::fsutil::WalkError::NotADirectory(_)
            | crate::fsutil::WalkError::Symlink { .. }
            | crate::fsutil::WalkError::Owner { .. }
            | crate::fsutil::WalkError::TooManyLinks(_)
            | crate::fsutil::WalkError::NotAbsolute(_) => {
                return Err(SendFileFailure::walk(C::InvalidFilePath, e))
            }
            crate::fsutil::WalkError::Io { .. } if create.is_some() => {
                return Err(SendFileFailure::walk(C::CreateDirFailed, e))
            }
            // A missing default destination fails when the file is created (code 1), as in
            // the reference.
            crate::fsutil::WalkError::Missing(_) | crate::fsutil::WalkError::Io { .. } => {
                log::debug!("phase=sendfile {e}");
                None
            }
        },
    };
    let path = dir_path.join(name);
    let bytes = decode_base64(task.content.as_bytes())
        .map_err(|_| SendFileFailure::new(C::InvalidContent))?;
    let digest = hex(&md5(task.content.as_bytes()));
    if !digest.eq_ignore_ascii_case(task.signature.trim()) {
        return Err(SendFileFailure::new(C::InvalidSignature));
    }
    let mode = parse_mode(&task.mode).ok_or_else(|| SendFileFailure::new(C::InvalidFileMode))?;
    let Some(dir) = dir else {
        return Err(SendFileFailure::io(
            C::FileCreateFail,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not there", dir_path.display()),
            ),
        ));
    };
    if crate::fsutil::exists_in(&dir, name).unwrap_or(false) && !task.overwrite {
        return Err(SendFileFailure::new(C::FileAlreadyExist));
    }
    let owner = owner?;
    write_file(&dir, &dir_path, name, &bytes, mode, owner)?;
    Ok(path)
}

/// The mode string: empty is 0644; otherwise 3 or 4 octal digits. Only the permission bits
/// are applied: the reference hands the number to Go's `os.Chmod`, whose `FileMode` keeps
/// setuid/setgid/sticky elsewhere than 0o7000, so a leading `4`, `2` or `1` has no effect there
/// and has none here.
fn parse_mode(mode: &str) -> Option<u32> {
    let mode = if mode.is_empty() { "0644" } else { mode };
    if !(mode.len() == 3 || mode.len() == 4) || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(mode, 8).ok().map(|m| m & 0o777)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `None` when no chown is needed: both names empty, or both `root` (the reference skips
/// those). A missing one of the two defaults to `root`.
fn resolve_owner(
    owner: &str,
    group: &str,
) -> Result<Option<(libc::uid_t, libc::gid_t)>, SendFileFailure> {
    if (owner.is_empty() && group.is_empty()) || (owner == "root" && group == "root") {
        return Ok(None);
    }
    let owner = if owner.is_empty() { "root" } else { owner };
    let group = if group.is_empty() { "root" } else { group };
    let uid = lookup_uid(owner).ok_or_else(|| SendFileFailure::new(SendFileCode::InvalidUid))?;
    let gid = lookup_gid(group).ok_or_else(|| SendFileFailure::new(SendFileCode::InvalidGid))?;
    Ok(Some((uid, gid)))
}

/// Largest buffer offered to `getpwnam_r`/`getgrnam_r`.
const MAX_BUF: usize = 1 << 20;

/// The uid of a user name; `None` for a missing user or a database error. Like Go's
/// `user.Lookup`, a numeric name that is not a user name is not taken as a uid.
fn lookup_uid(name: &str) -> Option<libc::uid_t> {
    crate::runner::precheck::lookup_user(name)
        .ok()
        .map(|u| u.uid)
}

/// `getgrnam_r`; `None` for a missing group or a database error.
fn lookup_gid(name: &str) -> Option<libc::gid_t> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: group is plain old data; zeroed is a valid (empty) value.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its real size.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(grp.gr_gid);
    }
}

/// Temp file in `dir` (O_EXCL, 0600) → write → fchown → fchmod → fsync → rename → fsync dir,
/// all relative to the directory's descriptor. The owner is set before the mode so that the
/// kernel's clearing of set-id bits on chown cannot undo the mode; any failure removes the
/// temp file.
fn write_file(
    dir: &std::os::fd::OwnedFd,
    dir_path: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<(libc::uid_t, libc::gid_t)>,
) -> Result<(), SendFileFailure> {
    use SendFileCode as C;
    let (tmp, mut file) = crate::fsutil::create_temp_in(dir, name, 0o600)
        .map_err(|e| SendFileFailure::io(C::FileCreateFail, e))?;
    let result = (|| {
        file.write_all(bytes)
            .map_err(|e| SendFileFailure::io(C::FileCreateFail, e))?;
        if let Some((uid, gid)) = owner {
            // SAFETY: fchown on a valid, open file descriptor.
            if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
                return Err(SendFileFailure::io(
                    C::ChownError,
                    io::Error::last_os_error(),
                ));
            }
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| SendFileFailure::io(C::ChmodError, e))?;
        file.sync_all()
            .map_err(|e| SendFileFailure::io(C::FileCreateFail, e))?;
        crate::fsutil::rename_in(dir, &tmp, name)
            .map_err(|e| SendFileFailure::io(C::FileCreateFail, e))
    })();
    drop(file);
    if result.is_err() {
        let _ = crate::fsutil::remove_in(dir, &tmp);
        return result;
    }
    // The file is in place; a failed directory fsync is logged, not reported as a failure.
    // SAFETY: fsync on an open directory descriptor.
    if unsafe { libc::fsync(dir.as_raw_fd()) } != 0 {
        let e = io::Error::last_os_error();
        log::warn!("phase=sendfile fsync of {}: {e}", dir_path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use crate::remote::transport::testing::FakeHttp;
    use crate::runner::params::encode_base64;
    use std::os::unix::fs::MetadataExt;

    fn md5_hex(s: &str) -> String {
        hex(&md5(s.as_bytes()))
    }

    fn task(dir: &Path, name: &str, content: &[u8]) -> SendFileTaskInfo {
        let content = encode_base64(content);
        SendFileTaskInfo {
            task_id: "f-1".into(),
            name: name.into(),
            signature: md5_hex(&content),
            content,
            destination: dir.to_string_lossy().into_owned(),
            ..SendFileTaskInfo::default()
        }
    }

    fn code(t: &SendFileTaskInfo) -> SendFileCode {
        match send_file(t, &SendFileConfig::default()) {
            Ok(_) => SendFileCode::Success,
            Err(e) => e.code,
        }
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_with_default_mode() {
        let dir = TempDir::new("sf-ok");
        let t = task(dir.path(), "a.txt", b"hello\n");
        let path = send_file(&t, &SendFileConfig::default()).expect("written");
        assert_eq!(path, dir.path().join("a.txt"));
        assert_eq!(fs::read(&path).expect("read"), b"hello\n");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(listing(dir.path()), ["a.txt"], "no temp file left");
    }

    #[test]
    fn mode_forms() {
        assert_eq!(parse_mode(""), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0600"), Some(0o600));
        assert_eq!(
            parse_mode("4755"),
            Some(0o755),
            "set-id digit ignored as in Go"
        );
        for bad in ["7", "75", "07555", "0o75", "888", "-755", "mode"] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
        let dir = TempDir::new("sf-mode");
        let mut t = task(dir.path(), "x.sh", b"#!/bin/sh\n");
        t.mode = "0750".into();
        let path = send_file(&t, &SendFileConfig::default()).expect("written");
        assert_eq!(mode_of(&path), 0o750);
        t.mode = "mode".into();
        t.name = "y.sh".into();
        assert_eq!(code(&t), SendFileCode::InvalidFileMode);
        assert!(!dir.path().join("y.sh").exists());
    }

    #[test]
    fn default_destination_is_configurable() {
        let dir = TempDir::new("sf-default");
        let mut t = task(dir.path(), "d.txt", b"x");
        t.destination.clear();
        let cfg = SendFileConfig {
            default_destination: dir.path().to_path_buf(),
        };
        assert_eq!(
            send_file(&t, &cfg).expect("written"),
            dir.path().join("d.txt")
        );
        assert_eq!(
            SendFileConfig::default().default_destination,
            PathBuf::from("/root")
        );
    }

    #[test]
    fn creates_missing_destination() {
        let dir = TempDir::new("sf-mkdir");
        let dest = dir.path().join("a/b");
        let t = task(&dest, "c.txt", b"x");
        assert_eq!(code(&t), SendFileCode::Success);
        assert!(dest.join("c.txt").is_file());
    }

    #[test]
    fn destination_that_is_a_file() {
        let dir = TempDir::new("sf-destfile");
        let file = dir.path().join("plain");
        fs::write(&file, "x").expect("write");
        // MkdirAll fails on an existing file: code 4 (the reference's 10 check comes after it).
        assert_eq!(
            code(&task(&file, "c.txt", b"x")),
            SendFileCode::CreateDirFailed
        );
        // A destination below a file cannot be created either.
        assert_eq!(
            code(&task(&file.join("sub"), "c.txt", b"x")),
            SendFileCode::CreateDirFailed
        );
        // The default destination is not created; a file there is an invalid path.
        let mut t = task(dir.path(), "c.txt", b"x");
        t.destination.clear();
        let cfg = SendFileConfig {
            default_destination: file,
        };
        assert_eq!(
            send_file(&t, &cfg).map_err(|e| e.code).err(),
            Some(SendFileCode::InvalidFilePath)
        );
    }

    #[test]
    fn bad_names() {
        let dir = TempDir::new("sf-names");
        for name in ["", ".", "..", "../escape", "a/b", "/etc/passwd"] {
            assert_eq!(
                code(&task(dir.path(), name, b"x")),
                SendFileCode::InvalidFilePath,
                "{name:?}"
            );
        }
        assert!(listing(dir.path()).is_empty());
    }

    #[test]
    fn content_checks() {
        let dir = TempDir::new("sf-content");
        let mut t = task(dir.path(), "a", b"x");
        t.content.clear();
        assert_eq!(code(&t), SendFileCode::EmptyContent);
        let mut t = task(dir.path(), "a", b"x");
        t.content = "not base64!".into();
        t.signature = md5_hex(&t.content);
        assert_eq!(code(&t), SendFileCode::InvalidContent);
        let mut t = task(dir.path(), "a", b"x");
        t.signature = "00".into();
        assert_eq!(code(&t), SendFileCode::InvalidSignature);
        let mut t = task(dir.path(), "a", b"x");
        t.signature = t.signature.to_uppercase();
        assert_eq!(code(&t), SendFileCode::Success, "case-insensitive MD5");
    }

    #[test]
    fn overwrite_rules() {
        let dir = TempDir::new("sf-overwrite");
        let t = task(dir.path(), "a", b"one");
        assert_eq!(code(&t), SendFileCode::Success);
        let mut again = task(dir.path(), "a", b"two");
        assert_eq!(code(&again), SendFileCode::FileAlreadyExist);
        assert_eq!(fs::read(dir.path().join("a")).expect("read"), b"one");
        again.overwrite = true;
        assert_eq!(code(&again), SendFileCode::Success);
        assert_eq!(fs::read(dir.path().join("a")).expect("read"), b"two");
        // A symlink at the path is replaced, never written through.
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("link")).expect("symlink");
        let mut link = task(dir.path(), "link", b"new");
        assert_eq!(code(&link), SendFileCode::FileAlreadyExist);
        link.overwrite = true;
        assert_eq!(code(&link), SendFileCode::Success);
        assert_eq!(fs::read(&target).expect("read"), b"keep");
        assert!(!fs::symlink_metadata(dir.path().join("link"))
            .expect("meta")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn unknown_owner_and_group() {
        let dir = TempDir::new("sf-owner");
        let mut t = task(dir.path(), "a", b"x");
        t.owner = "no-such-user-assistd".into();
        assert_eq!(code(&t), SendFileCode::InvalidUid);
        t.owner = "root".into();
        t.group = "no-such-group-assistd".into();
        assert_eq!(code(&t), SendFileCode::InvalidGid);
        assert!(
            listing(dir.path()).is_empty(),
            "nothing written on a lookup failure"
        );
        assert_eq!(resolve_owner("", "").ok(), Some(None));
        assert_eq!(resolve_owner("root", "root").ok(), Some(None));
    }

    #[test]
    fn chown_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED sendfile::chown_as_root: needs root");
            return;
        }
        let dir = TempDir::new("sf-chown");
        let mut t = task(dir.path(), "a", b"x");
        t.owner = "nobody".into();
        t.group = "root".into();
        t.mode = "0640".into();
        let Some(uid) = lookup_uid("nobody") else {
            eprintln!("SKIPPED sendfile::chown_as_root: no user nobody");
            return;
        };
        let path = send_file(&t, &SendFileConfig::default()).expect("written");
        let meta = fs::metadata(&path).expect("meta");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (uid, 0, 0o640)
        );
    }

    #[test]
    fn chown_refused_when_not_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("SKIPPED sendfile::chown_refused_when_not_root: runs as root");
            return;
        }
        let dir = TempDir::new("sf-chown-refused");
        let mut t = task(dir.path(), "a", b"x");
        t.owner = "nobody".into();
        assert_eq!(code(&t), SendFileCode::ChownError);
        assert!(listing(dir.path()).is_empty(), "temp file removed");
    }

    #[test]
    fn reports() {
        let dir = TempDir::new("sf-report");
        let http = FakeHttp::answering(vec![FakeHttp::ok("success")]);
        let r = handle_send_file(
            &http,
            &task(dir.path(), "a", b"x"),
            &SendFileConfig::default(),
        );
        assert_eq!(r.code, SendFileCode::Success);
        assert!(r.report.is_ok());
        let mut bad = task(dir.path(), "a b&c", b"x");
        bad.signature = "x y".into();
        let r = handle_send_file(&http, &bad, &SendFileConfig::default());
        assert_eq!(r.code, SendFileCode::InvalidSignature);
        assert!(
            r.report.is_err(),
            "script exhausted: the failure is returned, not retried"
        );
        let mut exists = task(dir.path(), "a", b"x");
        exists.destination = dir.path().to_string_lossy().into_owned();
        handle_send_file(&http, &exists, &SendFileConfig::default());
        assert_eq!(
            http.paths(),
            [
                "/luban/api/v1/task/finish?taskId=f-1&status=Success&taskType=sendfile&errorcode=0",
                "/luban/api/v1/task/invalid?taskId=f-1&taskType=sendfile&param=InvalidSignature&value=x+y",
                "/luban/api/v1/task/invalid?taskId=f-1&taskType=sendfile&param=FileExist&value=a",
            ]
        );
    }

    #[test]
    fn every_invalid_code_has_its_key() {
        // spec §10.4 TestSendFileInvalid
        let t = SendFileTaskInfo {
            task_id: "f".into(),
            name: "abc".into(),
            signature: "signature".into(),
            mode: "mode".into(),
            group: "group".into(),
            owner: "owner".into(),
            ..SendFileTaskInfo::default()
        };
        let q = |c| report_path(&t, c);
        let base = "/luban/api/v1/task/invalid?taskId=f&taskType=sendfile";
        assert_eq!(
            q(SendFileCode::InvalidFilePath),
            format!("{base}&param=FileNameInvalid&value=abc")
        );
        assert_eq!(
            q(SendFileCode::FileAlreadyExist),
            format!("{base}&param=FileExist&value=abc")
        );
        assert_eq!(
            q(SendFileCode::EmptyContent),
            format!("{base}&param=EmptyFile&value=")
        );
        assert_eq!(
            q(SendFileCode::InvalidContent),
            format!("{base}&param=InvalidFileContent&value=")
        );
        assert_eq!(
            q(SendFileCode::InvalidSignature),
            format!("{base}&param=InvalidSignature&value=signature")
        );
        assert_eq!(
            q(SendFileCode::InvalidFileMode),
            format!("{base}&param=InvalidFileMode&value=mode")
        );
        assert_eq!(
            q(SendFileCode::InvalidGid),
            format!("{base}&param=FileGroupNotExist&value=group")
        );
        assert_eq!(
            q(SendFileCode::InvalidUid),
            format!("{base}&param=FileOwnerNotExist&value=owner")
        );
        assert_eq!(
            q(SendFileCode::ChmodError),
            "/luban/api/v1/task/finish?taskId=f&status=Failed&taskType=sendfile&errorcode=3"
        );
    }

    #[test]
    fn escapes_like_go() {
        assert_eq!(query_escape("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(query_escape("a b/c?&=é"), "a+b%2Fc%3F%26%3D%C3%A9");
    }
}
