//! Running one external tool to completion: its input is written on a
//! thread while its output and errors are read on two others (a tool that
//! answers while it reads, as `conntrack -R -` does, never fills both pipes
//! and stalls), it gets a deadline after which its whole process group is
//! killed, and it is always reaped, whatever happened.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a finished tool ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Writing its input failed (it exited or closed stdin early).
    pub input_error: Option<std::io::Error>,
}

/// Why a tool produced no [`Output`].
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Spawn(#[source] std::io::Error),
    #[error("waiting for it failed: {0}")]
    Wait(#[source] std::io::Error),
    #[error("it did not finish within {0:?} and was killed")]
    TimedOut(Duration),
}

/// Runs `cmd` with `input` on stdin (none: stdin is /dev/null) until it
/// exits or `timeout` passes.
pub fn run(mut cmd: Command, input: Option<&str>, timeout: Duration) -> Result<Output, ToolError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a timeout kills whatever it started too
    // (which would otherwise hold the pipes open).
    .process_group(0);
    let mut child = cmd.spawn().map_err(ToolError::Spawn)?;
    let writer = match (child.stdin.take(), input) {
        (Some(mut pipe), Some(text)) => {
            let text = text.to_owned();
            // Dropping the pipe at the end closes the tool's stdin.
            Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let waited = wait_until(&mut child, Instant::now() + timeout);
    if !matches!(waited, Ok(Some(_))) {
        kill_group(&mut child);
    }
    // The tool is gone (and its group killed): every pipe reaches its end.
    let input_error = writer.and_then(|w| w.join().ok()).and_then(Result::err);
    let stdout = stdout.map(collect).unwrap_or_default();
    let stderr = stderr.map(collect).unwrap_or_default();
    match waited {
        Ok(Some(status)) => Ok(Output {
            status,
            stdout,
            stderr,
            input_error,
        }),
        Ok(None) => Err(ToolError::TimedOut(timeout)),
        Err(e) => Err(ToolError::Wait(e)),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn collect(reader: JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned()
}

/// The exit status, or `None` once `deadline` passed.
///
/// A helper thread blocks in `waitid(WNOWAIT)` and says when the tool
/// exited, so its end is noticed at once, not at the next poll; it leaves
/// the tool unreaped, so only this thread reaps it and a kill after the
/// deadline can never reach a recycled process id.
pub(crate) fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    // Already reaped (or just exited): its pid may belong to another
    // process by now, so it is not waited on again.
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let pid = i32::try_from(child.id())
        .map(nix::unistd::Pid::from_raw)
        .map_err(std::io::Error::other)?;
    let (exited, notice) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use nix::sys::wait::{Id, WaitPidFlag};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        // Until it exited (or can no longer be waited for, which the reap
        // below reports).
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitid(Id::Pid(pid), flags) {}
        let _ = exited.send(());
    });
    let left = deadline.saturating_duration_since(Instant::now());
    match notice.recv_timeout(left) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => child.wait().map(Some),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
    }
}

/// Kills the tool's process group and reaps the tool.
pub(crate) fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
