//! `assistd import-crontab`: reads one crontab file, prints or writes the task files
//! `source::crontab` makes of it, and says which lines did not carry over. It never runs a
//! task and never touches the state dir.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::args::Args;
use super::{io_err, CliError};
use crate::fsutil;
use crate::source::crontab::{self, ImportConfig};

/// A crontab larger than this is refused: crontab(1) itself has no such files.
const MAX_CRONTAB: u64 = 1024 * 1024;

pub(super) fn cmd_import_crontab(mut args: Args) -> Result<ExitCode, CliError> {
    let user = args.value("--user")?;
    let out_dir = args.value("--out")?.map(PathBuf::from);
    let system_flag = args.flag("--system");
    args.finish()?;
    let [file] = args.positionals.as_slice() else {
        return Err(CliError::Usage(
            "import-crontab takes one crontab file".to_string(),
        ));
    };
    if system_flag && user.is_some() {
        return Err(CliError::Usage(
            "--user is for a user crontab; a system crontab names its users".to_string(),
        ));
    }
    let path = Path::new(file);
    let text = read_crontab(path)?;
    let cfg = ImportConfig {
        system: system_flag || (user.is_none() && crontab::looks_system(path)),
        user,
        prefix: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let imported = crontab::import(&text, &cfg);

    let mut stdout = io::stdout().lock();
    match &out_dir {
        None => {
            for t in &imported.tasks {
                writeln!(stdout, "# {}.json (line {})\n{}", t.id, t.line, t.json)
                    .map_err(io_err("cannot write"))?;
            }
        }
        Some(dir) => {
            if !dir.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err(format!("cannot create {}", dir.display())))?;
            }
            for t in &imported.tasks {
                let target = dir.join(format!("{}.json", t.id));
                // 0600: the agent refuses task files that group or others could write.
                fsutil::write_atomic(&target, t.json.as_bytes(), 0o600)
                    .map_err(io_err(format!("cannot write {}", target.display())))?;
                writeln!(stdout, "{} (line {})", target.display(), t.line)
                    .map_err(io_err("cannot write"))?;
            }
        }
    }
    let mut stderr = io::stderr().lock();
    for p in &imported.problems {
        // Best effort: stderr has nowhere else to report to.
        let _ = writeln!(stderr, "{}: {p}", path.display());
    }
    let _ = writeln!(
        stderr,
        "{}: {} task file(s){}, {} line(s) not converted ({} crontab)",
        path.display(),
        imported.tasks.len(),
        if out_dir.is_some() { " written" } else { "" },
        imported.problems.len(),
        if cfg.system { "system" } else { "user" },
    );
    Ok(if imported.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn read_crontab(path: &Path) -> Result<String, CliError> {
    let what = || format!("cannot read {}", path.display());
    let file = fs::File::open(path).map_err(io_err(what()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CRONTAB + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(what()))?;
    if bytes.len() as u64 > MAX_CRONTAB {
        return Err(CliError::Io {
            what: format!("{} is larger than {MAX_CRONTAB} bytes", path.display()),
            source: io::Error::from(io::ErrorKind::InvalidData),
        });
    }
    String::from_utf8(bytes).map_err(|e| CliError::Io {
        what: format!("{} is not UTF-8", path.display()),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}
