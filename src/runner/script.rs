//! The script file of an invocation (spec §4.6): its name, its directory, how it is written
//! and when it is removed; it must never write or remove outside the script directory nor
//! start anything.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::model::{RepeatType, RunTaskInfo};

/// What `/bin/sh` is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptCmd {
    /// `/bin/sh <path>`.
    File(PathBuf),
    /// `/bin/sh -c <content>`: the fallback when no file could be written.
    Inline(Vec<u8>),
}

/// A script file that must not be written.
#[derive(Debug)]
pub enum ScriptError {
    /// A one-shot invocation whose file is already there (`ScriptFileExisted`, -9).
    Existed(PathBuf),
}

/// Replaces every byte outside `[A-Za-z0-9._-]` with `_`. With no `/` left and the `.sh`
/// suffix added by `file_name`, the name is one path component other than `.` and `..`, so a
/// task id like `../../etc/x` can never leave the script directory.
fn sanitise(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<commandName>-` (when set) + taskId + `.iv<N>` (when N > 0) + `.sh`, sanitised.
pub fn file_name(command_name: &str, task_id: &str, invoke_version: i64) -> String {
    let mut name = String::new();
    if !command_name.is_empty() {
        name.push_str(&sanitise(command_name));
        name.push('-');
    }
    name.push_str(&sanitise(task_id));
    if invoke_version > 0 {
        name.push_str(&format!(".iv{invoke_version}"));
    }
    name.push_str(".sh");
    name
}

/// What `prepare` decided: how to run the script, and the file to remove when the invocation
/// ends (non-periodic tasks only).
#[derive(Debug)]
pub struct Prepared {
    pub cmd: ScriptCmd,
    /// Dropping it removes the file; `None` for inline scripts and periodic tasks.
    pub cleanup: Option<Cleanup>,
}

/// Removes the script file of a non-periodic invocation when dropped, so it is gone on every
/// path (finished, timeout, stopped, error, even a panic), as the newest reference's
/// `Cleanup(remove)` does. A file of the next version or from an older agent never collides
/// with it then. Only the file this invocation wrote is removed: if the path names another
/// file by then (another device or inode), it is left alone.
#[derive(Debug)]
pub struct Cleanup {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("cannot remove script {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// Owner of a script run as another user: the file is handed over so that user can read it.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Writes the script and says how to run it. Write failures (no space, permissions, ...) are
/// not errors: the caller runs the content inline, as the reference does; `warn` gets why.
pub fn prepare(
    dir: &Path,
    task: &RunTaskInfo,
    content: &[u8],
    owner: Option<Owner>,
    warn: &dyn Fn(&str),
) -> Result<Prepared, ScriptError> {
    let inline = || Prepared {
        cmd: ScriptCmd::Inline(content.to_vec()),
        cleanup: None,
    };
    // The directory is traversable but not listable by others (0711), so that a task run as
    // another user can open its own file; every file in it is 0700 and owned by its runner.
    if let Err(e) = DirBuilder::new().recursive(true).mode(0o711).create(dir) {
        warn(&format!(
            "cannot create script directory {}: {e}; running inline",
            dir.display()
        ));
        return Ok(inline());
    }
    if owner.is_some() {
        // A directory created elsewhere, or one of its parents (a state directory made 0700
        // by a service manager), may be closed to others; the user could not open the file
        // then, so run inline rather than fail with "Permission denied".
        if let Some(closed) = closed_to_others(dir) {
            warn(&format!(
                "{} is not traversable by other users; running inline",
                closed.display()
            ));
            return Ok(inline());
        }
    }
    let path = dir.join(file_name(
        &task.command_name,
        &task.task_id,
        task.invoke_version,
    ));
    let written = match task.repeat {
        RepeatType::Once | RepeatType::NextRebootOnly => match write_new(&path, content, owner) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ScriptError::Existed(path))
            }
            other => other,
        },
        // The reference reuses an existing file unchanged for repeating tasks, so an edited
        // task would keep running its first content. We overwrite it atomically instead (temp
        // file + rename), so every invocation runs exactly the content it was given, and a
        // shell still reading the previous file keeps its old inode.
        _ => write_replace(dir, &path, content, owner),
    };
    match written {
        Ok((dev, ino)) => {
            let cleanup = (!task.repeat.is_periodic()).then(|| Cleanup {
                path: path.clone(),
                dev,
                ino,
            });
            Ok(Prepared {
                cmd: ScriptCmd::File(path),
                cleanup,
            })
        }
        Err(e) => {
            warn(&format!(
                "cannot save script to {}: {e}; running inline",
                path.display()
            ));
            Ok(inline())
        }
    }
}

/// The first of `dir` and its parents that others cannot traverse (no `o+x`, or no metadata).
fn closed_to_others(dir: &Path) -> Option<&Path> {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors().find(|d| {
        !d.as_os_str().is_empty()
            && !fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

/// Creates `path` (O_CREAT|O_EXCL|O_NOFOLLOW, 0700) and returns its device and inode; a
/// partial file is removed.
fn write_new(path: &Path, content: &[u8], owner: Option<Owner>) -> io::Result<(u64, u64)> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let result = (|| {
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))?;
        }
        file.write_all(content)?;
        file.sync_all()?;
        let meta = file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Writes a temp file beside `path`, then renames it over `path`; returns the device and inode.
fn write_replace(
    dir: &Path,
    path: &Path,
    content: &[u8],
    owner: Option<Owner>,
) -> io::Result<(u64, u64)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let id = write_new(&tmp, content, owner)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference() {
        assert_eq!(file_name("mycmd", "t-abc", 2), "mycmd-t-abc.iv2.sh");
        assert_eq!(file_name("", "t-abc", 0), "t-abc.sh");
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        assert_eq!(file_name("", "../../etc/passwd", 0), ".._.._etc_passwd.sh");
        assert_eq!(file_name("a/b", "..", 0), "a_b-...sh");
        assert_eq!(file_name("命令 x", "t\0id", 1), "___x-t_id.iv1.sh");
        for name in [
            file_name("", "..", 0),
            file_name("/", "/", 0),
            file_name("", "", 0),
        ] {
            let p = Path::new("/base").join(&name);
            assert_eq!(p.parent(), Some(Path::new("/base")), "{name}");
            assert!(name != "." && name != ".." && !name.contains('/'));
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("assistd-script-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn once_refuses_an_existing_file_and_periodic_overwrites() {
        let dir = temp_dir("exist");
        let mut task = RunTaskInfo {
            task_id: "t-1".into(),
            ..RunTaskInfo::default()
        };
        let no_warn = |w: &str| panic!("unexpected warning {w}");
        let first = prepare(&dir, &task, b"echo 1", None, &no_warn).expect("first");
        let path = dir.join("t-1.sh");
        assert_eq!(first.cmd, ScriptCmd::File(path.clone()));
        assert!(
            matches!(prepare(&dir, &task, b"echo 2", None, &no_warn), Err(ScriptError::Existed(p)) if p == path)
        );
        task.repeat = RepeatType::Rate;
        let rate = prepare(&dir, &task, b"echo 3", None, &no_warn).expect("rate");
        assert_eq!(rate.cmd, ScriptCmd::File(path.clone()));
        assert!(rate.cleanup.is_none(), "periodic files are kept");
        assert_eq!(fs::read(&path).expect("read"), b"echo 3");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o700
        );
        let leftovers = fs::read_dir(&dir).expect("list").count();
        assert_eq!(leftovers, 1, "no temp files left behind");
        drop(first);
        assert!(
            path.exists(),
            "the once file was replaced by the rate invocation's: not ours to remove"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_periodic_files_are_removed_when_the_invocation_ends() {
        let dir = temp_dir("cleanup");
        let no_warn = |w: &str| panic!("unexpected warning {w}");
        for repeat in [
            RepeatType::Once,
            RepeatType::NextRebootOnly,
            RepeatType::EveryReboot,
        ] {
            let task = RunTaskInfo {
                task_id: "t-1".into(),
                invoke_version: 1,
                repeat,
                ..RunTaskInfo::default()
            };
            let path = dir.join("t-1.iv1.sh");
            let prepared = prepare(&dir, &task, b"echo 1", None, &no_warn).expect("prepare");
            assert_eq!(prepared.cmd, ScriptCmd::File(path.clone()));
            assert!(path.is_file());
            drop(prepared);
            assert!(!path.exists(), "{repeat}: the file is removed");
            // The next invocation of the same version writes it again instead of -9.
            let again = prepare(&dir, &task, b"echo 2", None, &no_warn).expect("again");
            assert!(again.cleanup.is_some(), "{repeat}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_replaced_meanwhile_is_not_removed() {
        let dir = temp_dir("foreign");
        let task = RunTaskInfo {
            task_id: "t-1".into(),
            ..RunTaskInfo::default()
        };
        let prepared = prepare(&dir, &task, b"echo 1", None, &|_| {}).expect("prepare");
        let path = dir.join("t-1.sh");
        let other = dir.join("other");
        fs::write(&other, b"not ours").expect("write");
        fs::rename(&other, &path).expect("replace");
        drop(prepared);
        assert_eq!(fs::read(&path).expect("kept"), b"not ours");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_directory_falls_back_to_inline() {
        // A regular file where the directory should be makes every write fail, even as root.
        let dir = temp_dir("blocked");
        fs::write(&dir, b"").expect("block");
        let task = RunTaskInfo {
            task_id: "t-1".into(),
            ..RunTaskInfo::default()
        };
        let warned = std::cell::Cell::new(false);
        let got = prepare(&dir.join("sub"), &task, b"echo x", None, &|_| {
            warned.set(true)
        })
        .expect("inline");
        assert_eq!(got.cmd, ScriptCmd::Inline(b"echo x".to_vec()));
        assert!(got.cleanup.is_none());
        assert!(warned.get());
        let _ = fs::remove_file(&dir);
    }
}
