//! The one way this tool runs external programs, so that logging, redaction and error text are
//! the same for `nix`, `mkfs.*`, `cryptsetup` and `switch-to-configuration` alike; and the two
//! helpers every command line shares, local or remote (over [`crate::ssh`]): shell quoting and
//! the tail of a failed program's standard error.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

/// A command line, kept as argv so that it can be quoted in errors and logs.
pub struct Cmd {
    argv: Vec<OsString>,
    /// Indices into `argv` whose value must never be shown (passwords, keys).
    secret: Vec<usize>,
    stdin: Option<Vec<u8>>,
    envs: Vec<(OsString, OsString)>,
    /// Variables of this process the command must not inherit (a password meant for us).
    removed: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("could not start `{argv}`: {source}; is it installed and on PATH?")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        argv: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            argv: vec![program.as_ref().to_owned()],
            secret: Vec::new(),
            stdin: None,
            envs: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An argument that is shown as `<redacted>` in every log line and error.
    pub fn secret_arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.secret.push(self.argv.len());
        self.arg(arg)
    }

    /// Bytes written to the command's standard input (the way to hand it a secret).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Keeps the variable `key` of this process from the command.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.removed.push(key.as_ref().to_owned());
        self
    }

    /// The process to start, its start logged.
    fn command(&self) -> Command {
        tracing::debug!(command = %self, "running");
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        for key in &self.removed {
            command.env_remove(key);
        }
        command
    }

    /// Runs the command to completion and returns its standard output.
    pub fn output(&self) -> Result<Vec<u8>, CmdError> {
        let mut command = self.command();
        command.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_err = |source| CmdError::Spawn {
            argv: self.to_string(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_err)?;
        if let Some(bytes) = &self.stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            // A command that exits without reading its input reports its own error below.
            let _ = pipe.write_all(bytes);
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(CmdError::Failed {
                argv: self.to_string(),
                status: out.status,
                stderr,
            });
        }
        Ok(out.stdout)
    }

    /// Runs the command with its standard output copied into `out` as it comes (a NAR, say),
    /// and no input. A command that fails is an error of kind `Other` carrying its
    /// [`CmdError`]; an `out` that fails (a broken pipe) stops the command and is returned as
    /// it is.
    pub fn stream_stdout(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut command = self.command();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| {
            std::io::Error::other(CmdError::Spawn {
                argv: self.to_string(),
                source,
            })
        })?;
        // Standard error is read beside, so that neither pipe can fill up and stall the other.
        let mut stderr = child.stderr.take().expect("stderr was piped");
        let errors = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut text);
            text
        });
        let mut stdout = child.stdout.take().expect("stdout was piped");
        let copied = std::io::copy(&mut stdout, out);
        if copied.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        let status = child.wait();
        let stderr = String::from_utf8_lossy(&errors.join().unwrap_or_default()).into_owned();
        copied?;
        let status = status?;
        if !status.success() {
            return Err(std::io::Error::other(CmdError::Failed {
                argv: self.to_string(),
                status,
                stderr,
            }));
        }
        Ok(())
    }

    /// Runs the command to completion, discarding its output.
    pub fn run(&self) -> Result<(), CmdError> {
        self.output().map(drop)
    }
}

impl fmt::Display for Cmd {
    /// The command line as a shell would take it, secrets redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.argv.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if self.secret.contains(&i) {
                f.write_str("<redacted>")?;
            } else {
                f.write_str(&shell_quote(&arg.to_string_lossy()))?;
            }
        }
        Ok(())
    }
}

/// Quotes a word for a POSIX shell: as it is when that is safe, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:+,@%".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Lines of a failed program's standard error kept for its error message.
const STDERR_TAIL_LINES: usize = 20;

/// The last lines of a failed program's standard error (local or remote), indented below the
/// message; empty when it printed nothing.
pub fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
    format!(":\n  {}", tail.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_redacts() {
        let cmd = Cmd::new("cryptsetup")
            .arg("luksFormat")
            .secret_arg("hunter2")
            .arg("a b")
            .arg("");
        assert_eq!(cmd.to_string(), "cryptsetup luksFormat <redacted> 'a b' ''");
    }

    #[test]
    fn failure_quotes_argv_status_and_stderr_but_no_secret() {
        let err = Cmd::new("sh")
            .arg("-c")
            .arg("echo oops >&2; exit 3")
            .secret_arg("s3cret")
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sh -c 'echo oops >&2; exit 3' <redacted>"),
            "{text}"
        );
        assert!(
            text.contains("exit status: 3") && text.contains("oops"),
            "{text}"
        );
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn passes_stdin_and_returns_stdout() {
        let out = Cmd::new("cat").stdin("hello").output().unwrap();
        assert_eq!(out, b"hello");
        assert!(matches!(
            Cmd::new("/nonexistent/prog").run(),
            Err(CmdError::Spawn { .. })
        ));
    }
}
