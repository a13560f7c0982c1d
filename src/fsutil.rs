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

/// Why `open_dir_no_follow` did not open a directory.
#[derive(Debug)]
pub enum WalkError {
    /// The path is not absolute.
    NotAbsolute(PathBuf),
    /// A symbolic link on the way is owned by someone other than root or the agent: following
    /// it would let its owner choose where the agent writes.
    Symlink { path: PathBuf, uid: u32 },
    /// A directory on the way belongs to a user the caller did not name.
    Owner { path: PathBuf, uid: u32 },
    /// A component is there and is not a directory.
    NotADirectory(PathBuf),
    /// A component is missing (and `create` was not asked).
    Missing(PathBuf),
    /// More than 40 symbolic links (the kernel's own limit).
    TooManyLinks(PathBuf),
    /// A system call failed on `path`.
    Io { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::NotAbsolute(p) => write!(f, "{} is not an absolute path", p.display()),
            WalkError::Symlink { path, uid } => write!(
                f,
                "{} is a symbolic link owned by uid {uid}, not by root or this agent",
                path.display()
            ),
            WalkError::Owner { path, uid } => write!(
                f,
                "{} is owned by uid {uid}, neither root, this agent nor the file's owner",
                path.display()
            ),
            WalkError::NotADirectory(p) => write!(f, "{} is not a directory", p.display()),
            WalkError::Missing(p) => write!(f, "{} does not exist", p.display()),
            WalkError::TooManyLinks(p) => {
                write!(f, "too many symbolic links resolving {}", p.display())
            }
            WalkError::Io { path, .. } => write!(f, "cannot open {}", path.display()),
        }
    }
}

impl std::error::Error for WalkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalkError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Opens the directory `path` one component at a time from `/`, each with `O_NOFOLLOW`
/// relative to the one before, so nothing on the way can be swapped between the check and the
/// use. A symbolic link is followed only when root or the agent owns it, and its target is
/// walked by the same rules. Every directory reached must be owned by root, the agent, or one
/// of `owners` (the user a file is written for may own the directories it goes to). Missing
/// directories are created with `create`'s mode when it is given. The descriptor returned is
/// the one to create files in (`openat`, `renameat`).
pub fn open_dir_no_follow(
    path: &Path,
    create: Option<u32>,
    owners: &[u32],
) -> Result<std::os::fd::OwnedFd, WalkError> {
    use std::collections::VecDeque;
    use std::ffi::{CString, OsString};
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;

    const MAX_LINKS: u32 = 40;
    if !path.is_absolute() {
        return Err(WalkError::NotAbsolute(path.to_path_buf()));
    }
    let me = euid();
    let io_err = |p: &Path, e: io::Error| WalkError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let open_at = |dir: libc::c_int, name: &CString, shown: &Path| -> Result<OwnedFd, WalkError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `dir` is an open descriptor (or AT_FDCWD is never passed: every caller
        // passes one it owns) and `name` is NUL-terminated.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io_err(shown, io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let check_owner = |fd: &OwnedFd, shown: &Path| -> Result<(), WalkError> {
        // SAFETY: stat is plain old data; fstat fills it for an open descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err(shown, io::Error::last_os_error()));
        }
        if st.st_uid != 0 && st.st_uid != me && !owners.contains(&st.st_uid) {
            return Err(WalkError::Owner {
                path: shown.to_path_buf(),
                uid: st.st_uid,
            });
        }
        Ok(())
    };
    let components = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let root = CString::new("/").expect("no NUL");
    let open_root = || -> Result<OwnedFd, WalkError> {
        // SAFETY: a NUL-terminated absolute path; the descriptor is ours.
        let fd = unsafe {
            libc::open(
                root.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io_err(Path::new("/"), io::Error::last_os_error()));
        }
        // SAFETY: as above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        check_owner(&fd, Path::new("/"))?;
        Ok(fd)
    };

    let mut cur = open_root()?;
    let mut shown = PathBuf::from("/");
    let mut pending = components(path);
    let mut links = 0u32;
    while let Some(name) = pending.pop_front() {
        let cname = CString::new(name.as_bytes()).map_err(|_| {
            io_err(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
            )
        })?;
        let next_shown = if name == ".." {
            shown
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
        } else {
            shown.join(&name)
        };
        // SAFETY: stat is plain old data; fstatat reads a NUL-terminated name relative to
        // an open directory descriptor and does not follow a final symlink.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                cur.as_raw_fd(),
                cname.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match (e.raw_os_error(), create) {
                (Some(libc::ENOENT), Some(mode)) if name != ".." => {
                    // SAFETY: as for fstatat; the new directory's mode is explicit.
                    let made = unsafe { libc::mkdirat(cur.as_raw_fd(), cname.as_ptr(), mode) };
                    if made != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(io_err(&next_shown, e));
                        }
                    }
                    // Looked at again: what is there now is judged like anything else.
                    pending.push_front(name);
                    continue;
                }
                (Some(libc::ENOENT), _) => return Err(WalkError::Missing(next_shown)),
                _ => return Err(io_err(&next_shown, e)),
            }
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                if st.st_uid != 0 && st.st_uid != me {
                    return Err(WalkError::Symlink {
                        path: next_shown,
                        uid: st.st_uid,
                    });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(WalkError::TooManyLinks(path.to_path_buf()));
                }
                let target = read_link_at(&cur, &cname).map_err(|e| io_err(&next_shown, e))?;
                let mut rest = components(&target);
                rest.extend(pending.drain(..));
                pending = rest;
                if target.is_absolute() {
                    cur = open_root()?;
                    shown = PathBuf::from("/");
                }
            }
            libc::S_IFDIR => {
                let next = open_at(cur.as_raw_fd(), &cname, &next_shown)?;
                check_owner(&next, &next_shown)?;
                cur = next;
                shown = next_shown;
            }
            _ => return Err(WalkError::NotADirectory(next_shown)),
        }
    }
    Ok(cur)
}

/// A file name to use with the `*_in` helpers: one component, no NUL.
fn c_name(name: &str) -> io::Result<std::ffi::CString> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single file name",
        ));
    }
    std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// Whether `name` exists in `dir` (a symlink counts; it is not followed).
pub fn exists_in(dir: &std::os::fd::OwnedFd, name: &str) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let cname = c_name(name)?;
    // SAFETY: stat is plain old data; a NUL-terminated name relative to an open directory.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotFound {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `create_temp` inside an open directory: a fresh `O_EXCL | O_NOFOLLOW | O_CLOEXEC` file
/// next to `name`; returns the temp file's name and the file.
pub fn create_temp_in(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    mode: u32,
) -> io::Result<(String, File)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for attempt in 0..100u32 {
        let tmp = format!(".{name}.tmp.{}.{nanos}.{attempt}", std::process::id());
        let ctmp = c_name(&tmp)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a NUL-terminated name relative to an open directory descriptor.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), ctmp.as_ptr(), flags, mode) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by openat and is owned by nobody else.
            return Ok((tmp, unsafe { File::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temp file name",
    ))
}

/// `renameat(2)` within one open directory: replaces `to` (a symlink there is replaced, not
/// followed).
pub fn rename_in(dir: &std::os::fd::OwnedFd, from: &str, to: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (cfrom, cto) = (c_name(from)?, c_name(to)?);
    // SAFETY: NUL-terminated names relative to an open directory descriptor.
    let rc = unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            cfrom.as_ptr(),
            dir.as_raw_fd(),
            cto.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `unlinkat(2)` of a file in an open directory.
pub fn remove_in(dir: &std::os::fd::OwnedFd, name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let cname = c_name(name)?;
    // SAFETY: a NUL-terminated name relative to an open directory descriptor.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `readlinkat(2)` of `name` in the directory `dir`.
fn read_link_at(dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStringExt;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is valid for `buf.len()` bytes; readlinkat does not NUL-terminate and
    // returns the length it wrote.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
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

#[cfg(test)]
mod walk_tests {
    use super::tests::TempDir;
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, MetadataExt};

    /// What the walk opened: the device and inode of the directory behind the descriptor.
    fn ino(fd: &std::os::fd::OwnedFd) -> (u64, u64) {
        use std::os::fd::AsRawFd;
        let meta = fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("fd meta");
        (meta.dev(), meta.ino())
    }

    fn ino_of(p: &Path) -> (u64, u64) {
        let meta = fs::metadata(p).expect("meta");
        (meta.dev(), meta.ino())
    }

    fn lchown(p: &Path, uid: u32) {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(
            unsafe { libc::lchown(c.as_ptr(), uid, uid) },
            0,
            "lchown {p:?}"
        );
    }

    #[test]
    fn walks_real_directories_and_our_own_links() {
        let dir = TempDir::new("walk-own");
        let real = dir.path().join("real/sub");
        fs::create_dir_all(&real).expect("mkdir");
        symlink("real", dir.path().join("rel")).expect("symlink");
        symlink(dir.path().join("real"), dir.path().join("abs")).expect("symlink");
        for p in [
            "real/sub",
            "rel/sub",
            "abs/sub",
            "real/sub/../sub",
            "abs/../real/sub",
        ] {
            let fd = open_dir_no_follow(&dir.path().join(p), None, &[]).expect(p);
            assert_eq!(ino(&fd), ino_of(&real), "{p}");
        }
    }

    #[test]
    fn creates_what_is_missing_with_the_mode_given() {
        let dir = TempDir::new("walk-create");
        let want = dir.path().join("a/b/c");
        assert!(matches!(
            open_dir_no_follow(&want, None, &[]),
            Err(WalkError::Missing(p)) if p == dir.path().join("a")
        ));
        let fd = open_dir_no_follow(&want, Some(0o700), &[]).expect("create");
        assert_eq!(ino(&fd), ino_of(&want));
        assert_eq!(fs::metadata(&want).expect("meta").mode() & 0o777, 0o700);
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        let dir = TempDir::new("walk-file");
        fs::write(dir.path().join("f"), "x").expect("write");
        for p in ["f", "f/sub"] {
            assert!(matches!(
                open_dir_no_follow(&dir.path().join(p), Some(0o755), &[]),
                Err(WalkError::NotADirectory(_))
            ));
        }
        assert!(matches!(
            open_dir_no_follow(Path::new("relative"), None, &[]),
            Err(WalkError::NotAbsolute(_))
        ));
    }

    #[test]
    fn another_users_link_or_directory_is_refused() {
        if euid() != 0 {
            eprintln!("skipped: needs root to give files to another user");
            return;
        }
        let dir = TempDir::new("walk-other");
        let target = dir.path().join("etc");
        fs::create_dir(&target).expect("mkdir");
        let link = dir.path().join("link");
        symlink(&target, &link).expect("symlink");
        lchown(&link, 1);
        assert!(matches!(
            open_dir_no_follow(&link, None, &[1]),
            Err(WalkError::Symlink { uid: 1, .. })
        ));
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        lchown(&theirs, 1);
        assert!(matches!(
            open_dir_no_follow(&theirs.join("x"), Some(0o755), &[]),
            Err(WalkError::Owner { uid: 1, .. })
        ));
        assert!(
            !theirs.join("x").exists(),
            "nothing created in a refused dir"
        );
        // The user the file is for may own where it goes.
        let fd = open_dir_no_follow(&theirs, None, &[1]).expect("their own dir");
        assert_eq!(ino(&fd), ino_of(&theirs));
    }

    #[test]
    fn a_link_loop_ends() {
        let dir = TempDir::new("walk-loop");
        symlink("b", dir.path().join("a")).expect("symlink");
        symlink("a", dir.path().join("b")).expect("symlink");
        assert!(matches!(
            open_dir_no_follow(&dir.path().join("a"), None, &[]),
            Err(WalkError::TooManyLinks(_))
        ));
    }

    #[test]
    fn files_in_an_open_directory() {
        let dir = TempDir::new("walk-files");
        let fd = open_dir_no_follow(dir.path(), None, &[]).expect("open");
        assert!(!exists_in(&fd, "x").expect("stat"));
        let (tmp, mut f) = create_temp_in(&fd, "x", 0o600).expect("temp");
        f.write_all(b"hi").expect("write");
        rename_in(&fd, &tmp, "x").expect("rename");
        assert_eq!(fs::read(dir.path().join("x")).expect("read"), b"hi");
        symlink("/nonexistent", dir.path().join("dangling")).expect("symlink");
        assert!(
            exists_in(&fd, "dangling").expect("stat"),
            "a link counts, unfollowed"
        );
        remove_in(&fd, "x").expect("unlink");
        assert!(!dir.path().join("x").exists());
        assert!(exists_in(&fd, "a/b").is_err(), "one component only");
    }
}
