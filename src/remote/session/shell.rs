//! A shell session's process side (spec §4): the command line, the run-as user, a new pty
//! whose slave is the shell's controlling terminal, the output pump with its UTF-8 carry,
//! resize and input. It never touches the websocket: output goes to the session thread as
//! `Pumped` chunks, and it never leaves a process of the session or a zombie behind.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};

use super::channel::{self, Outputs, Plugin, Pumped};
use super::frame::WindowSize;
use super::Code;
use crate::model::SessionTaskInfo;
use crate::runner::output::{wait_data_or_stop, Wake};
use crate::runner::precheck::{lookup_user, UserInfo};
use crate::runner::spawn::{clean_env, output_pipe};

/// The run-as user of a session that names none (spec §4.2 step 3).
pub const DEFAULT_USER: &str = "ecs-assist-user";
/// The program of a session without `cmdContent`.
pub const DEFAULT_SHELL: &str = "bash";
const SUDOERS: &str = "/etc/sudoers.d/ecs-assist-user";

/// A command line that cannot be split (spec §4.2 step 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitError {
    UnterminatedQuote,
    /// A backslash as the last character.
    TrailingEscape,
}

/// Splits `cmdContent` like a POSIX shell, as google/shlex does: blanks separate words,
/// single quotes are literal, double quotes allow `\"`, `\\`, `\$` and `` \` ``, a backslash
/// outside quotes escapes the next character, and `#` at the start of a word comments out
/// the rest of the line.
pub fn split_command(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => {
                // The comment runs to the end of the line; the next line goes on.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => return Err(SplitError::TrailingEscape),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::UnterminatedQuote),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote),
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Holds back the end of a read that stops inside a UTF-8 sequence, so that a character split
/// across two reads goes out in one frame (spec §4.5). Unlike the reference, bytes that can
/// never become valid UTF-8 go out at once instead of waiting for four more bytes, a correctly
/// encoded U+FFFD is a character like any other (the reference forwards only its first byte
/// and loses two), and what is held when the shell ends is sent (the reference drops it).
#[derive(Debug, Default)]
pub struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The bytes to send now for `data` read after what is held.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let mut at = 0;
        while let Err(e) = std::str::from_utf8(&buf[at..]) {
            match e.error_len() {
                Some(bad) => at += e.valid_up_to() + bad,
                None => {
                    self.held = buf.split_off(at + e.valid_up_to());
                    break;
                }
            }
        }
        buf
    }

    /// What is held, at the end.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// A running shell session.
pub struct Shell {
    /// The pty master, for input and resize; the pump reads a duplicate.
    master: File,
    child: Option<Child>,
    pid: libc::pid_t,
    /// Dropping it hangs up the pump's stop pipe.
    stop: Option<OwnedFd>,
    pump: Option<JoinHandle<()>>,
    id: String,
}

impl Shell {
    /// Starts the shell on a new pty (spec §4.2) and its output pump.
    pub fn open(info: &SessionTaskInfo, outputs: Outputs) -> Result<Shell, Code> {
        let id = info.session_id.as_str();
        let fail = |what: &str, code: Code| {
            log::warn!("task={id} invoke_version=0 phase=session cannot start the shell: {what}");
            code
        };
        let argv = if info.cmd_content.is_empty() {
            vec![DEFAULT_SHELL.to_string()]
        } else {
            match split_command(&info.cmd_content) {
                Ok(words) if words.is_empty() => {
                    // The reference panics on a command of no words and reports this.
                    return Err(fail("the command line has no words", Code::UnknownError));
                }
                Ok(words) => words,
                Err(e) => {
                    return Err(fail(
                        &format!("bad command line ({e:?})"),
                        Code::OpenPtyFailed,
                    ))
                }
            }
        };
        let user = resolve_user(&info.username).map_err(|why| fail(&why, Code::OpenPtyFailed))?;
        let (master, slave) =
            open_pty().map_err(|e| fail(&format!("no pty: {e}"), Code::OpenPtyFailed))?;
        let switch = needs_switch(&user);
        if switch {
            // As sshd does: the terminal belongs to the user, so `tty`-reopening programs work.
            // SAFETY: plain fchown/fchmod on our own descriptor.
            unsafe {
                libc::fchown(slave.as_raw_fd(), user.uid, libc::gid_t::MAX);
                libc::fchmod(slave.as_raw_fd(), 0o620);
            }
        }
        let child = spawn_on_pty(&argv, &user, switch, slave).map_err(|e| {
            fail(
                &format!("{} as {}: {e}", argv[0], user.name),
                Code::OpenPtyFailed,
            )
        })?;
        // `Child::id` is the kernel's pid_t widened to u32, so the cast is lossless.
        let pid = child.id() as libc::pid_t;
        let mut shell = Shell {
            master,
            child: Some(child),
            pid,
            stop: None,
            pump: None,
            id: id.to_string(),
        };
        let started = (|| -> io::Result<()> {
            let reader = shell.master.try_clone()?;
            let (stop_r, stop_w) = output_pipe()?;
            shell.stop = Some(stop_w);
            shell.pump = Some(
                thread::Builder::new()
                    .name(format!("pty-{pid}"))
                    .spawn(move || pump(reader, stop_r, outputs))?,
            );
            Ok(())
        })();
        if let Err(e) = started {
            shell.finish();
            return Err(fail(&format!("no output pump: {e}"), Code::OpenPtyFailed));
        }
        log::info!(
            "task={id} invoke_version=0 phase=session shell {} started as {} (pid {pid})",
            argv[0],
            user.name
        );
        Ok(shell)
    }
}

impl Plugin for Shell {
    fn input(&mut self, data: &[u8]) {
        // Blocking: a shell that reads nothing holds up further frames, the reference's
        // back-pressure (spec §3.5).
        if let Err(e) = self.master.write_all(data) {
            log::debug!("task={} phase=session input not written: {e}", self.id);
        }
    }

    fn resize(&mut self, size: WindowSize) {
        // Truncated to the kernel's 16 bits, as the reference does; 0x0 is applied as is.
        let ws = libc::winsize {
            ws_row: size.rows as u16,
            ws_col: size.cols as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            log::debug!(
                "task={} phase=session resize failed: {}",
                self.id,
                io::Error::last_os_error()
            );
        }
    }

    fn before_frame(&mut self) -> Result<(), Code> {
        Ok(())
    }

    fn output_ended(&mut self) -> Option<Code> {
        Some(Code::Ok)
    }

    fn frame_error(&self) -> Code {
        Code::ProcessDataError
    }

    fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The leader is unreaped until `wait` below, so neither its group id nor its
            // session id can name another process yet.
            // SAFETY: plain kill on our own process group.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            kill_session(self.pid);
            if let Err(e) = child.wait() {
                log::warn!("task={} phase=session cannot reap the shell: {e}", self.id);
            }
        }
        drop(self.stop.take());
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.finish();
    }
}

/// SIGKILL to every process whose session is `sid` (the shell's jobs run in process groups
/// of their own; they all share its session). Read from /proc; a process that started a
/// session of its own has left on purpose and is not followed.
fn kill_session(sid: libc::pid_t) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp session …`: comm may hold anything, so count from
        // the last `)`.
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|s| s.parse::<libc::pid_t>().ok());
        if session == Some(sid) && pid != sid {
            // SAFETY: plain kill of a process of the session we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Reads the pty until it hangs up, applying the UTF-8 carry and the send pace.
fn pump(mut master: File, stop: File, out: Outputs) {
    let mut carry = Utf8Carry::default();
    let mut buf = vec![0u8; out.pace.chunk()];
    loop {
        match wait_data_or_stop(master.as_raw_fd(), stop.as_raw_fd()) {
            Ok(Wake::Data) => {}
            Ok(Wake::Stop) => return,
            Err(_) => break,
        }
        match master.read(&mut buf) {
            // EIO: every holder of the slave has closed it (spec §4.5).
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let send = carry.push(&buf[..n]);
                if !send.is_empty() && !out.send(Pumped::Data(send)) {
                    return;
                }
                // The pace is a pause after each chunk; the stop pipe cuts it short.
                let pause = out.pace.interval();
                if !pause.is_zero() && channel::wait_readable(stop.as_raw_fd(), Some(pause)) {
                    return;
                }
            }
        }
    }
    let rest = carry.finish();
    if !rest.is_empty() {
        out.send(Pumped::Data(rest));
    }
    out.send(Pumped::Ended);
}

/// The run-as user (spec §4.2 steps 3-5): the named one, or `ecs-assist-user`, created when
/// missing. uid or gid 0 is refused, as the reference does.
fn resolve_user(name: &str) -> Result<UserInfo, String> {
    let name = if name.is_empty() { DEFAULT_USER } else { name };
    // The reference interpolates the name into `sh -c "id <name>"`; only plain account names
    // are accepted here.
    let plain = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$' | b'@'));
    if !plain {
        return Err(format!("{name:?} is not a user name"));
    }
    let user = match lookup_user(name) {
        Ok(u) => u,
        Err(_) if name == DEFAULT_USER => {
            create_default_user()?;
            lookup_user(name).map_err(|e| format!("user {name}: {e}"))?
        }
        Err(e) => return Err(format!("user {name}: {e}")),
    };
    if user.uid == 0 || user.gid == 0 {
        return Err(format!("user {name} has uid or gid 0"));
    }
    Ok(user)
}

/// `useradd -m ecs-assist-user -s /sbin/nologin` and its sudoers rule (spec §4.2 step 3).
fn create_default_user() -> Result<(), String> {
    let status = Command::new("useradd")
        .args(["-m", DEFAULT_USER, "-s", "/sbin/nologin"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run useradd: {e}"))?;
    if !status.success() {
        return Err(format!("useradd {DEFAULT_USER} failed: {status}"));
    }
    let rule = format!("# User rules for {DEFAULT_USER}\n{DEFAULT_USER} ALL=(ALL) NOPASSWD:ALL\n");
    if !Path::new(SUDOERS).exists() {
        if let Err(e) = crate::fsutil::write_atomic(Path::new(SUDOERS), rule.as_bytes(), 0o440) {
            log::warn!("phase=session cannot write {SUDOERS}: {e}");
        }
    }
    Ok(())
}

fn needs_switch(user: &UserInfo) -> bool {
    // SAFETY: geteuid and getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    user.uid != euid || user.gid != egid
}

/// A new pty pair: the master (close-on-exec) and the slave.
fn open_pty() -> io::Result<(File, OwnedFd)> {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `m` is new and ours.
    let master = unsafe { File::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most `name.len()` bytes.
    unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: `path` is a valid C string; open returns a new descriptor or -1.
    let s = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is new and ours.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// The shell's environment (spec §4.2 step 2), on the base every task run as another user
/// gets (`runner::spawn::clean_env`: a safe PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_ALL,
/// TZ) instead of the agent's whole environment, which may hold the service's secrets.
fn shell_env(user: &UserInfo) -> Vec<(String, OsString)> {
    let mut env = clean_env(Some(user), Some(&user.home), |k| std::env::var_os(k));
    env.push(("TERM".to_string(), "xterm-256color".into()));
    let lang_set = std::env::var_os("LANG").is_some_and(|l| !l.is_empty());
    if !lang_set {
        env.retain(|(k, _)| k != "LANG");
        env.push(("LANG".to_string(), "C.UTF-8".into()));
    }
    env
}

/// Starts `argv` in a new session with the slave as its controlling terminal and its stdin,
/// stdout and stderr, as `user`, in the user's home.
fn spawn_on_pty(
    argv: &[String],
    user: &UserInfo,
    switch: bool,
    slave: OwnedFd,
) -> io::Result<Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(shell_env(user));
    let out = slave.try_clone()?;
    let err = slave.try_clone()?;
    cmd.stdin(Stdio::from(slave))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let home = CString::new(user.home.as_os_str().as_bytes())?;
    let groups = user.groups.clone();
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: the hook runs in the forked child and makes only async-signal-safe calls
    // (setsid, ioctl, setgroups, setgid, setuid, chdir) on data built before the fork; it
    // does not allocate, lock or log. std has already made the slave fd 0.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if switch
                && (libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            // A missing home fails the start, as in the reference (spec §4.2 step 5).
            if libc::chdir(home.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // `cmd` holds the parent's copies of the slave; they close here, so the pump sees the
    // hang-up once the session's processes have closed theirs.
    drop(cmd);
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Result<Vec<&'static str>, SplitError> {
        split_command(line).map(|w| w.into_iter().map(|s| &*s.leak()).collect())
    }

    #[test]
    fn command_lines_split_like_the_reference() {
        assert_eq!(split("pwd"), Ok(vec!["pwd"]));
        assert_eq!(
            split(r#"bash -c "echo hi""#),
            Ok(vec!["bash", "-c", "echo hi"])
        );
        assert_eq!(
            split("ls -l '/var/log' # comment"),
            Ok(vec!["ls", "-l", "/var/log"])
        );
        assert_eq!(split(r"echo a\ b"), Ok(vec!["echo", "a b"]));
        assert_eq!(split("  "), Ok(vec![]));
        assert_eq!(split("# only"), Ok(vec![]));
        assert_eq!(
            split(r#"echo "unterminated"#),
            Err(SplitError::UnterminatedQuote)
        );
        assert_eq!(split(r"a\"), Err(SplitError::TrailingEscape));
        assert_eq!(split("a#b"), Ok(vec!["a#b"]));
        assert_eq!(split(r#""a\"b" 'c\d'"#), Ok(vec![r#"a"b"#, r"c\d"]));
    }

    /// Successive reads through one carry: (read, sent).
    fn check_carry(steps: &[(&[u8], &[u8])]) {
        let mut c = Utf8Carry::default();
        for (read, sent) in steps {
            assert_eq!(c.push(read), sent.to_vec(), "after reading {read:02x?}");
        }
    }

    #[test]
    fn a_character_split_across_reads_goes_out_whole() {
        check_carry(&[(b"\x61\xe4\xb8", b"\x61"), (b"\xad", b"\xe4\xb8\xad")]);
        check_carry(&[
            (b"\xf0\x9f\x98", b""),
            (b"\x80\x21", b"\xf0\x9f\x98\x80\x21"),
        ]);
        check_carry(&[(b"\xe4", b"")]);
    }

    #[test]
    fn invalid_bytes_go_out_at_once() {
        // The reference holds `ff` (then `ff 64`) until four more bytes follow.
        check_carry(&[
            (b"\x61\x62\x63\xff", b"\x61\x62\x63\xff"),
            (b"\x64", b"\x64"),
            (b"\xff\xfe\x61\x62\x63\x64", b"\xff\xfe\x61\x62\x63\x64"),
        ]);
    }

    #[test]
    fn a_replacement_character_is_kept_whole() {
        // The reference sends `ef 61 62 63 64`, losing `bf bd`, and holds a trailing U+FFFD.
        check_carry(&[(
            b"\xef\xbf\xbd\x61\x62\x63\x64",
            b"\xef\xbf\xbd\x61\x62\x63\x64",
        )]);
        check_carry(&[
            (b"\x78\xef\xbf\xbd", b"\x78\xef\xbf\xbd"),
            (b"\x79", b"\x79"),
        ]);
    }

    #[test]
    fn what_is_held_at_the_end_is_sent() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"a\xe4\xb8"), b"a");
        assert_eq!(c.finish(), b"\xe4\xb8");
        assert_eq!(c.finish(), b"");
    }

    #[test]
    fn root_and_odd_names_are_refused() {
        assert!(resolve_user("root").is_err());
        assert!(resolve_user("-o").is_err());
        assert!(resolve_user("a b").is_err());
        assert!(resolve_user("x;id").is_err());
        assert!(resolve_user("no-such-user-assistd").is_err());
    }
}
