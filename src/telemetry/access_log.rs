//! The access log: one line per request, formatted as JSON or for people, written by a
//! thread of its own through a bounded queue (a full queue drops lines and counts them; a
//! request never waits for stdout).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use super::LogFormat;

/// Lines waiting for stdout at most; beyond that lines are dropped and counted.
const ACCESS_LOG_QUEUE: usize = 65_536;

/// What the writer thread receives.
#[derive(Debug)]
enum LogMessage {
    Line(String),
    /// Write everything queued so far, flush, then acknowledge.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Sends access-log lines to a writer thread.
#[derive(Debug, Clone)]
pub struct AccessLog {
    sender: SyncSender<LogMessage>,
}

impl AccessLog {
    /// Starts the writer thread on stdout.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// Starts the writer thread on any writer (tests capture lines this way).
    pub fn to_writer(writer: Box<dyn std::io::Write + Send>) -> Self {
        let (sender, receiver) = sync_channel(ACCESS_LOG_QUEUE);
        std::thread::Builder::new()
            .name("authgate-access-log".into())
            .spawn(move || write_lines(receiver, writer))
            .map_or_else(
                |error| {
                    tracing::error!(%error, "Cannot start the access log thread; access logging is off.");
                },
                drop,
            );
        Self { sender }
    }

    /// Queues one line; returns false when it had to be dropped.
    pub fn write(&self, line: String) -> bool {
        match self.sender.try_send(LogMessage::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits (up to `timeout`) until every line queued before this call is written; used at
    /// exit so the last requests are not lost.
    pub fn flush(&self, timeout: std::time::Duration) {
        let (ack, done) = std::sync::mpsc::channel();
        if self.sender.send(LogMessage::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(timeout);
        }
    }
}

fn write_lines(receiver: Receiver<LogMessage>, writer: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    let write = |out: &mut std::io::BufWriter<_>, message: LogMessage| match message {
        LogMessage::Line(line) => {
            let _ = out.write_all(line.as_bytes());
        }
        LogMessage::Flush(ack) => {
            let _ = out.flush();
            let _ = ack.send(());
        }
    };
    while let Ok(message) = receiver.recv() {
        write(&mut out, message);
        // Drain what is queued, then flush once: lines reach stdout promptly without a
        // syscall per line under load.
        while let Ok(message) = receiver.try_recv() {
            write(&mut out, message);
        }
        let _ = out.flush();
    }
}

/// One access-log entry (SPEC §9). Never holds a credential.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub time: Option<SystemTime>,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub auth_method: Option<&'static str>,
    pub key_id: Option<String>,
    pub subject: Option<String>,
    pub tenant_id: Option<String>,
    pub client_ip: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reason: Option<&'static str>,
    /// Why a credential was refused: `code: detail`, never the credential.
    pub auth_error: Option<String>,
    /// Answered on the `[forward_auth]` listener: a check, nothing was forwarded.
    pub forward_auth: bool,
}

impl AccessRecord {
    /// Formats the line, newline included.
    pub fn format(&self, format: LogFormat) -> String {
        let time =
            humantime::format_rfc3339_millis(self.time.unwrap_or_else(SystemTime::now)).to_string();
        match format {
            LogFormat::Json => {
                let mut object = serde_json::Map::with_capacity(16);
                let mut put = |key: &str, value: serde_json::Value| {
                    object.insert(key.to_owned(), value);
                };
                put("time", time.into());
                put("request_id", self.request_id.as_str().into());
                put("method", self.method.as_str().into());
                put("path", self.path.as_str().into());
                put(
                    "route",
                    self.route
                        .as_deref()
                        .map_or(serde_json::Value::Null, Into::into),
                );
                put("status", self.status.into());
                put("duration_ms", round3(self.duration_ms).into());
                put(
                    "upstream_ms",
                    self.upstream_ms
                        .map_or(serde_json::Value::Null, |ms| round3(ms).into()),
                );
                put(
                    "auth_method",
                    self.auth_method.map_or(serde_json::Value::Null, Into::into),
                );
                put(
                    "key_id",
                    self.key_id
                        .as_deref()
                        .map_or(serde_json::Value::Null, Into::into),
                );
                put(
                    "subject",
                    self.subject
                        .as_deref()
                        .map_or(serde_json::Value::Null, Into::into),
                );
                put(
                    "tenant_id",
                    self.tenant_id
                        .as_deref()
                        .map_or(serde_json::Value::Null, Into::into),
                );
                put("client_ip", self.client_ip.as_str().into());
                put("bytes_in", self.bytes_in.into());
                put("bytes_out", self.bytes_out.into());
                if let Some(reason) = self.reason {
                    put("reason", reason.into());
                }
                if let Some(auth_error) = &self.auth_error {
                    put("auth_error", auth_error.as_str().into());
                }
                if self.forward_auth {
                    put("forward_auth", true.into());
                }
                let mut line = serde_json::Value::Object(object).to_string();
                line.push('\n');
                line
            }
            LogFormat::Pretty => {
                let mut line = String::with_capacity(160);
                let _ = write!(
                    line,
                    "{time} {} {} {} {} route={} {:.1}ms in={} out={} client={}",
                    self.request_id,
                    self.method,
                    self.path,
                    self.status,
                    self.route.as_deref().unwrap_or("-"),
                    self.duration_ms,
                    self.bytes_in,
                    self.bytes_out,
                    self.client_ip
                );
                if let Some(method) = self.auth_method {
                    let _ = write!(line, " auth={method}");
                }
                if let Some(tenant) = &self.tenant_id {
                    let _ = write!(line, " tenant={tenant}");
                }
                if let Some(reason) = self.reason {
                    let _ = write!(line, " reason={reason}");
                }
                // Quoted and escaped: the detail may quote claim values.
                if let Some(auth_error) = &self.auth_error {
                    let _ = write!(line, " auth_error={auth_error:?}");
                }
                if self.forward_auth {
                    line.push_str(" forward_auth");
                }
                line.push('\n');
                line
            }
        }
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
