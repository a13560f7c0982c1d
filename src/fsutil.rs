//! File-system helpers: atomic writes, the boot id and the layout of the state directory.
//!
//! This module only moves bytes to and from disk; it must never interpret task data or hold
//! state of its own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content:
/// a temp file in the same directory is written, fsynced, renamed over `path`, and the
/// directory is fsynced. The file gets exactly `mode` (the umask does not apply).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let (tmp_path, mut file) = create_temp(dir, &name.to_string_lossy(), mode)?;
    let written = (|| {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp_path, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// Creates a fresh temp file next to the target; the name carries the pid and the clock so
/// two writers (or two agents in one test process) never share it, and `create_new` catches
/// the rest. `O_NOFOLLOW | O_CLOEXEC`: a planted symlink is never written through, and the
/// descriptor never leaks into a task.
pub fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(
            ".{name}.tmp.{}.{nanos}.{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Why a file or directory may not be trusted by a root agent: someone other than root or the
/// agent could change what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// Owned by a uid that is neither root nor the agent's.
    Owner { path: PathBuf, uid: u32 },
    /// Writable by group or others (`mode` is the permission bits).
    Writable { path: PathBuf, mode: u32 },
    /// A symbolic link where a real file or directory is required.
    Symlink { path: PathBuf },
    /// Not there or unreadable; the cause as text.
    Unreadable { path: PathBuf, cause: String },
}

impl std::fmt::Display for Distrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distrust::Owner { path, uid } => {
                write!(
                    f,
                    "{} is owned by uid {uid}, not by root or this agent",
                    path.display()
                )
            }
            Distrust::Writable { path, mode } => write!(
                f,
                "{} is writable by group or others (mode {mode:04o})",
                path.display()
            ),
            Distrust::Symlink { path } => write!(f, "{} is a symbolic link", path.display()),
            Distrust::Unreadable { path, cause } => {
                write!(f, "cannot check {}: {cause}", path.display())
            }
        }
    }
}

impl std::error::Error for Distrust {}

/// `meta` (of `path`, not followed) may be trusted: owned by root or `uid`, not writable by
/// group or others, not a symlink. A directory with the sticky bit may be writable by others
/// (`/tmp`) when `sticky_ok`: nobody can rename or remove what others put in it.
pub fn trusted_meta(
    path: &Path,
    meta: &fs::Metadata,
    uid: u32,
    sticky_ok: bool,
) -> Result<(), Distrust> {
    use std::os::unix::fs::MetadataExt;
    if meta.file_type().is_symlink() {
        return Err(Distrust::Symlink {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(Distrust::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(sticky_ok && sticky_dir) {
        return Err(Distrust::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// `path` (not followed) may be trusted; see `trusted_meta`.
pub fn trusted(path: &Path, uid: u32) -> Result<(), Distrust> {
    let meta = fs::symlink_metadata(path).map_err(|e| Distrust::Unreadable {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    trusted_meta(path, &meta, uid, false)
}

/// Every ancestor of the (absolute) directory `dir` may be trusted: owned by root or `uid`,
/// and not writable by others unless sticky. Otherwise whoever may write there could swap
/// `dir` for one of their own between two of the agent's uses of it.
pub fn trusted_ancestors(dir: &Path, uid: u32) -> Result<(), Distrust> {
    let abs = std::path::absolute(dir).map_err(|e| Distrust::Unreadable {
        path: dir.to_path_buf(),
        cause: e.to_string(),
    })?;
    let mut cur = abs.parent();
    while let Some(p) = cur {
        // Followed: a symlinked ancestor (/var/run -> /run) is judged by what it points to,
        // and the link itself lives in a directory this loop checks too.
        let meta = fs::metadata(p).map_err(|e| Distrust::Unreadable {
            path: p.to_path_buf(),
            cause: e.to_string(),
        })?;
        trusted_meta(p, &meta, uid, true)?;
        cur = p.parent();
    }
    Ok(())
}

/// The agent's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Marks every descriptor above 2 close-on-exec, so nothing the agent inherited from whoever
/// started it (a launcher's stray pipe, a log file) reaches a task. Everything the agent opens
/// itself is close-on-exec already (std's default). Call it before any thread exists.
pub fn cloexec_inherited_fds() {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collected first: the directory's own descriptor is among the entries while it is read.
    let fds: Vec<libc::c_int> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD on a number that is, or was a moment ago, a descriptor of
        // ours; a closed one just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The id of the current boot: `/proc/sys/kernel/random/boot_id` on Linux, an error elsewhere.
pub fn boot_id() -> io::Result<String> {
    boot_id_from(Path::new("/proc/sys/kernel/random/boot_id"))
}

fn boot_id_from(path: &Path) -> io::Result<String> {
    let text = fs::read_to_string(path)?;
    let id = text.trim();
    if id.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty boot id"));
    }
    Ok(id.to_string())
}

/// Layout of the agent's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The local journal (`journal.jsonl` and its rotations).
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// Script files written for invocations: traversable but not listable by others (0711),
    /// so a task run as another user can open its own file (each file is 0700 and owned by
    /// that user); otherwise the script would run inline and show in `ps`.
    pub fn script_dir(&self) -> PathBuf {
        self.root.join("scripts")
    }

    /// Reboot bookkeeping of `EveryReboot` / `NextRebootOnly` local tasks.
    pub fn reboot_file(&self) -> PathBuf {
        self.root.join("reboot-tasks.json")
    }

    /// Final reports the server did not take yet (remote mode), one file each, 0700: they hold
    /// task output.
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    /// One record per invocation whose child runs (or ran when the agent died), 0700; read
    /// at startup to kill what a crashed agent left and report it.
    pub fn running_dir(&self) -> PathBuf {
        self.root.join("running")
    }

    /// Refuses a state dir that someone else could change under the agent: the root and its
    /// subdirectories must be real directories owned by root or `uid` and not writable by
    /// group or others, and every ancestor must be owned by root or `uid` and not writable by
    /// others unless sticky. Otherwise a local user could swap `scripts/` and have root run
    /// their file, or plant a symlink where the journal is written. Call after `create`.
    pub fn check_trust(&self, uid: u32) -> Result<(), Distrust> {
        trusted_ancestors(&self.root, uid)?;
        trusted(&self.root, uid)?;
        for dir in [
            self.journal_dir(),
            self.spool_dir(),
            self.running_dir(),
            self.script_dir(),
            self.root.join("hybrid"),
        ] {
            match fs::symlink_metadata(&dir) {
                Ok(meta) => trusted_meta(&dir, &meta, uid, false)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Distrust::Unreadable {
                        path: dir,
                        cause: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// What a local agent has scheduled and how each task last ran (`crate::status`), 0644.
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// The socket `assistd run` asks a running local agent through (`crate::control`), 0600.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The single-instance lock.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("assistd.lock")
    }

    /// Creates the directories (`mkdir -p`): the root 0755, the journal, spool and running
    /// records 0700 (outputs may hold secrets) and the scripts 0711 (not listable; the files in
    /// it are 0700). An existing subdirectory is set to exactly that mode.
    pub fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.root)?;
        for (dir, mode) in [
            (self.journal_dir(), 0o700),
            (self.spool_dir(), 0o700),
            (self.running_dir(), 0o700),
            (self.script_dir(), 0o711),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

/// Takes an exclusive, non-blocking `flock` on `path` (created if missing) and returns the open
/// file: the lock lives as long as the file. Fails with `WouldBlock` when another process
/// holds it, which is how a second agent on the same state dir is refused.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    // SAFETY: flock on a valid, open file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos();
            let path =
                std::env::temp_dir().join(format!("assistd-{name}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let dir = TempDir::new("atomic");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).expect("first write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        assert_eq!(mode_of(&path), 0o600);
        write_atomic(&path, b"two", 0o644).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(mode_of(&path), 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temp file left behind");
    }

    #[test]
    fn write_atomic_into_missing_dir_fails_cleanly() {
        let dir = TempDir::new("atomic-missing");
        assert!(write_atomic(&dir.path().join("nope/state.json"), b"x", 0o600).is_err());
    }

    #[test]
    fn boot_id_is_trimmed() {
        let dir = TempDir::new("bootid");
        let p = dir.path().join("boot_id");
        fs::write(&p, "abc-123\n").expect("write");
        assert_eq!(boot_id_from(&p).expect("read"), "abc-123");
        fs::write(&p, "\n").expect("write");
        assert!(boot_id_from(&p).is_err());
        assert!(boot_id_from(&dir.path().join("missing")).is_err());
        if cfg!(target_os = "linux") {
            assert!(!boot_id().expect("linux has a boot id").is_empty());
        }
    }

    #[test]
    fn state_dir_layout() {
        let dir = TempDir::new("statedir");
        let state = StateDir::new(dir.path().join("a/b"));
        state.create().expect("create");
        assert_eq!(mode_of(&state.script_dir()), 0o711);
        assert_eq!(mode_of(&state.journal_dir()), 0o700);
        fs::set_permissions(state.script_dir(), fs::Permissions::from_mode(0o700)).expect("chmod");
        state.create().expect("create again");
        assert_eq!(
            mode_of(&state.script_dir()),
            0o711,
            "an old 0700 is widened"
        );
        assert!(state.journal_dir().is_dir());
        assert_eq!(
            state.reboot_file(),
            dir.path().join("a/b/reboot-tasks.json")
        );
        assert_eq!(state.lock_file(), dir.path().join("a/b/assistd.lock"));
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_state_dir_is_trusted_only_when_nobody_else_can_change_it() {
        let dir = TempDir::new("trust");
        let state = StateDir::new(dir.path().join("state"));
        state.create().expect("create");
        let uid = euid();
        assert_eq!(state.check_trust(uid), Ok(()));
        chmod(&state.script_dir(), 0o777);
        assert!(matches!(
            state.check_trust(uid),
            Err(Distrust::Writable { mode: 0o777, .. })
        ));
        chmod(&state.script_dir(), 0o711);
        // A planted symlink in place of a subdirectory.
        fs::remove_dir(state.spool_dir()).expect("rmdir");
        std::os::unix::fs::symlink("/", state.spool_dir()).expect("symlink");
        assert!(matches!(
            state.check_trust(uid),
            Err(Distrust::Symlink { .. })
        ));
        fs::remove_file(state.spool_dir()).expect("unlink");
        // A writable ancestor without the sticky bit lets others swap the whole dir.
        chmod(dir.path(), 0o777);
        assert!(matches!(
            state.check_trust(uid),
            Err(Distrust::Writable { .. })
        ));
        chmod(dir.path(), 0o1777);
        assert_eq!(
            state.check_trust(uid),
            Ok(()),
            "a sticky ancestor is fine (/tmp)"
        );
        chmod(dir.path(), 0o755);
    }
}
