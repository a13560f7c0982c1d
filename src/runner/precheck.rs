//! The checks a task must pass before anything runs (spec §4.4): command type, base64 content,
//! container, user, working directory; it reads the user database and the file system but must
//! never create, write or start anything.

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::model::RunTaskInfo;

use super::params::decode_base64;
use super::Invalid;

/// The only command type a Unix host runs.
pub const SHELL: &str = "RunShellScript";

/// A local account, as `getpwnam_r` and `getgrouplist` describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, primary group included.
    pub groups: Vec<libc::gid_t>,
    pub home: PathBuf,
}

/// What the checks found out, for the run that follows.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The decoded script text.
    pub script: Vec<u8>,
    pub user: Option<UserInfo>,
    /// Working directory; `None` keeps the agent's.
    pub cwd: Option<PathBuf>,
    /// `HOME` for the child; `None` keeps the agent's environment as is.
    pub home: Option<PathBuf>,
}

fn invalid(param: &str, value: String) -> Invalid {
    Invalid {
        param: param.to_string(),
        value,
    }
}

/// Runs the checks in the reference's order; the first failure is the task's invalid report.
pub fn check(task: &RunTaskInfo) -> Result<Checked, Invalid> {
    // RunBatScript and RunPowerShellScript are valid types for the reference, which would then
    // fail later on a Unix host; this agent only runs shell scripts, so any other type (those
    // two included) is reported invalid up front, with the reference's TypeInvalid wording.
    if task.command_type != SHELL {
        return Err(invalid(
            "TypeInvalid",
            format!("TypeInvalid_{}", task.command_type),
        ));
    }
    let script = decode_base64(task.content.as_bytes())
        .map_err(|e| invalid("CommandContentInvalid", e.to_string()))?;
    if !task.container_id.is_empty() || !task.container_name.is_empty() {
        return Err(invalid(
            "UnsupportedContainerRuntime",
            "UnsupportedContainerRuntime: container tasks are not supported by this agent"
                .to_string(),
        ));
    }
    let user = if task.username.is_empty() {
        None
    } else {
        let user = lookup_user(&task.username).map_err(|e| {
            invalid(
                "UsernameOrPasswordInvalid",
                format!("UserInvalid_{}: {e}", task.username),
            )
        })?;
        Some(user)
    };
    let home = match &user {
        Some(u) => Some(u.home.clone()),
        None => agent_home(),
    };
    let cwd = if !task.working_dir.is_empty() {
        let dir = Path::new(&task.working_dir);
        if !dir.is_dir() {
            return Err(invalid(
                "workingDirectory",
                format!(
                    "WorkingDirectoryNotExist: {} does not exist",
                    task.working_dir
                ),
            ));
        }
        Some(dir.to_path_buf())
    } else if let Some(u) = &user {
        if !u.home.is_dir() {
            return Err(invalid(
                "workingDirectory",
                format!(
                    "DefaultWorkingDirectoryNotAvailable: Failed to use home directory of specified \
                     user as working directory for invocation: {} does not exist",
                    u.home.display()
                ),
            ));
        }
        Some(u.home.clone())
    } else {
        home.clone().filter(|h| h.is_dir())
    };
    Ok(Checked {
        script,
        user,
        cwd,
        home,
    })
}

/// Why a user name could not be resolved.
#[derive(Debug)]
pub enum LookupError {
    /// No such account.
    NotFound,
    /// The name cannot be passed to libc (an interior NUL byte).
    BadName,
    /// The user database could not be read.
    Database(io::Error),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NotFound => f.write_str("unknown user"),
            LookupError::BadName => f.write_str("user name contains a NUL byte"),
            LookupError::Database(e) => write!(f, "cannot read the user database: {e}"),
        }
    }
}

impl std::error::Error for LookupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LookupError::Database(e) => Some(e),
            _ => None,
        }
    }
}

/// Largest buffer offered to `getpwnam_r` before giving up.
const MAX_PW_BUF: usize = 1 << 20;

/// `getpwnam_r` (by name) or `getpwuid_r` (by uid), retried with a larger buffer on ERANGE.
fn passwd_entry(by: PwKey<'_>) -> Result<(libc::uid_t, libc::gid_t, PathBuf), LookupError> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain old data; zeroed is a valid (empty) value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its real size.
        let rc = unsafe {
            match by {
                PwKey::Name(name) => libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
                PwKey::Uid(uid) => libc::getpwuid_r(
                    uid,
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
            }
        };
        if rc == libc::ERANGE && buf.len() < MAX_PW_BUF {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(LookupError::Database(io::Error::from_raw_os_error(rc)));
        }
        if result.is_null() {
            return Err(LookupError::NotFound);
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::new()
        } else {
            // SAFETY: on success pw_dir points to a NUL-terminated string inside `buf`.
            let bytes = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes();
            PathBuf::from(OsStr::from_bytes(bytes))
        };
        return Ok((pwd.pw_uid, pwd.pw_gid, home));
    }
}

#[derive(Clone, Copy)]
enum PwKey<'a> {
    Name(&'a CStr),
    Uid(libc::uid_t),
}

/// Resolves a local account and its supplementary groups.
pub fn lookup_user(name: &str) -> Result<UserInfo, LookupError> {
    let cname = CString::new(name).map_err(|_| LookupError::BadName)?;
    let (uid, gid, home) = passwd_entry(PwKey::Name(&cname))?;
    let groups = group_list(&cname, gid)?;
    Ok(UserInfo {
        name: name.to_string(),
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(any(target_os = "linux", target_os = "freebsd"))]
fn group_list(name: &CStr, gid: libc::gid_t) -> Result<Vec<libc::gid_t>, LookupError> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n: libc::c_int = groups.len().try_into().unwrap_or(libc::c_int::MAX);
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let wanted = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(wanted);
            return Ok(groups);
        }
        // Too small: `n` now holds the needed size (glibc); grow at least twofold otherwise.
        let next = wanted.max(groups.len() * 2);
        if next > 65536 {
            return Err(LookupError::Database(io::Error::other("too many groups")));
        }
        groups.resize(next, 0);
    }
}

/// The agent's own home: `$HOME`, else the passwd entry of the effective user.
pub fn agent_home() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => {
            // SAFETY: geteuid cannot fail.
            let uid = unsafe { libc::geteuid() };
            passwd_entry(PwKey::Uid(uid))
                .ok()
                .map(|(_, _, home)| home)
                .filter(|h| !h.as_os_str().is_empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(content: &str) -> RunTaskInfo {
        RunTaskInfo {
            command_type: SHELL.to_string(),
            task_id: "t-1".to_string(),
            content: content.to_string(),
            ..RunTaskInfo::default()
        }
    }

    fn err(t: &RunTaskInfo) -> (String, String) {
        let e = check(t).expect_err("must be invalid");
        (e.param, e.value)
    }

    #[test]
    fn command_type_must_be_shell() {
        for ty in ["RunBatScript", "RunPowerShellScript", "RunFooScript", ""] {
            let t = RunTaskInfo {
                command_type: ty.to_string(),
                ..task("cHdk")
            };
            assert_eq!(err(&t), ("TypeInvalid".into(), format!("TypeInvalid_{ty}")));
        }
    }

    #[test]
    fn content_must_be_base64() {
        assert_eq!(
            err(&task("YWJj1")),
            (
                "CommandContentInvalid".into(),
                "illegal base64 data at input byte 4".into()
            )
        );
        assert_eq!(check(&task("cHdk")).expect("valid").script, b"pwd".to_vec());
    }

    #[test]
    fn containers_are_unsupported() {
        let t = RunTaskInfo {
            container_name: "web".into(),
            ..task("cHdk")
        };
        assert_eq!(err(&t).0, "UnsupportedContainerRuntime");
    }

    #[test]
    fn unknown_user_is_invalid() {
        let t = RunTaskInfo {
            username: "no-such-user-assistd".into(),
            ..task("cHdk")
        };
        assert_eq!(
            err(&t),
            (
                "UsernameOrPasswordInvalid".into(),
                "UserInvalid_no-such-user-assistd: unknown user".into()
            )
        );
    }

    #[test]
    fn root_is_found_with_groups() {
        let root = lookup_user("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
    }

    #[test]
    fn working_directory_must_exist() {
        let t = RunTaskInfo {
            working_dir: "/no/such/dir/assistd".into(),
            ..task("cHdk")
        };
        assert_eq!(
            err(&t),
            (
                "workingDirectory".into(),
                "WorkingDirectoryNotExist: /no/such/dir/assistd does not exist".into()
            )
        );
        let t = RunTaskInfo {
            working_dir: "/tmp".into(),
            ..task("cHdk")
        };
        assert_eq!(check(&t).expect("valid").cwd, Some(PathBuf::from("/tmp")));
    }

    #[test]
    fn user_without_home_has_no_default_working_directory() {
        // Any account whose home is missing will do; skip when the system has none.
        let candidates = ["nobody", "nonexistent", "daemon", "bin", "sys"];
        let Some(user) = candidates
            .iter()
            .filter_map(|n| lookup_user(n).ok())
            .find(|u| !u.home.is_dir())
        else {
            eprintln!("SKIPPED: no local account with a missing home directory");
            return;
        };
        let t = RunTaskInfo {
            username: user.name.clone(),
            ..task("cHdk")
        };
        let (param, value) = err(&t);
        assert_eq!(param, "workingDirectory");
        assert!(
            value.starts_with("DefaultWorkingDirectoryNotAvailable: "),
            "{value}"
        );
    }
}
