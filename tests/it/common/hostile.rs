//! A backend that misbehaves on purpose: a raw TCP server on 127.0.0.1:0 that reads one
//! request and answers with scripted bytes, for the cases a real vLLM never produces.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of a scripted answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes as they are.
    Raw(Vec<u8>),
    /// Write these bytes as one HTTP/1.1 chunk.
    Chunk(Vec<u8>),
    /// Wait.
    Pause(Duration),
    /// Close the connection (no terminating chunk).
    Close,
    /// Repeat a chunk forever, with a pause between (until the peer goes away).
    Forever(Vec<u8>, Duration),
    /// Repeat a chunk forever as fast as the socket takes it, from a thread of its own (a
    /// backend on another core that never lets the gateway's reads come up empty).
    Flood(Vec<u8>),
}

pub fn sse_head() -> Step {
    Step::Raw(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n".to_vec())
}

pub fn end_chunks() -> Step {
    Step::Raw(b"0\r\n\r\n".to_vec())
}

/// Serves the script to every POST (health checks and other GETs get an empty 200), as
/// many times as a kept-alive connection asks.
pub async fn start(script: Vec<Step>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                while let Some(is_post) = read_request(&mut conn).await {
                    if !is_post {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if conn.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if play(&mut conn, &script).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one request; Some(true) for a POST.
async fn read_request(conn: &mut TcpStream) -> Option<bool> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(head.starts_with("post "));
        }
    }
}

async fn play(conn: &mut TcpStream, script: &[Step]) -> std::io::Result<()> {
    for step in script {
        match step {
            Step::Raw(b) => conn.write_all(b).await?,
            Step::Chunk(b) => {
                conn.write_all(format!("{:x}\r\n", b.len()).as_bytes())
                    .await?;
                conn.write_all(b).await?;
                conn.write_all(b"\r\n").await?;
            }
            Step::Pause(d) => tokio::time::sleep(*d).await,
            Step::Close => {
                conn.shutdown().await?;
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            Step::Flood(b) => {
                let mut chunk = format!("{:x}\r\n", b.len()).into_bytes();
                chunk.extend_from_slice(b);
                chunk.extend_from_slice(b"\r\n");
                let std_conn = clone_blocking(conn)?;
                let written = tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut c = std_conn;
                    loop {
                        if c.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                });
                let _ = written.await;
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            Step::Forever(b, d) => loop {
                conn.write_all(format!("{:x}\r\n", b.len()).as_bytes())
                    .await?;
                conn.write_all(b).await?;
                conn.write_all(b"\r\n").await?;
                tokio::time::sleep(*d).await;
            },
        }
        conn.flush().await?;
    }
    Ok(())
}

/// A blocking handle on the same socket, for a writer thread (the socket turns blocking: the
/// async handle is not used again).
fn clone_blocking(conn: &TcpStream) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let std_conn = std::net::TcpStream::from(conn.as_fd().try_clone_to_owned()?);
    std_conn.set_nonblocking(false)?;
    Ok(std_conn)
}
