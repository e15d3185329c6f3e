//! The control socket end to end, in-process (no FUSE): a pool served on a
//! socket in a temp dir answers the admin methods; bad requests (garbage,
//! wrong version, unknown method, bad params, unknown member, nonsense
//! policy, unsatisfiable policy) each get one error line with a kind and
//! change nothing; a caller with another uid (this test binary re-run as
//! `nobody`) is refused by the SO_PEERCRED check.

use dynamicfs::control::protocol::{parse_response, ErrorKind};
use dynamicfs::control::{methods, Client, ClientError, Registry, Server};
use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::admin::MemberInfo;
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

fn serve(dir: &Path) -> (Arc<Pool>, Server) {
    let devs: Vec<Arc<MemDevice>> = (0..3).map(|_| Arc::new(MemDevice::new(64 << 20, 4096))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "ctl", "replication:2".parse().unwrap()).unwrap();
    let ds: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    let pool = Arc::new(Pool::open(ds, PoolOptions { no_lock: true, ..Default::default() }).unwrap());
    let (ino, _) = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
    // 12 extents: each member holds some (with 3 a member got none about
    // one run in nine, and the listing check below failed).
    pool.write(ino, 0, &vec![7u8; 12 << 20]).unwrap();
    pool.sync_all().unwrap();
    let mut r = Registry::new();
    methods::register_admin(&mut r);
    let server = Server::start(pool.clone(), Arc::new(r), &dir.join("pool.sock")).unwrap();
    (pool, server)
}

fn remote_kind(r: Result<Value, ClientError>) -> (ErrorKind, String) {
    match r {
        Err(ClientError::Remote(e)) => (e.kind, e.message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn methods_answer_and_bad_requests_get_one_error_each() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, server) = serve(dir.path());
    let meta = std::fs::metadata(server.path()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    let mut c = Client::connect(server.path()).unwrap();
    let ping = c.call("ping", json!({})).unwrap();
    assert_eq!(ping["pool"], pool.uuid().to_string());
    let disks: Vec<MemberInfo> = serde_json::from_value(c.call("list-disks", Value::Null).unwrap()).unwrap();
    assert_eq!(disks.len(), 3);
    assert!(disks.iter().all(|d| d.state == "online" && d.fragments > 0));

    let before = serde_json::to_string(&pool.list_extents()).unwrap();
    let (k, m) = remote_kind(c.call("frobnicate", json!({})));
    assert_eq!(k, ErrorKind::UnknownMethod);
    assert!(m.contains("frobnicate") && m.contains("list-disks"), "{m}");
    assert_eq!(remote_kind(c.call("fail-disk", json!({"index": "x"}))).0, ErrorKind::Params);
    let (k, m) = remote_kind(c.call("fail-disk", json!({"index": 9})));
    assert_eq!(k, ErrorKind::Failed);
    assert!(m.contains("no member 9"), "{m}");
    let (k, m) = remote_kind(c.call("change-policy", json!({"policy": "replication:banana"})));
    assert_eq!(k, ErrorKind::Params);
    assert!(m.contains("banana"), "{m}");
    let (k, m) = remote_kind(c.call("change-policy", json!({"policy": "erasure:4+2"})));
    assert_eq!(k, ErrorKind::Failed);
    assert!(m.contains("cannot be satisfied"), "{m}");
    let (k, m) = remote_kind(c.call("remove-disk", json!({"index": 3})));
    assert_eq!(k, ErrorKind::Failed, "{m}");
    assert!(m.contains("no member 3"), "{m}");
    assert_eq!(serde_json::to_string(&pool.list_extents()).unwrap(), before, "a refused request changed the pool");
    assert!(pool.policy_history().is_empty());
    assert!(pool.list_members().iter().all(|m| m.state == "online"));

    // Raw lines: garbage and a wrong version, then the connection still works.
    let mut s = UnixStream::connect(server.path()).unwrap();
    let mut rd = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    for (req, kind) in [
        ("this is not json", ErrorKind::BadRequest),
        (r#"{"v":2,"id":4,"method":"ping"}"#, ErrorKind::Version),
        (r#"{"v":1,"id":5,"method":"ping","params":7}"#, ErrorKind::BadRequest),
    ] {
        writeln!(s, "{req}").unwrap();
        line.clear();
        rd.read_line(&mut line).unwrap();
        let r = parse_response(line.trim_end()).unwrap();
        assert_eq!(r.result.unwrap_err().kind, kind, "{req}");
    }
    writeln!(s, r#"{{"v":1,"id":6,"method":"ping"}}"#).unwrap();
    line.clear();
    rd.read_line(&mut line).unwrap();
    let r = parse_response(line.trim_end()).unwrap();
    assert_eq!(r.id, 6);
    assert!(r.result.is_ok());

    // A change through the socket: fail a member, then rebuild its extents.
    c.call("fail-disk", json!({"index": 2})).unwrap();
    assert_eq!(pool.list_members()[2].state, "failed");
    let io = c.call("rebuild", json!({})).unwrap();
    assert!(io["fragments"].as_u64().unwrap() > 0, "{io}");
    assert!(pool.degraded_extents().is_empty());
    assert_eq!(pool.read(2, 0, 12 << 20).unwrap(), vec![7u8; 12 << 20]);
    drop(c);
    let path = server.path().to_path_buf();
    drop(server);
    assert!(!path.exists(), "socket left behind");
}

/// Run as `nobody` by the test below: connect, ask, print the answer line.
#[test]
fn child_connect_as_other_user() {
    let Ok(sock) = std::env::var("DFS_TEST_CHILD_SOCKET") else { return };
    let mut s = UnixStream::connect(sock).unwrap();
    // The server may already have answered (denied) and closed: ignore EPIPE.
    let _ = writeln!(s, r#"{{"v":1,"id":1,"method":"list-disks"}}"#);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    println!("ANSWER {}", line.trim_end());
}

#[test]
fn a_non_root_caller_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a child as another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (pool, server) = serve(dir.path());
    // Let `nobody` reach the socket file, so that only SO_PEERCRED stops it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(server.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_connect_as_other_user", "--nocapture", "--test-threads=1"])
        .env("DFS_TEST_CHILD_SOCKET", server.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = stdout
        .lines()
        .find_map(|l| l.split_once("ANSWER ").map(|(_, a)| a.to_string()))
        .unwrap_or_else(|| panic!("child said nothing: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    let r = parse_response(&answer).unwrap();
    let e = r.result.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Denied);
    assert!(e.message.contains("root only") && e.message.contains("65534"), "{e}");
    assert!(pool.list_members().iter().all(|m| m.state == "online"));
}

use std::os::unix::process::CommandExt as _;
