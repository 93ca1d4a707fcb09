//! A scripted HTTP endpoint on 127.0.0.1 for fault injection: it answers each request with the
//! next canned response (the last one repeats) and records each request (when it arrived, its
//! path, headers and body).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Canned {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A received request: when, which path, its headers and its body.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    /// Name (as sent) and value of each header, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    /// The value of the header `name` (any case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The endpoint; stops when dropped.
pub struct FaultEndpoint {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultEndpoint {
    pub async fn start(script: Vec<Canned>) -> FaultEndpoint {
        assert!(!script.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let (received, script) = (Arc::clone(&received), script.clone());
                    tokio::spawn(async move {
                        let (reader, mut writer) = socket.into_split();
                        let mut reader = BufReader::new(reader);
                        // Keep-alive: any number of requests per connection.
                        loop {
                            let mut request_line = String::new();
                            if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let path = request_line
                                .split_whitespace()
                                .nth(1)
                                .unwrap_or_default()
                                .to_owned();
                            let mut length = 0usize;
                            let mut headers = Vec::new();
                            loop {
                                let mut line = String::new();
                                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                let line = line.trim_end();
                                if line.is_empty() {
                                    break;
                                }
                                if let Some((name, value)) = line.split_once(':') {
                                    let value = value.trim();
                                    if name.eq_ignore_ascii_case("content-length") {
                                        length = value.parse().unwrap_or(0);
                                    }
                                    headers.push((name.to_owned(), value.to_owned()));
                                }
                            }
                            let mut body = vec![0; length];
                            if reader.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            let index = {
                                let mut received = received.lock().unwrap();
                                received.push(Received {
                                    at: Instant::now(),
                                    path,
                                    headers,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                received.len() - 1
                            };
                            let canned = &script[index.min(script.len() - 1)];
                            let mut response = format!(
                                "HTTP/1.1 {} Canned\r\ncontent-length: {}\r\n",
                                canned.status,
                                canned.body.len()
                            );
                            for (name, value) in &canned.headers {
                                response.push_str(&format!("{name}: {value}\r\n"));
                            }
                            response.push_str("\r\n");
                            response.push_str(&canned.body);
                            if writer.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
        };
        FaultEndpoint {
            url,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
