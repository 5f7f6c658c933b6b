//! Promotion checks of blue-green apps: an HTTP GET of a configured `http://` URL
//! that passes on a 2xx answer within a bounded time. The answer's body is not read.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A check's URL, split for the request: `http://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckUrl {
    host: String,
    port: u16,
    path: String,
}

impl CheckUrl {
    /// Parses `url`; the error says what is wrong.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        if url.len() > 2048 {
            return Err("is longer than 2048 characters".into());
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "{url:?} is not an http:// URL (https is not supported for checks)"
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad = || format!("{url:?} is not an http:// URL with a host");
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port.parse::<u16>().map_err(|_| bad())?;
                (host, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty()
            || port == 0
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
            || host.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// GETs the URL: `Ok(status)` for a 2xx answer within `timeout`, else why not.
    pub(crate) async fn get(&self, timeout: Duration) -> Result<u16, String> {
        match tokio::time::timeout(timeout, self.request()).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(status),
            Ok(Ok(status)) => Err(format!("answered HTTP {status}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn request(&self) -> Result<u16, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let connection = tokio::spawn(conn);
        let authority = if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = hyper::Request::get(self.path.as_str())
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "shipflow")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let answer = sender.send_request(request).await;
        connection.abort();
        answer
            .map(|a| a.status().as_u16())
            .map_err(|e| format!("request failed: {e}"))
    }
}

impl std::fmt::Display for CheckUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_a_host() {
        let u = CheckUrl::parse("http://api.shop:8080/ready?deep=1").expect("valid");
        assert_eq!(u.to_string(), "http://api.shop:8080/ready?deep=1");
        assert_eq!(
            CheckUrl::parse("http://api").expect("valid").to_string(),
            "http://api:80/"
        );
        for bad in [
            "https://api/ready",
            "api/ready",
            "http://",
            "http://user:pw@api/",
            "http://api:x/",
            "http://api/a b",
        ] {
            assert!(CheckUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
