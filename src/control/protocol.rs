//! The wire format of the control socket: versioned JSON lines.
//!
//! One request per line, one response line per request, in order:
//!
//! ```text
//! → {"v":1,"id":7,"method":"list-disks","params":{}}
//! ← {"v":1,"id":7,"ok":[...]}
//! ← {"v":1,"id":7,"error":{"kind":"unknown-method","message":"no method \"frob\""}}
//! ```
//!
//! `v` must be [`VERSION`]; `id` is echoed back (0 when the request was too
//! broken to have one); `params` may be omitted (= `{}`). `req` is optional:
//! the caller's request id (1 to [`MAX_REQ_ID`] characters of
//! `[A-Za-z0-9._:-]`), which the server logs its work for the request
//! under; without it (older clients) the server makes one. A line longer than
//! [`MAX_LINE`] bytes is refused. This module owns parsing and encoding
//! only: it never does IO and never panics on garbage.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Protocol version spoken by this build.
pub const VERSION: u64 = 1;
/// Longest request or response line (bytes, without the newline).
pub const MAX_LINE: usize = 16 << 20;

/// Longest request id (`req`).
pub const MAX_REQ_ID: usize = 64;

/// Error kinds, stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Not JSON, not an object, a field missing or of the wrong type.
    BadRequest,
    /// `v` is not a version this server speaks.
    Version,
    /// No such method.
    UnknownMethod,
    /// The method's parameters are wrong.
    Params,
    /// The caller is not allowed (peer credentials).
    Denied,
    /// The operation was refused or failed in the engine.
    Failed,
}

impl ErrorKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Version => "version",
            ErrorKind::UnknownMethod => "unknown-method",
            ErrorKind::Params => "params",
            ErrorKind::Denied => "denied",
            ErrorKind::Failed => "failed",
        }
    }
}

/// An error as it travels: a kind and one human line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> WireError {
        WireError { kind, message: message.into() }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub method: String,
    pub params: Value,
    /// The caller's request id, for the logs (optional on the wire).
    pub req: Option<String>,
}

impl Request {
    /// The request as one line (no newline).
    pub fn encode(&self) -> String {
        let mut v = serde_json::json!({"v": VERSION, "id": self.id, "method": self.method, "params": self.params});
        if let Some(req) = &self.req {
            v["req"] = req.clone().into();
        }
        v.to_string()
    }
}

/// Is `s` a request id the server accepts (see the module doc)?
pub fn valid_req_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REQ_ID
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A parsed response: `Ok(result)` or the error.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: u64,
    pub result: Result<Value, WireError>,
}

impl Response {
    /// The response as one line (no newline).
    pub fn encode(&self) -> String {
        let mut o = Map::new();
        o.insert("v".into(), VERSION.into());
        o.insert("id".into(), self.id.into());
        match &self.result {
            Ok(v) => o.insert("ok".into(), v.clone()),
            Err(e) => o.insert("error".into(), serde_json::to_value(e).unwrap_or(Value::Null)),
        };
        Value::Object(o).to_string()
    }
}

fn object(line: &str) -> Result<Map<String, Value>, WireError> {
    if line.len() > MAX_LINE {
        return Err(WireError::new(ErrorKind::BadRequest, format!("line longer than {MAX_LINE} bytes")));
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(WireError::new(ErrorKind::BadRequest, "not a JSON object")),
        Err(e) => Err(WireError::new(ErrorKind::BadRequest, format!("not JSON: {e}"))),
    }
}

fn version(o: &Map<String, Value>) -> Result<(), WireError> {
    match o.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => Ok(()),
        Some(v) => {
            Err(WireError::new(ErrorKind::Version, format!("protocol version {v} not supported (this is {VERSION})")))
        }
        None => Err(WireError::new(ErrorKind::BadRequest, "no \"v\" (protocol version)")),
    }
}

/// Parse one request line. On error, the id (when one could be read) to
/// answer with, and why.
pub fn parse_request(line: &str) -> Result<Request, (u64, WireError)> {
    let o = object(line).map_err(|e| (0, e))?;
    let id = match o.get("id") {
        Some(v) => v.as_u64().ok_or((0, WireError::new(ErrorKind::BadRequest, "\"id\" is not an unsigned integer")))?,
        None => return Err((0, WireError::new(ErrorKind::BadRequest, "no \"id\""))),
    };
    version(&o).map_err(|e| (id, e))?;
    let method = match o.get("method") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err((id, WireError::new(ErrorKind::BadRequest, "\"method\" is not a non-empty string"))),
    };
    let params = match o.get("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err((id, WireError::new(ErrorKind::BadRequest, "\"params\" is not an object"))),
    };
    let req = match o.get("req") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_req_id(s) => Some(s.clone()),
        Some(_) => {
            let why = format!("\"req\" must be 1 to {MAX_REQ_ID} characters of A-Z a-z 0-9 . _ : -");
            return Err((id, WireError::new(ErrorKind::BadRequest, why)));
        }
    };
    Ok(Request { id, method, params, req })
}

/// Parse one response line (the client's side).
pub fn parse_response(line: &str) -> Result<Response, WireError> {
    let o = object(line)?;
    version(&o)?;
    let id = o
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| WireError::new(ErrorKind::BadRequest, "response without a numeric \"id\""))?;
    match (o.get("ok"), o.get("error")) {
        (Some(v), None) => Ok(Response { id, result: Ok(v.clone()) }),
        (None, Some(e)) => {
            let e: WireError = serde_json::from_value(e.clone())
                .map_err(|x| WireError::new(ErrorKind::BadRequest, format!("malformed \"error\": {x}")))?;
            Ok(Response { id, result: Err(e) })
        }
        _ => Err(WireError::new(ErrorKind::BadRequest, "response needs exactly one of \"ok\" and \"error\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good_request_round_trips() {
        let r = Request { id: 9, method: "list-disks".into(), params: serde_json::json!({"a": 1}), req: None };
        assert_eq!(parse_request(&r.encode()).unwrap(), r);
        assert!(!r.encode().contains("req"), "no id, no field: what older clients send");
        let r = Request { req: Some("00ff3a9c1b2d4e5f".into()), ..r };
        assert_eq!(parse_request(&r.encode()).unwrap(), r);
        let r = parse_request(r#"{"v":1,"id":3,"method":"x"}"#).unwrap();
        assert_eq!((r.params, r.req), (serde_json::json!({}), None));
    }

    #[test]
    fn bad_requests_are_refused_with_a_kind() {
        let kind = |l: &str| parse_request(l).unwrap_err().1.kind;
        assert_eq!(kind("garbage"), ErrorKind::BadRequest);
        assert_eq!(kind("[1,2]"), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"v":1,"method":"x"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"v":2,"id":1,"method":"x"}"#), ErrorKind::Version);
        assert_eq!(parse_request(r#"{"v":2,"id":5,"method":"x"}"#).unwrap_err().0, 5);
        assert_eq!(kind(r#"{"id":1,"method":"x"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"v":1,"id":1,"method":""}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"v":1,"id":-1,"method":"x"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"v":1,"id":1,"method":"x","params":[]}"#), ErrorKind::BadRequest);
        for bad in [r#""""#, "7", r#""a b""#, r#""line\nbreak""#, &format!("{:?}", "x".repeat(MAX_REQ_ID + 1))] {
            let line = format!(r#"{{"v":1,"id":4,"method":"x","req":{bad}}}"#);
            assert_eq!(
                parse_request(&line).unwrap_err(),
                (
                    4,
                    WireError::new(
                        ErrorKind::BadRequest,
                        format!("\"req\" must be 1 to {MAX_REQ_ID} characters of A-Z a-z 0-9 . _ : -")
                    )
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response { id: 1, result: Ok(serde_json::json!([1, "a"])) },
            Response { id: 2, result: Err(WireError::new(ErrorKind::Denied, "no")) },
        ] {
            assert_eq!(parse_response(&r.encode()).unwrap(), r);
        }
        assert!(parse_response(r#"{"v":1,"id":1}"#).is_err());
        assert!(parse_response(r#"{"v":1,"id":1,"ok":1,"error":{}}"#).is_err());
        assert!(parse_response(r#"{"v":1,"id":1,"error":{"kind":"nope","message":"x"}}"#).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in ".{0,200}") {
            let _ = parse_request(&s);
            let _ = parse_response(&s);
        }

        #[test]
        fn json_shaped_garbage_never_panics(
            v in proptest::option::of(any::<i64>()),
            id in proptest::option::of(any::<i64>()),
            method in proptest::option::of("[a-z-]{0,12}"),
            extra in "[ -~]{0,20}",
        ) {
            let mut o = Map::new();
            if let Some(v) = v { o.insert("v".into(), v.into()); }
            if let Some(id) = id { o.insert("id".into(), id.into()); }
            if let Some(m) = &method { o.insert("method".into(), m.clone().into()); }
            o.insert("params".into(), serde_json::json!({"x": extra}));
            let line = Value::Object(o).to_string();
            match parse_request(&line) {
                Ok(r) => {
                    prop_assert_eq!(v, Some(1));
                    prop_assert_eq!(Some(r.id as i64), id);
                    prop_assert_eq!(Some(r.method), method);
                }
                Err((_, e)) => prop_assert!(!e.message.is_empty()),
            }
            // Truncations of a valid line are errors, never panics.
            for cut in 0..line.len() {
                if line.is_char_boundary(cut) {
                    prop_assert!(parse_request(&line[..cut]).is_err());
                }
            }
        }
    }
}
