//! A tiny HTTP/1.1 server on 127.0.0.1 that answers as a test tells it to: for
//! clients facing servers that misbehave (answer errors, list forever, never answer),
//! which a real server does only when broken or hostile; or that stands in front of a
//! real server and answers some requests itself (a bucket that refuses writes).
//!
//! It runs on a thread of its own with its own tokio runtime, so it serves a client in
//! the test's runtime, a blocking client, or another process (the `taskcache` binary)
//! alike. Connections are kept alive; each request is answered by the test's function,
//! or not at all (`None`: the connection stays open and silent until the server is
//! dropped).
//!
//! ```
//! use cache_testkit::loopback::{LoopbackHttp, Reply};
//! let server = LoopbackHttp::start(|_| Some(Reply::new(503, "<Error><Code>SlowDown</Code></Error>")));
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request head read (request line and headers); a longer one closes the
/// connection.
const MAX_HEAD: usize = 64 << 10;

/// One request, as the answering function sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target: path and query, as sent (percent-encoded).
    pub target: String,
    /// How many requests the server had answered before this one (0 for the first).
    pub seq: u64,
}

impl Request {
    /// The value of query parameter `name` as sent (not decoded), if present.
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// An answer: a status code and a body (XML, as object stores answer).
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    /// `status` with `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            body: body.into(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            403 => "Forbidden",
            404 => "Not Found",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
            self.status,
            self.body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

type Answer = dyn Fn(&Request) -> Option<Reply> + Send + Sync;

/// The server; dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct LoopbackHttp {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackHttp {
    /// Starts a server answering every request with `answer` (`None`: never answer).
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, or the thread or runtime cannot start.
    pub fn start(answer: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) -> Self {
        Self::serving(answer, None)
    }

    /// Starts a server in front of the HTTP server at `upstream` (`http://127.0.0.1:PORT`):
    /// requests `answer` answers (`Some`) get that answer, the others are passed to
    /// `upstream` as they are and its answer passed back (one upstream connection per
    /// request, closed after it). For a real server seen through a policy it does not
    /// have: a bucket that refuses this client's writes ([`LoopbackHttp::refusing_writes`]).
    ///
    /// # Panics
    ///
    /// As [`LoopbackHttp::start`]; or if `upstream` is not `http://HOST:PORT`.
    pub fn forwarding(
        upstream: &str,
        answer: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static,
    ) -> Self {
        let host = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .trim_end_matches('/');
        assert!(
            !host.contains('/'),
            "the upstream is a host and port: {upstream}"
        );
        Self::serving(answer, Some(host.to_owned()))
    }

    /// The S3 server at `upstream`, as a client whose credentials may read and not
    /// write sees it: `GET` and `HEAD` are forwarded, every other request is answered
    /// `403 AccessDenied`.
    pub fn refusing_writes(upstream: &str) -> Self {
        Self::forwarding(upstream, |r| {
            (!matches!(r.method.as_str(), "GET" | "HEAD")).then(|| {
                Reply::new(
                    403,
                    "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
                )
            })
        })
    }

    fn serving(
        answer: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static,
        upstream: Option<String>,
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let addr = listener.local_addr().expect("the bound address");
        let requests = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let answer: Arc<Answer> = Arc::new(answer);
        let counter = Arc::clone(&requests);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the loopback server");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve(
                            stream,
                            Arc::clone(&answer),
                            Arc::clone(&counter),
                            upstream.clone(),
                        ));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every connection task, silent ones included.
        });
        LoopbackHttp {
            addr,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A server that accepts connections and never answers.
    pub fn silent() -> Self {
        Self::start(|_| None)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// An S3 server whose ListObjectsV2 never ends: every page holds one object and
    /// says more follow, with a fresh continuation token.
    pub fn endless_s3_listing() -> Self {
        Self::start(|r| {
            let token = format!("token-{}", r.seq + 1);
            Some(s3_list_page(&format!("object-{}", r.seq), Some(&token)))
        })
    }

    /// An S3 server whose ListObjectsV2 always answers the same continuation token.
    pub fn s3_listing_repeating_its_token() -> Self {
        Self::start(|r| Some(s3_list_page(&format!("object-{}", r.seq), Some("same"))))
    }
}

impl Drop for LoopbackHttp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A ListObjectsV2 page holding one 1-byte object `key`; `next` says more follow.
pub fn s3_list_page(key: &str, next: Option<&str>) -> Reply {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    let _ = write!(
        body,
        "<Name>bucket</Name><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>\
         <Contents><Key>{key}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>\
         <ETag>\"0\"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>\
         <IsTruncated>{}</IsTruncated>",
        next.is_some()
    );
    if let Some(token) = next {
        let _ = write!(
            body,
            "<NextContinuationToken>{token}</NextContinuationToken>"
        );
    }
    body.push_str("</ListBucketResult>");
    Reply::new(200, body)
}

/// Serves one connection: requests in turn, until the client closes it, sends what
/// this server does not read (a chunked body, an oversized head), one goes unanswered
/// (then it stays open, silent), or one is forwarded to `upstream` (then it is closed
/// after the answer).
async fn serve(
    mut stream: tokio::net::TcpStream,
    answer: Arc<Answer>,
    counter: Arc<AtomicU64>,
    upstream: Option<String>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let mut parts = lines.next().unwrap_or_default().split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut length = 0usize;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return;
            }
        }
        // The body is read (and dropped unless forwarded).
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let seq = counter.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            method,
            target,
            seq,
        };
        if let Some(reply) = answer(&request) {
            if stream.write_all(&reply.encode()).await.is_err() {
                return;
            }
        } else if let Some(host) = &upstream {
            let _ = forward(&mut stream, host, &head, &body).await;
            return;
        } else {
            // Silent: hold the connection until the server stops.
            std::future::pending::<()>().await;
        }
    }
}

/// Passes one request (`head` with its blank line, `body`) to `host` on a connection
/// of its own, and its answer back, both marked `Connection: close`. The answer's body
/// is as long as its `Content-Length` says (none for `HEAD`), else up to the upstream
/// closing.
async fn forward(
    client: &mut tokio::net::TcpStream,
    host: &str,
    head: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut up = tokio::net::TcpStream::connect(host).await?;
    up.write_all(closing(head).as_bytes()).await?;
    up.write_all(body).await?;
    let mut answer = Vec::new();
    let Some(end) = read_head(&mut up, &mut answer).await else {
        return Ok(());
    };
    let answer_head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let length = answer_head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let length = if head.starts_with("HEAD ") {
        Some(0)
    } else {
        length
    };
    let mut rest = answer.split_off(end);
    match length {
        Some(n) => {
            while rest.len() < n {
                let mut chunk = [0u8; 8192];
                match up.read(&mut chunk).await? {
                    0 => break,
                    got => rest.extend_from_slice(&chunk[..got]),
                }
            }
            rest.truncate(n);
        }
        None => {
            up.read_to_end(&mut rest).await?;
        }
    }
    client.write_all(closing(&answer_head).as_bytes()).await?;
    client.write_all(&rest).await
}

/// `head` (ending in its blank line) with any `Connection` header replaced by
/// `Connection: close`.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        let named = line.split_once(':').map(|(n, _)| n.trim());
        if !named.is_some_and(|n| n.eq_ignore_ascii_case("connection")) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// Reads until `buf` holds a whole request head; its length (with the blank line).
async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(server: &LoopbackHttp, target: &str) -> String {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // One answer: the head, then Content-Length bytes.
        loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return text;
                }
            }
        }
    }

    #[test]
    fn an_endless_listing_answers_fresh_tokens_and_counts_requests() {
        let server = LoopbackHttp::endless_s3_listing();
        let first = get(&server, "/bucket?list-type=2&prefix=ci%2F");
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
        assert!(first.contains("<NextContinuationToken>token-1<"), "{first}");
        let second = get(&server, "/bucket?list-type=2&continuation-token=token-1");
        assert!(
            second.contains("<NextContinuationToken>token-2<"),
            "{second}"
        );
        assert_eq!(server.requests(), 2);
    }

    #[test]
    fn a_write_refusing_front_forwards_reads_and_refuses_writes() {
        let upstream = LoopbackHttp::start(|r| Some(Reply::new(200, format!("up {}", r.method))));
        let front = LoopbackHttp::refusing_writes(&upstream.url());
        let read = get(&front, "/bucket/key");
        assert!(read.starts_with("HTTP/1.1 200 OK"), "{read}");
        assert!(
            read.ends_with("up GET") && read.contains("Connection: close"),
            "{read}"
        );
        let mut s = std::net::TcpStream::connect(front.addr).unwrap();
        write!(
            s,
            "PUT /bucket/key HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
        )
        .unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut got = [0u8; 64];
        let n = s.read(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("HTTP/1.1 403 Forbidden"), "{text}");
        assert_eq!(upstream.requests(), 1, "the write never reached upstream");
    }

    #[test]
    fn queries_are_read_as_sent() {
        let r = Request {
            method: "GET".into(),
            target: "/b?list-type=2&continuation-token=a%2Fb&flag".into(),
            seq: 0,
        };
        assert_eq!(r.query("continuation-token"), Some("a%2Fb"));
        assert_eq!(r.query("flag"), Some(""));
        assert_eq!(r.query("prefix"), None);
    }
}
