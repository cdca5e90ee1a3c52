//! The Runtime API's connections acknowledge what they read at once (`TCP_QUICKACK`, re-armed
//! after every read), so that a runtime that writes small pieces in a row is not held back by
//! Nagle's algorithm waiting for a delayed ACK.
//!
//! The Runtime API's connection is request-answer, so Linux treats it as interactive
//! ("pingpong" mode) and delays its ACKs up to 40 ms, expecting to carry them on an answer.
//! A streamed response has no answer until its end: a runtime that does not set `TCP_NODELAY`
//! (the Rust `lambda_runtime` crate) writes its request head, then its prelude, then its first
//! chunk, and each small write after the first waits in its kernel for the ACK of the one before,
//! so the first chunk arrived ~42 ms late and ~2% of the others ~20 ms late. Setting
//! `TCP_QUICKACK` after a read sends an ACK that is pending at once and leaves pingpong mode (the
//! next small segment is acknowledged when read); the kernel re-enters it when the agent
//! answers, hence after every read.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections as [`QuickAck`] streams, with `TCP_NODELAY` (the agent's own answers are
/// small and complete).
pub(super) struct QuickAckListener(pub(super) TcpListener);

impl axum::serve::Listener for QuickAckListener {
    type Io = QuickAck;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (QuickAck(tcp), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A TCP stream that acknowledges at once what it reads.
pub(super) struct QuickAck(TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Best effort: without it, ACKs are only later.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.0, true);
        }
        read
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
