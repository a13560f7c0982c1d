//! Starting `/bin/sh` in a new session (its own process group, no controlling terminal) with
//! the task's user, directory, environment and one pipe for stdout and stderr, watching its
//! exit, and killing its group; it must never signal a process group whose leader has been
//! reaped, and never leave a zombie behind.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;

use crossbeam_channel::Receiver;

use super::precheck::UserInfo;
use super::script::ScriptCmd;

/// The shell every script runs under.
pub const SHELL: &str = "/bin/sh";

/// A close-on-exec pipe: the read end for a reader, the write end for a child's stdout (or for
/// a stop pipe, whose write end is only ever dropped: the hang-up wakes the reader's poll).
pub fn output_pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds` on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The name of the user the agent runs as: `root` for uid 0, else the agent's `USER`, else
/// the uid as a number.
fn agent_user() -> String {
    let uid = crate::fsutil::euid();
    if uid == 0 {
        return "root".to_string();
    }
    std::env::var("USER").unwrap_or_else(|_| uid.to_string())
}

/// A close-on-exec memfd holding `content`, sealed against any change.
fn sealed_memfd(content: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid C string; on success the descriptor is new and ours.
    let fd = unsafe {
        libc::memfd_create(
            c"assistd-script".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(fd);
    io::Write::write_all(&mut file, content)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: plain fcntl on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Everything the child is started with.
pub struct Launch<'a> {
    pub cmd: &'a ScriptCmd,
    pub user: Option<&'a UserInfo>,
    pub cwd: Option<&'a Path>,
    pub home: Option<&'a Path>,
    /// Start from an empty environment even when the task runs as the agent's own user
    /// (`clean_task_env`); a task run as another user always does.
    pub clean_env: bool,
    /// Set last, over whatever the environment holds: the agent's `ASSISTD_*` variables and
    /// the task file's `env`.
    pub env: &'a [(String, std::ffi::OsString)],
}

/// `PATH` of a task that runs with a clean environment (sudo's `secure_path` shape).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The clean environment of a task (like `su -` or sudo's `env_reset`): a fixed safe `PATH`,
/// `HOME`, `USER`, `LOGNAME` and `SHELL` of the user it runs as, and `LANG` (and `LC_ALL`, `TZ`)
/// from the agent, so output keeps its encoding and local times their zone. Nothing else of
/// the agent's environment (proxy credentials, the service's secrets, root's `PATH`) reaches it.
pub fn clean_env(
    user: Option<&UserInfo>,
    home: Option<&Path>,
    agent_env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<(String, std::ffi::OsString)> {
    let mut env = vec![("PATH".to_string(), SAFE_PATH.into())];
    let name = user
        .map(|u| u.name.clone())
        .unwrap_or_else(|| "root".to_string());
    if let Some(home) = home
        .map(Path::as_os_str)
        .or(user.map(|u| u.home.as_os_str()))
    {
        env.push(("HOME".to_string(), home.to_os_string()));
    }
    env.push(("USER".to_string(), name.clone().into()));
    env.push(("LOGNAME".to_string(), name.into()));
    env.push(("SHELL".to_string(), SHELL.into()));
    for key in ["LANG", "LC_ALL", "TZ"] {
        if let Some(v) = agent_env(key) {
            env.push((key.to_string(), v));
        }
    }
    env
}

/// How the child ended, as `waitid`/`waitpid` saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl ChildExit {
    /// The reported exit code: -1 when a signal killed the process (Go's `ExitCode()`).
    pub fn code(self) -> i32 {
        match self {
            ChildExit::Code(c) => c,
            ChildExit::Signal(_) => -1,
        }
    }

    fn from_status(s: ExitStatus) -> ChildExit {
        match (s.code(), s.signal()) {
            (Some(c), _) => ChildExit::Code(c),
            (None, Some(sig)) => ChildExit::Signal(sig),
            (None, None) => ChildExit::Code(-1),
        }
    }
}

/// A started child that leads its own process group. Dropping it without `reap` (a panic, an
/// early return) kills the group and reaps the leader.
pub struct Running {
    child: Child,
    pid: libc::pid_t,
    /// One message (or a disconnect) from the waiter when the leader has exited; the leader
    /// stays a zombie until `reap`, so the pgid cannot be reused meanwhile.
    exited: Receiver<io::Result<()>>,
    exit_seen: bool,
    reaped: bool,
}

/// Starts the child; the parent's copies of `out` are closed when this returns, so the reader
/// sees EOF once the child and its descendants close theirs.
pub fn spawn(launch: &Launch<'_>, out: OwnedFd) -> io::Result<Running> {
    let mut cmd = Command::new(SHELL);
    // Held until the spawn returns: the child has its own copy by then.
    let mut _script_fd = None;
    match launch.cmd {
        ScriptCmd::File(path) => {
            cmd.arg(path);
        }
        ScriptCmd::Inline(content) => {
            // Never `sh -c <script>`: argv is readable by every user (`ps`), and scripts hold
            // secrets. The text goes into a sealed memfd that the shell reads as its script
            // file through /proc/self/fd; only the memfd's number is in argv.
            let fd = sealed_memfd(content)?;
            let raw = fd.as_raw_fd();
            cmd.arg(format!("/proc/self/fd/{raw}"));
            // SAFETY: fcntl is async-signal-safe; it clears close-on-exec on a descriptor the
            // child inherited, so the shell can open it after exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            _script_fd = Some(fd);
        }
    }
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let switch_user = launch.user.is_some_and(needs_switch);
    if switch_user || launch.clean_env {
        cmd.env_clear();
        cmd.envs(clean_env(launch.user, launch.home, |k| std::env::var_os(k)));
    } else {
        // The agent's own environment, with the variables every task can rely on.
        if let Some(home) = launch.home {
            cmd.env("HOME", home);
        }
        let name = launch
            .user
            .map(|u| u.name.clone())
            .unwrap_or_else(agent_user);
        cmd.env("USER", &name)
            .env("LOGNAME", &name)
            .env("SHELL", SHELL);
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", SAFE_PATH);
        }
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent. A new session
    // makes the child the leader of a new process group (pgid = pid, so the group kill works
    // as with `process_group(0)`) with no controlling terminal: a task cannot open the
    // agent's `/dev/tty` and push input into it with TIOCSTI.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            unblock_all_signals()
        });
    }
    match launch.user {
        Some(user) if needs_switch(user) => {
            // std applies uid/gid before the pre_exec hooks, and setgroups needs root, so the
            // whole switch happens in the hook, in the kernel's order: groups, gid, uid, then
            // chdir as the new user (as Go's forkAndExecInChild does).
            let groups = user.groups.clone();
            let (uid, gid) = (user.uid, user.gid);
            let cwd = match launch.cwd {
                Some(dir) => Some(CString::new(dir.as_os_str().as_bytes())?),
                None => None,
            };
            // SAFETY: the hook runs in the forked child and only makes async-signal-safe
            // calls (setgroups, setgid, setuid, chdir) on data built before the fork; it does
            // not allocate, lock or log.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(dir) = &cwd {
                        if libc::chdir(dir.as_ptr()) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        _ => {
            if let Some(dir) = launch.cwd {
                cmd.current_dir(dir);
            }
        }
    }
    start(cmd)
}

/// A program run for its answer rather than a task (the updater's `--version` trial of a new
/// binary): its own process group, stdin closed, stdout and stderr into `out`, the agent's
/// environment and directory.
pub fn spawn_program(program: &Path, args: &[&OsStr], out: OwnedFd) -> io::Result<Running> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    // No `pre_exec` hook here: without one std uses posix_spawn, which resets the signal mask
    // itself and reports an exec failure as an error. The fork path's execvp would instead
    // hand a file that is not an executable to /bin/sh (ENOEXEC), and the trial would see a
    // shell's syntax error rather than "cannot be started".
    start(cmd)
}

/// In the forked child: an empty signal mask. The agent blocks TERM, INT, HUP and CHLD in
/// every thread, and a mask survives fork and exec. std's fork path resets it today (the test
/// below passes without this hook too), but nothing promises that, and the cost of a shell
/// that inherits a blocked SIGCHLD is a `wait` that sleeps in `sigsuspend` forever beside a
/// zombie (dash waits that way). So the runner does not depend on it.
///
/// # Safety
/// Only async-signal-safe calls (`sigemptyset`, `sigprocmask`); call it in a `pre_exec` hook.
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: both calls take a valid, initialised set on the child's own stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts `cmd` and the waiter thread that tells when its leader exited.
fn start(mut cmd: Command) -> io::Result<Running> {
    let child = cmd.spawn()?;
    // `cmd` holds the parent's write ends; they close here.
    drop(cmd);
    // `Child::id` is the kernel's pid_t widened to u32, so the cast is lossless.
    let pid = child.id() as libc::pid_t;
    let (tx, exited) = crossbeam_channel::bounded(1);
    let waiter = thread::Builder::new()
        .name(format!("wait-{pid}"))
        .spawn(move || {
            let _ = tx.send(wait_exit(pid));
        });
    let running = Running {
        child,
        pid,
        exited,
        exit_seen: false,
        reaped: false,
    };
    if let Err(e) = waiter {
        // The guard kills and reaps; no waiter means `exited` is disconnected already.
        running.kill_group();
        drop(running);
        return Err(e);
    }
    Ok(running)
}

/// Only switch credentials when the user differs from the agent's; a non-root agent may still
/// run tasks under its own name.
fn needs_switch(user: &UserInfo) -> bool {
    // SAFETY: geteuid and getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    user.uid != euid || user.gid != egid
}

/// Blocks until the leader exits, leaving it a zombie (WNOWAIT).
fn wait_exit(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain old data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes; `pid` is our unreaped child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Running {
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Fires when the leader has exited (it is not reaped yet). Call `saw_exit` after a
    /// `select!` took the message.
    pub fn exited(&self) -> &Receiver<io::Result<()>> {
        &self.exited
    }

    pub fn saw_exit(&mut self) {
        self.exit_seen = true;
    }

    /// SIGKILL to the whole group. Safe: the leader is unreaped while `self` exists, so the
    /// pgid still names our group.
    pub fn kill_group(&self) {
        self.signal_group(libc::SIGKILL);
    }

    /// `sig` to the whole group (see `kill_group`).
    pub fn signal_group(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own process group.
        if unsafe { libc::kill(-self.pid, sig) } != 0 {
            let e = io::Error::last_os_error();
            log::debug!("signal {sig} to process group {} failed: {e}", self.pid);
        }
    }

    /// Waits for the exit (bounded by the child: call `kill_group` first unless it exited)
    /// and reaps the leader.
    pub fn reap(mut self) -> io::Result<ChildExit> {
        self.reap_inner()
    }

    fn reap_inner(&mut self) -> io::Result<ChildExit> {
        if !self.exit_seen {
            // The waiter answers once the leader is dead; a waiter error disconnects too.
            let _ = self.exited.recv();
            self.exit_seen = true;
        }
        let status = self.child.wait();
        self.reaped = true;
        status.map(ChildExit::from_status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            if let Err(e) = self.reap_inner() {
                log::warn!("cannot reap process {}: {e}", self.pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;

    fn run_inline(script: &str) -> (ChildExit, Vec<u8>) {
        let (mut read, write) = output_pipe().expect("pipe");
        let cmd = ScriptCmd::Inline(script.as_bytes().to_vec());
        let launch = Launch {
            cmd: &cmd,
            user: None,
            cwd: Some(Path::new("/")),
            home: None,
            clean_env: false,
            env: &[],
        };
        let running = spawn(&launch, write).expect("spawn");
        let mut out = Vec::new();
        read.read_to_end(&mut out).expect("read");
        (running.reap().expect("reap"), out)
    }

    #[test]
    fn exit_code_and_merged_output() {
        let (exit, out) = run_inline("echo out; echo err >&2; pwd; exit 3");
        assert_eq!(exit, ChildExit::Code(3));
        assert_eq!(out, b"out\nerr\n/\n".to_vec());
    }

    #[test]
    fn killed_by_signal_is_minus_one() {
        let (exit, _) = run_inline("kill -9 $$");
        assert_eq!(exit, ChildExit::Signal(9));
        assert_eq!(exit.code(), -1);
    }

    #[test]
    fn dropping_a_running_child_kills_and_reaps_it() {
        let (_read, write) = output_pipe().expect("pipe");
        let cmd = ScriptCmd::Inline(b"sleep 300".to_vec());
        let launch = Launch {
            cmd: &cmd,
            user: None,
            cwd: None,
            home: None,
            clean_env: false,
            env: &[],
        };
        let running = spawn(&launch, write).expect("spawn");
        let pid = running.pid();
        drop(running);
        // Reaped: the pid is no longer our child.
        // SAFETY: plain syscall.
        let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(rc, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ECHILD)
        );
    }

    #[test]
    fn missing_program_is_an_errno() {
        let (_read, write) = output_pipe().expect("pipe");
        let cmd = ScriptCmd::Inline(b"true".to_vec());
        let launch = Launch {
            cmd: &cmd,
            user: None,
            cwd: Some(Path::new("/no/such/dir/assistd")),
            home: None,
            clean_env: false,
            env: &[],
        };
        let err = spawn(&launch, write).err().expect("must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn the_child_leads_a_new_session_with_no_controlling_terminal() {
        // `ps -o sid= -p $$` would need procps; /proc says the same: field 6 (session) equals
        // the pid, field 5 (pgrp) too, and field 7 (tty_nr) is 0.
        let (exit, out) =
            run_inline("read -r stat < /proc/$$/stat; set -- ${stat##*) }; echo \"$$ $3 $4 $5\"");
        assert_eq!(exit, ChildExit::Code(0));
        let text = String::from_utf8_lossy(&out);
        let f: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{text}");
        assert_eq!(f[1], f[0], "pgrp is the pid: {text}");
        assert_eq!(f[2], f[0], "a session of its own: {text}");
        assert_eq!(f[3], "0", "no controlling terminal: {text}");
    }

    #[test]
    fn a_clean_environment_holds_only_the_safe_variables() {
        let user = UserInfo {
            name: "alice".to_string(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: PathBuf::from("/home/alice"),
        };
        let env = clean_env(Some(&user), None, |k| match k {
            "LANG" => Some("C.UTF-8".into()),
            _ => None,
        });
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec!["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"]
        );
        assert_eq!(env[0].1, SAFE_PATH);
        assert_eq!(env[1].1, "/home/alice");
        assert_eq!(env[2].1, "alice");
    }

    #[test]
    fn clean_env_launches_with_nothing_of_the_agent() {
        let (mut read, write) = output_pipe().expect("pipe");
        let cmd = ScriptCmd::Inline(b"env".to_vec());
        let launch = Launch {
            cmd: &cmd,
            user: None,
            cwd: Some(Path::new("/")),
            home: Some(Path::new("/root")),
            clean_env: true,
            env: &[],
        };
        let running = spawn(&launch, write).expect("spawn");
        let mut out = Vec::new();
        read.read_to_end(&mut out).expect("read");
        assert_eq!(running.reap().expect("reap"), ChildExit::Code(0));
        let text = String::from_utf8_lossy(&out);
        for line in text.lines() {
            let key = line.split('=').next().unwrap_or("");
            assert!(
                ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "PWD"]
                    .contains(&key),
                "{line:?} leaked into a clean environment"
            );
        }
        assert!(text.contains(&format!("PATH={SAFE_PATH}\n")), "{text}");
    }

    #[test]
    fn an_inline_script_never_shows_in_argv() {
        let (exit, out) = run_inline(
            "DB_PASSWORD=hunter2; tr '\\0' ' ' < /proc/$$/cmdline; echo; echo \"$DB_PASSWORD\"",
        );
        assert_eq!(exit, ChildExit::Code(0));
        let text = String::from_utf8_lossy(&out);
        let mut lines = text.lines();
        let argv = lines.next().unwrap_or_default();
        assert!(argv.starts_with("/bin/sh /proc/self/fd/"), "{text}");
        assert!(!argv.contains("hunter2"), "the script is in argv: {argv}");
        assert_eq!(
            lines.next(),
            Some("hunter2"),
            "the script did not run whole"
        );
    }

    #[test]
    fn a_task_starts_with_no_signal_blocked() {
        // As in the agent: TERM, INT, HUP and CHLD blocked in the spawning thread.
        // SAFETY: a valid set; only this test thread's mask changes, and it is restored.
        let old = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        // Builtins only: dash blocks every signal for a moment around each fork, so a `grep`
        // it forked could read the shell's status inside that window (seen once under load).
        let (exit, out) = run_inline(
            r#"while read -r k v; do if [ "$k" = SigBlk: ]; then echo "$k $v"; fi; done < /proc/$$/status"#,
        );
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        assert_eq!(exit, ChildExit::Code(0));
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.trim(), "SigBlk: 0000000000000000", "{text}");
    }
}
