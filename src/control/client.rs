//! The CLI's side of the control socket: connect, call a method, get its
//! JSON answer or the server's error. It never retries a call (a change
//! may have been applied) and never parses pool data.
//!
//! Every call carries a request id (`req` on the wire) so the mount logs
//! its work for the call under the caller's id: the one given with
//! [`Client::set_request_id`], else the process's ([`set_request_id`]: a
//! `dfs` command sets its own once), else none (the server makes one).

use super::protocol::{parse_response, Request, WireError};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{path}: cannot connect to the mount's control socket: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: bad answer from the mount: {error}")]
    Protocol { path: PathBuf, error: WireError },
    /// The mount answered with an error.
    #[error("{0}")]
    Remote(WireError),
}

/// The request id calls of this process carry unless a client is given
/// its own.
static PROCESS_REQ: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Make `id` the request id of every call this process makes (once; later
/// calls are ignored). Not a valid id (`protocol::valid_req_id`): ignored.
pub fn set_request_id(id: &str) {
    if super::protocol::valid_req_id(id) {
        let _ = PROCESS_REQ.set(id.to_string());
    }
}

/// A connection to a mount.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    req: Option<String>,
}

impl Client {
    /// Connect to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.into(), source })?;
        let w = s.try_clone().map_err(|source| ClientError::Io { path: path.into(), source })?;
        Ok(Client {
            path: path.into(),
            reader: BufReader::new(s),
            writer: w,
            next_id: 1,
            req: PROCESS_REQ.get().cloned(),
        })
    }

    /// Send `id` as the request id of this client's calls (an invalid one
    /// is not sent: the server makes its own).
    pub fn set_request_id(&mut self, id: &str) {
        self.req = super::protocol::valid_req_id(id).then(|| id.to_string());
    }

    /// Give up a call after `timeout` without an answer (None: wait).
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) -> Result<(), ClientError> {
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        self.writer.set_read_timeout(timeout).map_err(io)?;
        self.writer.set_write_timeout(timeout).map_err(io)
    }

    /// Call `method` with `params` and wait for its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        tracing::debug!(method, req = self.req.as_deref(), socket = %self.path.display(), "control call");
        let line = Request { id, method: method.into(), params, req: self.req.clone() }.encode();
        writeln!(self.writer, "{line}").map_err(io)?;
        let mut answer = String::new();
        let n =
            self.reader.read_line(&mut answer).map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
        if n == 0 {
            return Err(ClientError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the mount closed the connection"),
            });
        }
        let r = parse_response(answer.trim_end())
            .map_err(|error| ClientError::Protocol { path: self.path.clone(), error })?;
        // A denial comes with id 0, before any request was read.
        if r.id != id && r.id != 0 {
            return Err(ClientError::Protocol {
                path: self.path.clone(),
                error: WireError::new(super::ErrorKind::BadRequest, format!("answer to request {} for {id}", r.id)),
            });
        }
        r.result.map_err(ClientError::Remote)
    }
}
