//! A small blocking HTTP/1.1 client over the agent's unix socket. The CNI
//! plugin must not start an async runtime, and the CLI does not need one, so
//! both use this. It understands `Content-Length` and chunked bodies.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the ciliate agent at {path} (is ciliate-agent running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the ciliate agent at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent answered {method} {uri} with {status}: {message}")]
    Status {
        method: String,
        uri: String,
        status: u16,
        message: String,
    },
    #[error("malformed answer from the agent to {uri}: {detail}")]
    Protocol { uri: String, detail: String },
    #[error("cannot decode the agent's answer to {uri}")]
    Decode {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status, for answers the agent gave.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    /// A client for `$CILIATE_SOCKET` or the default socket.
    pub fn from_env() -> Self {
        Self::new(crate::socket_path())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ClientError> {
        let body = self.request("GET", uri, None)?;
        decode(uri, &body)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        uri: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).expect("API types always serialize");
        let answer = self.request("POST", uri, Some(&json))?;
        decode(uri, &answer)
    }

    pub fn delete(&self, uri: &str) -> Result<(), ClientError> {
        self.request("DELETE", uri, None).map(drop)
    }

    /// Opens a streaming GET and calls `on_line` for every line of the body
    /// until the agent closes the stream or `on_line` returns false.
    pub fn stream_lines(
        &self,
        uri: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut stream = self.open_stream(uri, None)?;
        while let Some(line) = stream.next_line()? {
            if !on_line(&line) {
                break;
            }
        }
        Ok(())
    }

    /// Opens a streaming GET and returns once the agent answered with its
    /// head (for `/v1/monitor`: once it has subscribed this reader, so nothing
    /// after this call is missed). `head_timeout` bounds the wait for the
    /// head; the body is then read without a timeout, until the agent closes
    /// it or a [`StreamStopper`] stops it.
    pub fn open_stream(
        &self,
        uri: &str,
        head_timeout: Option<Duration>,
    ) -> Result<LineStream, ClientError> {
        let stream = self.connect(head_timeout)?;
        self.write_request(&stream, "GET", uri, None)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|source| self.io(source))?);
        let (status, headers) = self.read_head(&mut reader, uri)?;
        if status >= 300 {
            let body = self.read_body(&mut reader, uri, &headers)?;
            return Err(status_error("GET", uri, status, &body));
        }
        stream
            .set_read_timeout(None)
            .map_err(|source| self.io(source))?;
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        Ok(LineStream {
            client: Self {
                path: self.path.clone(),
                timeout: self.timeout,
            },
            uri: uri.to_string(),
            reader,
            chunked,
            pending: Vec::new(),
            done: false,
            stopper: StreamStopper {
                stream: Arc::new(stream),
                stopped: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    fn request(
        &self,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let stream = self.connect(self.timeout)?;
        let mut reader = self.send(&stream, method, uri, body)?;
        let (status, headers) = self.read_head(&mut reader, uri)?;
        let body = self.read_body(&mut reader, uri, &headers)?;
        if status >= 300 {
            return Err(status_error(method, uri, status, &body));
        }
        Ok(body)
    }

    fn connect(&self, timeout: Option<Duration>) -> Result<UnixStream, ClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        stream
            .set_read_timeout(timeout)
            .map_err(|source| self.io(source))?;
        stream
            .set_write_timeout(timeout)
            .map_err(|source| self.io(source))?;
        Ok(stream)
    }

    fn send<'s>(
        &self,
        stream: &'s UnixStream,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<BufReader<&'s UnixStream>, ClientError> {
        self.write_request(stream, method, uri, body)?;
        Ok(BufReader::new(stream))
    }

    fn write_request(
        &self,
        stream: &UnixStream,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let mut head = format!("{method} {uri} HTTP/1.1\r\nHost: ciliate\r\nConnection: close\r\n");
        if let Some(body) = body {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head.push_str("\r\n");
        let mut writer = stream;
        writer
            .write_all(head.as_bytes())
            .map_err(|source| self.io(source))?;
        if let Some(body) = body {
            writer.write_all(body).map_err(|source| self.io(source))?;
        }
        Ok(())
    }

    fn read_head(
        &self,
        reader: &mut impl BufRead,
        uri: &str,
    ) -> Result<(u16, Vec<(String, String)>), ClientError> {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|source| self.io(source))?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol(uri, format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|source| self.io(source))?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((k, v)) = trimmed.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()));
            }
        }
        Ok((status, headers))
    }

    fn read_body(
        &self,
        reader: &mut impl BufRead,
        uri: &str,
        headers: &[(String, String)],
    ) -> Result<Vec<u8>, ClientError> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            while let Some(piece) = self.read_chunk(reader, uri)? {
                body.extend_from_slice(&piece);
            }
            return Ok(body);
        }
        let mut body = Vec::new();
        if let Some(len) = header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| protocol(uri, format!("bad Content-Length {len}")))?;
            body.resize(len, 0);
            reader
                .read_exact(&mut body)
                .map_err(|source| self.io(source))?;
        } else {
            reader
                .read_to_end(&mut body)
                .map_err(|source| self.io(source))?;
        }
        Ok(body)
    }

    /// One chunk of a chunked body; `None` at the terminating zero-size chunk.
    fn read_chunk(
        &self,
        reader: &mut impl BufRead,
        uri: &str,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Ok(None);
        }
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| protocol(uri, format!("bad chunk size {line:?}")))?;
        if size == 0 {
            return Ok(None);
        }
        let mut piece = vec![0; size + 2];
        reader
            .read_exact(&mut piece)
            .map_err(|source| self.io(source))?;
        piece.truncate(size);
        Ok(Some(piece))
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The body of a streaming GET, line by line (see [`Client::open_stream`]).
pub struct LineStream {
    client: Client,
    uri: String,
    reader: BufReader<UnixStream>,
    chunked: bool,
    pending: Vec<u8>,
    done: bool,
    stopper: StreamStopper,
}

impl LineStream {
    /// The next non-empty line (without its line end); `None` once the agent
    /// closed the stream or it was stopped. A line cut off by the end of the
    /// stream is not returned.
    pub fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line.to_string()));
            }
            if self.done {
                return Ok(None);
            }
            match self.read_piece() {
                Ok(Some(piece)) => self.pending.extend_from_slice(&piece),
                Ok(None) => self.done = true,
                // Stopping shuts the socket down under the reader: not an error.
                Err(_) if self.stopper.is_stopped() => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
    }

    /// A handle that ends this stream from another thread.
    pub fn stopper(&self) -> StreamStopper {
        self.stopper.clone()
    }

    fn read_piece(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if self.chunked {
            return self.client.read_chunk(&mut self.reader, &self.uri);
        }
        let mut buf = vec![0; 4096];
        let n = self
            .reader
            .read(&mut buf)
            .map_err(|source| self.client.io(source))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }
}

impl Iterator for LineStream {
    type Item = Result<String, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line().transpose()
    }
}

/// Ends a [`LineStream`]: its reader sees the end of the stream.
#[derive(Clone, Debug)]
pub struct StreamStopper {
    stream: Arc<UnixStream>,
    stopped: Arc<AtomicBool>,
}

impl StreamStopper {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

fn protocol(uri: &str, detail: String) -> ClientError {
    ClientError::Protocol {
        uri: uri.to_string(),
        detail,
    }
}

fn status_error(method: &str, uri: &str, status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ApiError>(body)
        .map_or_else(|_| String::from_utf8_lossy(body).into_owned(), |e| e.error);
    ClientError::Status {
        method: method.to_string(),
        uri: uri.to_string(),
        status,
        message,
    }
}

fn decode<T: DeserializeOwned>(uri: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|source| ClientError::Decode {
        uri: uri.to_string(),
        source,
    })
}
