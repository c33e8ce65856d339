//! What the command line accepts before any work starts: paths that are
//! UTF-8 (normlab writes them into JSON), whole numbers in range with a
//! message that names the option and an example, and clap's own errors
//! brought to one line with the fix.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// An option's name as clap shows it (`--out <DIR>`), for messages.
fn arg_name(arg: Option<&clap::Arg>) -> String {
    arg.map_or_else(|| "the value".to_string(), |a| a.to_string())
}

/// A path given on the command line: not empty, and UTF-8, because normlab
/// records paths in JSON (run.json, every `--json` output), which holds
/// text only. Refused with exit code 2 and the option's name otherwise.
#[derive(Clone, Copy, Debug)]
pub struct PathArg;

impl TypedValueParser for PathArg {
    type Value = PathBuf;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<PathBuf, clap::Error> {
        let name = arg_name(arg);
        let problem = match value.to_str() {
            Some("") => format!("{name} is empty; give a path"),
            Some(text) => return Ok(PathBuf::from(text)),
            None => format!(
                "{name} '{}' is not valid UTF-8; normlab records paths in JSON (run.json, --json), \
                 which holds text only: rename it or use another path",
                value.to_string_lossy()
            ),
        };
        Err(clap::Error::raw(ErrorKind::ValueValidation, problem).with_cmd(cmd))
    }
}

/// A whole number from `min` to `max`, with `example` in the message; a
/// negative number gets the same message as any other bad value (the
/// option takes hyphen values so that clap does not call `-1` an
/// unexpected argument).
#[derive(Clone, Copy, Debug)]
pub struct Count {
    pub min: u64,
    pub max: u64,
    pub example: &'static str,
}

/// [`Count`] with no upper bound but what a `usize` holds.
pub const fn count(min: u64, example: &'static str) -> Count {
    Count { min, max: usize::MAX as u64, example }
}

impl Count {
    /// Checks `text`; the error names `option` and gives the example.
    pub fn check(&self, option: &str, text: &str) -> Result<usize, String> {
        match text.trim().parse::<u64>() {
            Ok(v) if (self.min..=self.max).contains(&v) => Ok(v as usize),
            Ok(v) if v > self.max => Err(format!(
                "invalid {option}: {text} is more than the maximum, {}; e.g. {option} {}",
                self.max, self.example
            )),
            _ => Err(format!(
                "invalid {option}: '{text}' is not a whole number of at least {}; e.g. {option} {}",
                self.min, self.example
            )),
        }
    }
}

impl TypedValueParser for Count {
    type Value = usize;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<usize, clap::Error> {
        let option = arg.and_then(|a| a.get_long()).map_or_else(|| arg_name(arg), |l| format!("--{l}"));
        self.check(&option, &value.to_string_lossy())
            .map_err(|m| clap::Error::raw(ErrorKind::ValueValidation, m).with_cmd(cmd))
    }
}

/// clap's error (3 to 5 lines: the message, a tip, the usage, a pointer to
/// --help) as one line: the message, the tip, and the command whose --help
/// to read (from the usage clap shows, else `command`, e.g. `normlab
/// train`). `--help` and `--version` are not errors and are left whole.
pub fn one_line(e: &clap::Error, command: &str) -> String {
    let text = e.render().to_string();
    let mut paragraphs = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty());
    let first = paragraphs.next().unwrap_or("");
    let message = first.strip_prefix("error:").unwrap_or(first);
    let mut parts = vec![message.split_whitespace().collect::<Vec<_>>().join(" ")];
    let mut command = command.to_string();
    for p in paragraphs {
        if let Some(tip) = p.strip_prefix("tip:") {
            parts.push(tip.split_whitespace().collect::<Vec<_>>().join(" "));
        } else if let Some(usage) = p.strip_prefix("Usage:") {
            // "normlab train [OPTIONS]": the words before the first option
            let words: Vec<&str> = usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<', '-'])).collect();
            if !words.is_empty() {
                command = words.join(" ");
            }
        }
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        parts = vec![format!("{command} needs a command, e.g. `{command} train`")];
    }
    parts.push(format!("see '{command} --help'"));
    format!("error: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_name_the_option_and_an_example() {
        let c = Count { min: 1, max: 100, example: "3" };
        assert_eq!(c.check("--seeds", "7"), Ok(7));
        for bad in ["-1", "0", "x", "", "1e3", "18446744073709551616"] {
            let e = c.check("--seeds", bad).unwrap_err();
            assert!(e.contains("--seeds") && e.contains("at least 1") && e.contains("--seeds 3"), "{e}");
        }
        let e = c.check("--seeds", "18446744073709551615").unwrap_err();
        assert!(e.contains("maximum, 100"), "{e}");
    }
}
