//! Hand-written flag parsing for every subcommand: `--name value`, `--name=value`, flags and
//! positionals. It never knows what a flag means; the commands do.

use std::ffi::OsString;

use super::CliError;

/// Hand-written flag parsing: `--name value` or `--name=value`, positionals in order.
pub(super) struct Args {
    pub(super) items: Vec<String>,
    pub(super) positionals: Vec<String>,
}

impl Args {
    pub(super) fn new(raw: Vec<OsString>) -> Result<Args, CliError> {
        let mut items = Vec::new();
        for a in raw {
            items.push(
                a.into_string()
                    .map_err(|a| CliError::Usage(format!("argument is not UTF-8: {a:?}")))?,
            );
        }
        Ok(Args {
            items,
            positionals: Vec::new(),
        })
    }

    /// Takes `--name VALUE` (or `--name=VALUE`) out of the arguments.
    pub(super) fn value(&mut self, name: &str) -> Result<Option<String>, CliError> {
        let prefix = format!("{name}=");
        for i in 0..self.items.len() {
            if self.items[i] == name {
                if i + 1 >= self.items.len() {
                    return Err(CliError::Usage(format!("{name} needs a value")));
                }
                let v = self.items.remove(i + 1);
                self.items.remove(i);
                return Ok(Some(v));
            }
            if let Some(v) = self.items[i].strip_prefix(&prefix) {
                let v = v.to_string();
                self.items.remove(i);
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub(super) fn flag(&mut self, name: &str) -> bool {
        match self.items.iter().position(|a| a == name) {
            Some(i) => {
                self.items.remove(i);
                true
            }
            None => false,
        }
    }

    /// After all flags are taken: the rest are positionals; anything starting with `--` is unknown.
    /// A lone `--` ends the flags (so `assistd next -- "-5 ..."` style values stay possible).
    pub(super) fn finish(&mut self) -> Result<(), CliError> {
        let mut rest = std::mem::take(&mut self.items).into_iter();
        while let Some(a) = rest.next() {
            if a == "--" {
                self.positionals.extend(rest.by_ref());
                break;
            }
            if a.starts_with("--") {
                return Err(CliError::Usage(format!("unknown option {a}")));
            }
            self.positionals.push(a);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_values_in_both_forms_and_unknown_ones_are_refused() {
        let mut args = Args::new(vec![
            "--count".into(),
            "3".into(),
            "x".into(),
            "--from=2030-01-01T00:00:00Z".into(),
        ])
        .expect("utf-8");
        assert_eq!(args.value("--count").expect("ok"), Some("3".to_string()));
        assert_eq!(
            args.value("--from").expect("ok"),
            Some("2030-01-01T00:00:00Z".to_string())
        );
        args.finish().expect("no unknown flags");
        assert_eq!(args.positionals, vec!["x".to_string()]);
        let mut bad = Args::new(vec!["--nope".into()]).expect("utf-8");
        assert!(bad.finish().is_err());
    }
}
