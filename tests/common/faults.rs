//! moto never throttles, fails or hangs, and its KMS ignores key state;
//! AWS does not. A proxy in front of moto passes every request through
//! unless a fault was injected for its API (the EC2 query's `Action`, or
//! the JSON protocol's `X-Amz-Target`), which then gets what AWS would
//! answer: 503 `RequestLimitExceeded`, 500 `InternalError`, 403
//! `UnauthorizedOperation`, a service's own error code, or no answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    ServerError,
    Forbidden,
    /// No answer for 30 s: the caller times out.
    Hang,
    /// An error of the service's own, with its HTTP status (KMS's
    /// `DisabledException`, `AccessDeniedException`, ...).
    Code(u16, &'static str),
}

/// Every request's API, with the fault it got if any.
type Seen = Arc<Mutex<Vec<(String, Option<Fault>)>>>;

/// A running proxy; its thread ends with the test process.
pub struct FaultProxy {
    pub url: String,
    /// Faults still to inject: (API, fault), each once, in order.
    plan: Arc<Mutex<Vec<(String, Fault)>>>,
    /// Every request's API, with the fault it got if any.
    pub seen: Seen,
    /// Faults every request to an API gets, until cleared.
    always: Always,
}

type Always = Arc<Mutex<std::collections::HashMap<String, Fault>>>;

impl FaultProxy {
    /// A proxy on 127.0.0.1 in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        Self::start_at("127.0.0.1:0", upstream)
    }

    /// A proxy listening on `bind` (in the calling thread's network
    /// namespace: its thread is born there) in front of `upstream`.
    pub fn start_at(bind: &str, upstream: SocketAddr) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind(bind).expect("binding the proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", std_listener.local_addr().expect("its address"));
        let plan: Arc<Mutex<Vec<(String, Fault)>>> = Arc::default();
        let seen: Seen = Arc::default();
        let always: Always = Arc::default();
        let (p, s, a) = (plan.clone(), seen.clone(), always.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a listener");
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(serve(conn, upstream, p.clone(), s.clone(), a.clone()));
                }
            });
        });
        FaultProxy {
            url,
            plan,
            seen,
            always,
        }
    }

    /// Every request to `api` gets `fault` from now on (`None`: none).
    pub fn always(&self, api: &str, fault: Option<Fault>) {
        let mut always = self.always.lock().unwrap();
        match fault {
            Some(f) => always.insert(api.to_string(), f),
            None => always.remove(api),
        };
    }

    /// The next request to `api` gets `fault` (faults queue in order).
    pub fn inject(&self, api: &str, fault: Fault) {
        self.plan.lock().unwrap().push((api.to_string(), fault));
    }

    /// How many requests to `api` got `fault`.
    pub fn injected(&self, api: &str, fault: Fault) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, f)| a == api && *f == Some(fault))
            .count()
    }

    /// How many requests to `api` were made in all.
    pub fn calls(&self, api: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == api)
            .count()
    }
}

/// One client connection: requests in turn (HTTP/1.1 keep-alive), each
/// answered by a fault or by moto over a connection of its own.
async fn serve(
    mut conn: TcpStream,
    upstream: SocketAddr,
    plan: Arc<Mutex<Vec<(String, Fault)>>>,
    seen: Seen,
    always: Always,
) {
    let mut buf = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut conn, &mut buf).await else {
            return;
        };
        // The JSON protocol (KMS) names its operation in a header.
        let json =
            header(&head, "X-Amz-Target").map(|t| t.rsplit('.').next().unwrap_or(t).to_string());
        // Route 53's REST protocol names it by method and path.
        let rest = rest_api(&head);
        let api = json
            .clone()
            .or(rest.map(str::to_string))
            .or_else(|| form_value(&body, "Action"))
            .unwrap_or_default();
        let fault = {
            let mut plan = plan.lock().unwrap();
            let at = plan.iter().position(|(a, _)| *a == api);
            at.map(|i| plan.remove(i).1)
        }
        .or_else(|| always.lock().unwrap().get(&api).copied());
        seen.lock().unwrap().push((api.clone(), fault));
        // The query protocol: EC2's own error document, or the one Auto
        // Scaling, IAM and STS answer with.
        let ec2 = form_value(&body, "Version").is_none_or(|v| v == "2016-11-15");
        let error_reply = |status, code, message| error_reply(ec2, status, code, message);
        let reply = match fault {
            Some(Fault::Hang) => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            Some(Fault::Throttle) if rest.is_some() => rest_error(400, "Throttling"),
            Some(Fault::Throttle) => {
                error_reply(503, "RequestLimitExceeded", "Request limit exceeded.")
            }
            Some(Fault::ServerError) => {
                error_reply(500, "InternalError", "An internal error has occurred.")
            }
            Some(Fault::Forbidden) => error_reply(
                403,
                if ec2 {
                    "UnauthorizedOperation"
                } else {
                    "AccessDenied"
                },
                "You are not authorized to perform this operation.",
            ),
            Some(Fault::Code(status, code)) if json.is_some() => json_error(status, code),
            Some(Fault::Code(status, code)) if rest.is_some() => rest_error(status, code),
            Some(Fault::Code(status, code)) => error_reply(status, code, "injected"),
            None => match forward(upstream, &head, &body).await {
                Some(r) => r,
                None => return,
            },
        };
        if conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and Content-Length body) from `conn`.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 16384];
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 16384];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends the request to moto on a fresh connection it closes after the
/// answer, and returns the answer whole.
async fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).await.ok()?;
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let mut req = lines.join("\r\n").into_bytes();
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body);
    up.write_all(&req).await.ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await.ok()?;
    // The client keeps its connection to us: say how long the body is
    // and that the connection stays.
    let end = find(&resp, b"\r\n\r\n")?;
    let rhead = String::from_utf8_lossy(&resp[..end]).to_string();
    let rbody = resp[end + 4..].to_vec();
    let mut out: Vec<String> = rhead
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("connection:")
                && !l.starts_with("content-length:")
                && !l.starts_with("transfer-encoding:")
        })
        .map(str::to_string)
        .collect();
    out.push(format!("Content-Length: {}", rbody.len()));
    let mut bytes = out.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes.extend_from_slice(&rbody);
    Some(bytes)
}

fn error_reply(ec2: bool, status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = if ec2 {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>00000000-fault-injected</RequestID></Response>"
        )
    } else {
        format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>00000000-fault-injected</RequestId></ErrorResponse>"
        )
    };
    let reason = match status {
        403 => "Forbidden",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Route 53's operations by method and path.
fn rest_api(head: &str) -> Option<&'static str> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, path) = (parts.next()?, parts.next()?);
    if !path.starts_with("/2013-04-01/hostedzone/") || !path.contains("/rrset") {
        return None;
    }
    match method {
        "POST" => Some("ChangeResourceRecordSets"),
        "GET" => Some("ListResourceRecordSets"),
        _ => None,
    }
}

/// An error as Route 53's REST XML protocol answers it.
fn rest_error(status: u16, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{code} (injected in front of moto)</Message></Error><RequestId>00000000-fault-injected</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status} Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An error as the JSON protocol (KMS) answers it.
fn json_error(status: u16, code: &str) -> Vec<u8> {
    let body =
        format!("{{\"__type\":\"{code}\",\"message\":\"{code} (injected in front of moto)\"}}");
    format!(
        "HTTP/1.1 {status} Error\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: 00000000-fault-injected\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn form_value(body: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(body).split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}
