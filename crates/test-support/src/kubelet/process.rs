//! The built-in "container processes" behind exec and attach, shared by both transports.
//!
//! A transport ([`super::stream`] for WebSocket, [`super::spdy`] for SPDY/3.1) turns its
//! framing into the channel ends of a [`ProcessIo`] and runs the future [`start`] returns: it
//! feeds stdin and resize events in, takes `(channel, bytes)` output out (1 stdout, 2 stderr)
//! and, once the output channel is closed, the [`Exit`] of the process, which it reports with
//! [`status_payload`] in its protocol's format. So the commands below behave the same whatever
//! the client spoke.
//!
//! The command table is documented in [`super::stream`]; the file commands used by
//! `kubectl cp` are in [`super::files`].

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{
    Container,
    files::{FileTree, Outcome, parse_tar},
    lock,
};

/// Size of stdout/port-forward data messages produced by the server.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Output channel numbers (the WebSocket channel bytes; SPDY maps them to streams).
pub(crate) const STDOUT: u8 = 1;
pub(crate) const STDERR: u8 = 2;

/// Which standard streams a session has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamOpts {
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) tty: bool,
}

/// How a process ended.
pub(crate) enum Exit {
    Code(i32),
    /// The kubelet could not run it at all (unknown binary, bad arguments).
    Error(String),
}

/// The client is gone; the process should stop.
pub(crate) struct Gone;

enum Input {
    Stdin(Bytes),
    Resize(u16, u16),
}

/// The transport's side of a running process.
pub(crate) struct ProcessIo {
    /// Stdin bytes; drop it to signal end of stdin. `None` without stdin.
    pub(crate) stdin: Option<mpsc::Sender<Bytes>>,
    /// Terminal size changes (width, height).
    pub(crate) resize: mpsc::Sender<(u16, u16)>,
    /// Output as (channel, bytes); closed once the process ended.
    pub(crate) out: mpsc::Receiver<(u8, Bytes)>,
    /// How the process ended; never sent when it stopped because the client went away.
    pub(crate) exit: oneshot::Receiver<Exit>,
}

/// Starts `command` (or, with `None`, the attach "main process") of `container`. The returned
/// future is the process; the caller runs it next to its transport pumps.
pub(crate) fn start(
    container: Arc<Container>,
    command: Option<Vec<String>>,
    opts: StreamOpts,
) -> (ProcessIo, impl Future<Output = ()> + Send + 'static) {
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(16);
    let (out_tx, out_rx) = mpsc::channel::<(u8, Bytes)>(16);
    let (exit_tx, exit_rx) = oneshot::channel::<Exit>();
    let process = async move {
        let mut p = Proc {
            stdin: opts.stdin.then_some(stdin_rx),
            resize: resize_rx,
            out: out_tx,
            opts,
            container,
        };
        let result = match &command {
            Some(argv) => run_command(argv, &mut p).await,
            None => run_attach(&mut p).await,
        };
        // Closing the output channel tells the transport that all output was produced.
        drop(p);
        if let Ok(exit) = result {
            let _ = exit_tx.send(exit);
        }
    };
    (
        ProcessIo {
            stdin: opts.stdin.then_some(stdin_tx),
            resize: resize_tx,
            out: out_rx,
            exit: exit_rx,
        },
        process,
    )
}

/// I/O of a built-in "process".
struct Proc {
    stdin: Option<mpsc::Receiver<Bytes>>,
    resize: mpsc::Receiver<(u16, u16)>,
    out: mpsc::Sender<(u8, Bytes)>,
    opts: StreamOpts,
    container: Arc<Container>,
}

impl Proc {
    async fn stdout(&self, data: Bytes) -> Result<(), Gone> {
        if !self.opts.stdout || data.is_empty() {
            return Ok(());
        }
        self.out.send((STDOUT, data)).await.map_err(|_| Gone)
    }

    async fn stderr(&self, data: Bytes) -> Result<(), Gone> {
        if self.opts.tty {
            return self.stdout(data).await;
        }
        if !self.opts.stderr || data.is_empty() {
            return Ok(());
        }
        self.out.send((STDERR, data)).await.map_err(|_| Gone)
    }

    async fn read_stdin(&mut self) -> Option<Bytes> {
        self.stdin.as_mut()?.recv().await
    }

    /// Waits for stdin data or a resize; `None` when stdin ended (or the client is gone).
    async fn next_input(&mut self) -> Option<Input> {
        let stdin = self.stdin.as_mut();
        tokio::select! {
            d = async {
                match stdin {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => d.map(Input::Stdin),
            r = self.resize.recv() => match r {
                Some((w, h)) => Some(Input::Resize(w, h)),
                // The transport's reader ended, so stdin ends after what is queued.
                None => self.read_stdin().await.map(Input::Stdin),
            },
        }
    }

    /// Writes what a file command produced (stderr first, as tar's notices come before its
    /// archive) and returns its exit code.
    async fn emit(&self, out: Outcome) -> Result<Exit, Gone> {
        self.stderr(Bytes::from(out.stderr)).await?;
        let stdout = Bytes::from(out.stdout);
        let mut pos = 0;
        while pos < stdout.len() {
            let end = (pos + CHUNK).min(stdout.len());
            self.stdout(stdout.slice(pos..end)).await?;
            pos = end;
        }
        Ok(Exit::Code(out.code))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, FileTree> {
        lock(&self.container.files)
    }
}

async fn run_command(argv: &[String], p: &mut Proc) -> Result<Exit, Gone> {
    let owned: Vec<String>;
    let argv: &[String] =
        if argv.len() >= 3 && (argv[0] == "sh" || argv[0] == "/bin/sh") && argv[1] == "-c" {
            owned = argv[2].split_whitespace().map(str::to_owned).collect();
            &owned
        } else {
            argv
        };
    if let Some(bar) = argv.iter().position(|a| a == "|") {
        return run_pipeline(&argv[..bar], &argv[bar + 1..], p).await;
    }
    let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let parse_n = |s: Option<&&str>| s.and_then(|s| s.parse::<u64>().ok());
    match argv.first().map(String::as_str).unwrap_or("") {
        "cat" if !args.is_empty() => {
            let out = p.files().cat(&args);
            p.emit(out).await
        }
        "cat" => {
            while let Some(d) = p.read_stdin().await {
                p.stdout(d).await?;
            }
            Ok(Exit::Code(0))
        }
        "echo" => {
            p.stdout(Bytes::from(format!("{}\n", args.join(" "))))
                .await?;
            Ok(Exit::Code(0))
        }
        "stderr" => {
            p.stderr(Bytes::from(format!("{}\n", args.join(" "))))
                .await?;
            Ok(Exit::Code(0))
        }
        "true" => Ok(Exit::Code(0)),
        "false" => Ok(Exit::Code(1)),
        "exit" => Ok(Exit::Code(
            args.first().and_then(|a| a.parse().ok()).unwrap_or(0),
        )),
        "sha256sum" => {
            let mut hasher = Sha256::new();
            let mut count = 0u64;
            while let Some(d) = p.read_stdin().await {
                count += d.len() as u64;
                hasher.update(&d);
            }
            let hex = crate::content::hex(&hasher.finalize());
            p.stdout(Bytes::from(format!("{hex}  {count}\n"))).await?;
            Ok(Exit::Code(0))
        }
        cmd @ ("head" | "yes-bytes") => {
            let n = if cmd == "head" {
                if args.first() != Some(&"-c") {
                    return Ok(Exit::Error("head: only `head -c N` is supported".into()));
                }
                parse_n(args.get(1))
            } else {
                parse_n(args.first())
            };
            let Some(n) = n else {
                return Ok(Exit::Error(format!("{cmd}: missing or invalid byte count")));
            };
            let mut pos = 0u64;
            while pos < n {
                let len = (n - pos).min(CHUNK as u64);
                p.stdout(crate::content::generated_bytes(pos, len as usize))
                    .await?;
                pos += len;
            }
            Ok(Exit::Code(0))
        }
        "tty-size" => {
            while let Some(input) = p.next_input().await {
                if let Input::Resize(w, h) = input {
                    p.stdout(Bytes::from(format!("{w}x{h}\n"))).await?;
                }
            }
            Ok(Exit::Code(0))
        }
        "test" => {
            let out = p.files().test(&args);
            p.emit(out).await
        }
        "tar" => run_tar(&args, p).await,
        other => Ok(Exit::Error(not_found(other))),
    }
}

fn not_found(cmd: &str) -> String {
    format!(
        "failed to exec in container: starting container process caused: exec: \"{cmd}\": executable file not found in $PATH"
    )
}

async fn run_tar(args: &[&str], p: &mut Proc) -> Result<Exit, Gone> {
    let t = match parse_tar(args) {
        Ok(t) => t,
        Err(e) => {
            p.stderr(Bytes::from(format!("{e}\n"))).await?;
            return Ok(Exit::Code(2));
        }
    };
    if t.create {
        let out = p.files().create(&t);
        return p.emit(out).await;
    }
    // Extraction reads the whole archive first (bounded by the tree's capacity), then
    // applies it: simpler than streaming, and indistinguishable to the client.
    let mut input = Vec::new();
    while let Some(d) = p.read_stdin().await {
        if (input.len() + d.len()) as u64 > FileTree::CAPACITY {
            // Keep reading so the client is not blocked, but drop the excess.
            while p.read_stdin().await.is_some() {}
            p.stderr(Bytes::from_static(
                b"tar: Cannot write: No space left on device\ntar: Exiting with failure status due to previous errors\n",
            ))
            .await?;
            return Ok(Exit::Code(2));
        }
        input.extend_from_slice(&d);
    }
    let out = p.files().extract(&t, &input);
    p.emit(out).await
}

/// `sh -c "A | B"`: only what `kubectl cp --retries` sends, `tar cf - PATH | tail -c+N`.
async fn run_pipeline(left: &[String], right: &[String], p: &mut Proc) -> Result<Exit, Gone> {
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let skip = match right.as_slice() {
        ["tail", c] if c.starts_with("-c+") => c[3..].parse::<u64>().ok(),
        ["tail", "-c", n] if n.starts_with('+') => n[1..].parse::<u64>().ok(),
        _ => None,
    };
    let (Some(skip), Some("tar")) = (skip, left.first().map(String::as_str)) else {
        return Ok(Exit::Error(
            "sh: this test container only runs the pipeline `tar cf - PATH | tail -c+N`".to_owned(),
        ));
    };
    let args: Vec<&str> = left.iter().skip(1).map(String::as_str).collect();
    let t = match parse_tar(&args) {
        Ok(t) if t.create => t,
        Ok(_) => {
            return Ok(Exit::Error(
                "sh: only `tar c` can feed a pipe here".to_owned(),
            ));
        }
        Err(e) => {
            p.stderr(Bytes::from(format!("{e}\n"))).await?;
            return Ok(Exit::Code(2));
        }
    };
    let mut out = p.files().create(&t);
    // `tail -c+N` starts at the N-th byte (1-based); `+0` means the start, like `+1`. A shell
    // pipeline's status is the last command's: tail succeeds even when tar failed.
    let from = (skip.saturating_sub(1) as usize).min(out.stdout.len());
    out.stdout.drain(..from);
    out.code = 0;
    p.emit(out).await
}

async fn run_attach(p: &mut Proc) -> Result<Exit, Gone> {
    while let Some(input) = p.next_input().await {
        match input {
            Input::Stdin(d) => p.stdout(d).await?,
            Input::Resize(w, h) => p.stdout(Bytes::from(format!("{w}x{h}\n"))).await?,
        }
    }
    Ok(Exit::Code(0))
}

/// The `metav1.Status` JSON the kubelet reports for a failed command; `None` for success.
fn status_json(argv: &[String], exit: &Exit) -> Option<String> {
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    match exit {
        Exit::Code(0) => None,
        Exit::Code(n) => {
            let msg = format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {n}",
                argv.join(" ")
            );
            Some(format!(
                r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{n}"}}]}}}}"#,
                quote(&msg)
            ))
        }
        Exit::Error(msg) => Some(format!(
            r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":"InternalError","details":{{"causes":[{{"message":{}}}]}},"code":500}}"#,
            quote(msg),
            quote(msg)
        )),
    }
}

/// What goes on the error channel/stream when a process ends: with `json` (v4/v5) always a
/// `metav1.Status` (`Success` included); otherwise, like the kubelet's v1–v3 handlers, only a
/// failure, as its plain message text.
pub(crate) fn status_payload(argv: &[String], exit: &Exit, json: bool) -> Option<String> {
    if json {
        return Some(
            status_json(argv, exit)
                .unwrap_or_else(|| r#"{"metadata":{},"status":"Success"}"#.to_owned()),
        );
    }
    status_json(argv, exit).and_then(|s| {
        serde_json::from_str::<serde_json::Value>(&s)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
    })
}
