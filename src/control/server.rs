//! The control socket listener and the method registry.
//!
//! [`Server::start`] binds the socket (mode 0600; a stale socket file left
//! by a dead daemon is replaced, a live one is refused), accepts on its own
//! thread and serves each connection on another: check the peer's
//! credentials, then read request lines and answer each in order. Dropping
//! the [`Server`] stops accepting and removes the socket file. It never
//! touches a connection it did not accept, and never answers a caller whose
//! uid is not allowed (one `denied` error line, then the connection closes).
//! Each request is served inside a `control` tracing span carrying its
//! request id (`Registry::answer`).

use super::protocol::{parse_request, ErrorKind, Response, WireError, MAX_LINE};
use crate::engine::Pool;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A control method.
pub type Method = Box<dyn Fn(&Pool, Value) -> Result<Value, WireError> + Send + Sync>;

/// Methods by name. See the module doc of `control` for how to add one.
#[derive(Default)]
pub struct Registry {
    methods: HashMap<String, Method>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("methods", &self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Add (or replace) method `name`.
    pub fn register<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&Pool, Value) -> Result<Value, WireError> + Send + Sync + 'static,
    {
        self.methods.insert(name.to_string(), Box::new(f));
    }

    /// Remove method `name` and hand it back (to wrap it).
    pub fn take(&mut self, name: &str) -> Option<Method> {
        self.methods.remove(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.methods.keys().cloned().collect();
        v.sort();
        v
    }

    /// Run `method` on `pool`.
    pub fn call(&self, pool: &Pool, method: &str, params: Value) -> Result<Value, WireError> {
        match self.methods.get(method) {
            Some(f) => f(pool, params),
            None => Err(WireError::new(
                ErrorKind::UnknownMethod,
                format!("no method {method:?} (this mount knows: {})", self.names().join(", ")),
            )),
        }
    }

    /// Answer one request line, inside a `control` span carrying the
    /// request id (the caller's `req`, or a new one), so every line logged
    /// while serving it, the engine's included, carries the id.
    pub fn answer(&self, pool: &Pool, line: &str) -> Response {
        match parse_request(line) {
            Ok(r) => {
                let req = r.req.unwrap_or_else(crate::metrics::new_request_id);
                let span = tracing::info_span!(target: crate::logging::REQUEST_TARGET, "control", req = %req, method = %r.method);
                let _e = span.enter();
                let result = self.call(pool, &r.method, r.params);
                match &result {
                    Ok(_) => tracing::debug!("control request done"),
                    Err(e) => tracing::info!(kind = e.kind.as_str(), "control request failed: {e}"),
                }
                Response { id: r.id, result }
            }
            Err((id, e)) => {
                tracing::info!(id, "control request refused: {e}");
                Response { id, result: Err(e) }
            }
        }
    }
}

/// The uid of the process at the other end of `stream` (`SO_PEERCRED`).
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// May a caller with `uid` use the socket? Root may; so may the uid the
/// daemon runs as (`own_uid`, root for a real mount).
pub fn check_peer(uid: u32, own_uid: u32) -> Result<(), WireError> {
    if uid == 0 || uid == own_uid {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorKind::Denied,
            format!("permission denied: the control socket is for root only (caller uid {uid})"),
        ))
    }
}

/// A running control socket. Dropping it stops accepting and removes the socket.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Bind `path` and serve `registry` over `pool`.
    pub fn start(pool: Arc<Pool>, registry: Arc<Registry>, path: &Path) -> std::io::Result<Server> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{}: another process serves this pool", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // Bind with a umask that leaves no window where others may connect.
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        // SAFETY: geteuid has no preconditions.
        let own_uid = unsafe { libc::geteuid() };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new().name("dfs-control".into()).spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (pool, registry) = (pool.clone(), registry.clone());
                let _ = std::thread::Builder::new()
                    .name("dfs-control-conn".into())
                    .spawn(move || serve_connection(&pool, &registry, stream, own_uid));
            }
        })?;
        Ok(Server { path: path.to_path_buf(), stop, thread: Some(thread) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_connection(pool: &Pool, registry: &Registry, stream: UnixStream, own_uid: u32) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let allowed = peer_uid(&stream)
        .map_err(|e| WireError::new(ErrorKind::Denied, format!("peer credentials unavailable: {e}")))
        .and_then(|uid| check_peer(uid, own_uid));
    if let Err(e) = allowed {
        tracing::warn!("control socket: {e}");
        let _ = writeln!(out, "{}", Response { id: 0, result: Err(e) }.encode());
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let resp = if line.len() > MAX_LINE {
            Response { id: 0, result: Err(WireError::new(ErrorKind::BadRequest, "request line too long")) }
        } else {
            registry.answer(pool, text)
        };
        if writeln!(out, "{}", resp.encode()).is_err() {
            return;
        }
        if line.len() > MAX_LINE {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_the_owner_pass() {
        assert!(check_peer(0, 0).is_ok());
        assert!(check_peer(1000, 1000).is_ok());
        let e = check_peer(1000, 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(e.message.contains("root only") && e.message.contains("1000"), "{e}");
    }

    #[test]
    fn peer_uid_of_a_socketpair_is_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(peer_uid(&a).unwrap(), unsafe { libc::geteuid() });
    }
}
