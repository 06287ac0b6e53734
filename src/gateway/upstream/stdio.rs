//! The stdio transport: a child process speaking newline-delimited JSON-RPC on stdin/stdout.
//!
//! It owns the child: spawned only from the server's registered command (`gatehouse` names
//! this very binary), with a cleared environment (PATH, HOME, LANG and the server's
//! credential env only, so the gateway's own secrets never reach a child), in its own process
//! group so that shutdown reaches the grandchildren that `npx`/`uvx` wrappers start. A writer
//! task owns stdin, a reader task hands stdout lines to `rpc`, a third logs stderr. It must
//! not interpret JSON-RPC itself (that is `rpc`).

use std::path::PathBuf;
use std::process::Stdio as Piped;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use super::rpc::{Call, Rpc, Task};
use super::{MAX_MESSAGE_BYTES, UpstreamError};
use crate::gateway::secrets::Bound;
use crate::policy::snapshot::Server;

/// The only variables of our own environment a child inherits (when set).
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG"];

/// How long each step of the shutdown sequence waits for the child to exit.
const SHUTDOWN_STEP: Duration = Duration::from_secs(2);

/// A stderr line longer than this is cut in the log.
const MAX_STDERR_LINE: usize = 8 << 10;

/// One child process and its session.
pub(crate) struct Stdio {
    rpc: Arc<Rpc>,
    /// None once reaped by shutdown.
    child: tokio::sync::Mutex<Option<Child>>,
    /// The child's pid while it is not reaped by us (0 after).
    pid: AtomicU32,
    /// Tells the writer task to drop stdin.
    close_stdin: Mutex<Option<oneshot::Sender<()>>>,
    /// Writer, stdout reader, stderr logger.
    tasks: Mutex<Vec<Task>>,
}

// === impl Stdio ===

impl Stdio {
    pub(crate) fn spawn(
        command: &[String],
        server: &Server,
        creds: &Bound,
        rpc: Arc<Rpc>,
        outbound: mpsc::UnboundedReceiver<Value>,
    ) -> Result<Stdio, UpstreamError> {
        let Some((program, args)) = command.split_first() else {
            return Err(UpstreamError::Protocol("the server's command is empty".into()));
        };
        // `gatehouse` is this binary, wherever it is installed (or built, under `cargo run`).
        let program = if program == "gatehouse" {
            std::env::current_exe()
                .map_err(|e| UpstreamError::Unavailable(format!("cannot locate the gatehouse binary: {e}")))?
        } else {
            PathBuf::from(program)
        };
        let mut cmd = Command::new(&program);
        cmd.args(args).env_clear();
        for name in INHERITED_ENV {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.envs(creds.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Piped::piped()).stdout(Piped::piped()).stderr(Piped::piped());
        // Its own group: a terminal's ^C is ours to handle, and the SIGTERM of shutdown
        // reaches the whole tree. kill_on_drop covers an Upstream dropped without shutdown.
        cmd.process_group(0).kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| UpstreamError::Unavailable(format!("cannot start {}: {e}", program.display())))?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(UpstreamError::Unavailable("the child's standard streams are not piped".into()));
        };
        tracing::debug!(server = %server.name, pid, program = %program.display(), "upstream process started");
        let (close_tx, close_rx) = oneshot::channel();
        let tasks = vec![
            Task::spawn(write_loop(stdin, outbound, close_rx, rpc.clone())),
            Task::spawn(read_loop(BufReader::new(stdout), rpc.clone())),
            Task::spawn(log_stderr(BufReader::new(stderr), rpc.clone())),
        ];
        Ok(Stdio {
            rpc,
            child: tokio::sync::Mutex::new(Some(child)),
            pid: AtomicU32::new(pid),
            close_stdin: Mutex::new(Some(close_tx)),
            tasks: Mutex::new(tasks),
        })
    }

    /// Writes the request; the reader task delivers the answer.
    pub(crate) async fn request(&self, call: &mut Call) -> Result<Value, UpstreamError> {
        self.send(std::mem::take(&mut call.message))?;
        call.wait().await
    }

    /// Queues one message for stdin.
    pub(crate) fn send(&self, message: Value) -> Result<(), UpstreamError> {
        if self.rpc.is_closed() {
            return Err(UpstreamError::Unavailable("process has exited".into()));
        }
        self.rpc.send(message);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// Close stdin, wait up to 2 s; SIGTERM (the group), wait up to 2 s; SIGKILL. The child
    /// is reaped when this returns.
    pub(crate) async fn shutdown(&self) {
        if let Some(tx) = self.close_stdin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
        let mut guard = self.child.lock().await;
        if let Some(child) = guard.as_mut() {
            let name = self.rpc.server();
            if !exited_within(child, SHUTDOWN_STEP).await {
                tracing::debug!(server = %name, "upstream process ignored stdin closing; sending SIGTERM");
                signal_group(child, Signal::SIGTERM);
                if !exited_within(child, SHUTDOWN_STEP).await {
                    tracing::warn!(server = %name, "upstream process ignored SIGTERM; sending SIGKILL");
                    signal_group(child, Signal::SIGKILL);
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(SHUTDOWN_STEP, child.wait()).await;
                }
            }
        }
        *guard = None;
        self.pid.store(0, Ordering::Relaxed);
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Waits for the child to exit (and reaps it).
async fn exited_within(child: &mut Child, wait: Duration) -> bool {
    matches!(tokio::time::timeout(wait, child.wait()).await, Ok(Ok(_)))
}

/// Signals the child's process group, if the child is still ours (not reaped, so its pid, and
/// the group it leads, cannot have been reused).
fn signal_group(child: &mut Child, signal: Signal) {
    if let (Ok(None), Some(pid)) = (child.try_wait(), child.id())
        && let Ok(pid) = i32::try_from(pid)
    {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Writes queued messages to stdin, one line each, until told to close it.
async fn write_loop(
    mut stdin: ChildStdin,
    mut outbound: mpsc::UnboundedReceiver<Value>,
    mut close: oneshot::Receiver<()>,
    rpc: Arc<Rpc>,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut close => break,
            m = outbound.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Ok(mut line) = serde_json::to_vec(&message) else { continue };
        line.push(b'\n');
        let write = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        // A child that stops reading must not keep shutdown from closing its stdin.
        let written = tokio::select! {
            biased;
            _ = &mut close => break,
            r = write => r,
        };
        if let Err(e) = written {
            rpc.close(UpstreamError::Unavailable(format!("process stopped reading its stdin: {e}")));
            break;
        }
    }
    // Dropping stdin is what tells the child to exit.
}

/// Hands every stdout line to `rpc` until the child closes it; that closes the session.
async fn read_loop<R: AsyncBufRead + Unpin>(mut stdout: R, rpc: Arc<Rpc>) {
    let mut line = Vec::new();
    let error = loop {
        line.clear();
        match read_line_capped(&mut stdout, &mut line, MAX_MESSAGE_BYTES).await {
            Ok((0, _)) => break UpstreamError::Unavailable("process closed its stdout".into()),
            Ok((_, true)) => {
                break UpstreamError::Protocol(format!("a stdout line larger than {MAX_MESSAGE_BYTES} bytes"));
            }
            Ok(_) => {}
            Err(e) => break UpstreamError::Unavailable(format!("cannot read the process's stdout: {e}")),
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(text) {
            Ok(message) => rpc.dispatch(message),
            // Some servers print banners on stdout; it is not fatal, but it is not MCP either.
            Err(_) => {
                tracing::debug!(server = %rpc.server(), "upstream process wrote a line that is not JSON; ignored")
            }
        }
    };
    tracing::debug!(server = %rpc.server(), %error, "upstream process stream ended");
    rpc.close(error);
}

/// Logs stderr line by line at debug, scrubbed of credential values.
async fn log_stderr<R: AsyncBufRead + Unpin>(mut stderr: R, rpc: Arc<Rpc>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut stderr, &mut line, MAX_STDERR_LINE).await {
            Ok((0, _)) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(line.trim_ascii_end());
        tracing::debug!(server = %rpc.server(), line = %rpc.redact(&text), "upstream stderr");
    }
}

/// Reads one line (with its newline) into `out`, keeping at most `max` bytes of it. Returns
/// the bytes consumed (0 at end of stream) and whether the line was cut. Memory stays
/// bounded whatever the child writes.
pub(crate) async fn read_line_capped<R: AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok((consumed, false));
        }
        let (n, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
        r.consume(n);
        consumed += n;
        if n > room {
            // Cut here: the rest of the line reads as another one (stderr) or is never
            // read (stdout closes the session).
            return Ok((consumed, true));
        }
        if done {
            return Ok((consumed, false));
        }
    }
}
