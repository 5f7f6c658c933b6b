//! A hostile HTTP/1.1 server on loopback: answers every request with what a test's
//! handler says, records every request it got (method, path, headers), and can
//! stream an endless body while counting the bytes the client took.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// What the server answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of `x`, declared in `Content-Length` when `declared`, else
    /// delimited by closing the connection.
    Stream {
        len: u64,
        declared: bool,
    },
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn json(mut self, body: impl Into<String>) -> Self {
        self.headers
            .push(("Content-Type".into(), "application/json".into()));
        self.body = Body::Bytes(body.into().into_bytes());
        self
    }

    pub fn stream(mut self, len: u64, declared: bool) -> Self {
        self.body = Body::Stream { len, declared };
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// The server; its thread lives as long as the test process.
pub struct Hostile {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes of streamed bodies the client accepted (written without error).
    pub streamed: Arc<AtomicU64>,
}

impl Hostile {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let streamed = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (seen2, streamed2) = (seen.clone(), streamed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (handler, seen, streamed) = (handler.clone(), seen2.clone(), streamed2.clone());
                std::thread::spawn(move || serve(stream, &*handler, &seen, &streamed));
            }
        });
        Self {
            port,
            seen,
            streamed,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("requests").clone()
    }

    /// The requests that carried an `Authorization` header.
    pub fn authorized(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.header("authorization").is_some())
            .collect()
    }
}

fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>, streamed: &AtomicU64) {
    // A TLS hello (clients try HTTPS first on loopback): answered as a plain
    // HTTP server answers it, and not recorded as a request.
    let mut first = [0u8; 1];
    if matches!(stream.peek(&mut first), Ok(1) if first[0] == 0x16) {
        let mut out = stream;
        let _ = out.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            // Not HTTP (a TLS hello, say): answer as a plain server would.
            let _ = out.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
            return;
        };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let request = Seen {
            method,
            target,
            headers,
        };
        // Drain the body.
        if let Some(len) = request
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let _ = std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink());
        } else if request
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = u64::from_str_radix(size.trim(), 16).unwrap_or(0);
                let _ = std::io::copy(&mut (&mut reader).take(n + 2), &mut std::io::sink());
                if n == 0 {
                    break;
                }
            }
        }
        seen.lock().expect("requests").push(request.clone());
        let reply = handler(&request);
        let head_only = request.method == "HEAD";
        let mut head = format!("HTTP/1.1 {} Hostile\r\n", reply.status);
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        match reply.body {
            Body::Bytes(bytes) => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if !head_only && out.write_all(&bytes).is_err() {
                    return;
                }
            }
            Body::Stream { len, declared } => {
                if declared {
                    head.push_str(&format!("Content-Length: {len}\r\n"));
                }
                head.push_str("Connection: close\r\n\r\n");
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if out.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    streamed.fetch_add(n as u64, Ordering::SeqCst);
                    left -= n as u64;
                }
                return;
            }
        }
    }
}
