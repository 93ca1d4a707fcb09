//! The TLS handshakes of the network transports (`wss://` WebSocket, `tls://` TCP) and the
//! connection they leave, with or without TLS. The settings are in [`crate::tls`].
//!
//! A server's TLS handshake counts against its `handshake_timeout`, together with the
//! transport's own handshake after it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::CertificateError;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::ConnectError;
use crate::tls::{TlsClientConfig, TlsServerConfig};

/// Runs the client side of a TLS handshake on `stream`, verifying the server as `host`.
pub(crate) async fn connect(
    tls: &TlsClientConfig,
    stream: TcpStream,
    host: &str,
) -> io::Result<MaybeTls> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{host}' is not a valid TLS server name: {error}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.rustls().clone());
    match connector.connect(name, stream).await {
        Ok(stream) => Ok(MaybeTls::Tls(Box::new(stream.into()))),
        Err(error) => Err(HandshakeFailure::wrap(error)),
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the server side of the TLS handshake on an accepted connection when `tls` is set (or
/// passes the connection through when it is not), before `deadline`. A client that does not
/// start with a TLS handshake is sent `refusal` (a message in its own protocol, if it has one
/// for that) and closed at once. `None` when the connection is not usable; the reason is
/// logged.
pub(crate) async fn accept(
    stream: TcpStream,
    tls: Option<&TlsServerConfig>,
    deadline: Instant,
    refusal: &[u8],
) -> Option<MaybeTls> {
    let Some(tls) = tls else {
        return Some(MaybeTls::Plain(stream));
    };
    let peer_addr = stream.peer_addr().ok();
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => {
            tracing::debug!(?peer_addr, "a client without TLS on a TLS server refused");
            refuse(stream, refusal).await;
            return None;
        }
        Ok(_) => return None,
        Err(_) => {
            tracing::debug!(?peer_addr, "TLS handshake timed out");
            return None;
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.rustls().clone());
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(MaybeTls::Tls(Box::new(stream.into()))),
        Ok(Err(error)) => {
            tracing::debug!(?peer_addr, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer_addr, "TLS handshake timed out");
            None
        }
    }
}

/// Takes in what a client without TLS has sent so far (so that closing sends a FIN rather
/// than a reset that could destroy `refusal` in flight), sends `refusal` and closes.
async fn refuse(mut stream: TcpStream, refusal: &[u8]) {
    let mut buffer = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut buffer) {
            Ok(read) if read > 0 => continue,
            _ => break,
        }
    }
    let send = async {
        stream.write_all(refusal).await?;
        stream.shutdown().await?;
        // Wait (briefly) for the client to close after reading the refusal.
        let _ = stream.read(&mut buffer).await;
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
}

/// A TLS handshake failure on its way out of a connector, inside an `io::Error`, so that the
/// transport reports it as [`ConnectError::Tls`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HandshakeFailure(String);

impl HandshakeFailure {
    fn wrap(error: io::Error) -> io::Error {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let message = match rustls_error {
            Some(rustls::Error::InvalidCertificate(certificate)) => {
                let why = match certificate {
                    CertificateError::UnknownIssuer => {
                        "it is not signed by a certificate authority the client trusts; "
                    }
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        "it has expired; "
                    }
                    _ => "",
                };
                format!("the server's certificate was refused: {why}{error}")
            }
            Some(rustls::Error::InvalidMessage(_)) => {
                format!("the server does not speak TLS (or not this version of it): {error}")
            }
            Some(_) => error.to_string(),
            None if error.kind() == io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the TLS handshake (does it serve TLS?)"
                    .to_owned()
            }
            None => error.to_string(),
        };
        io::Error::new(error.kind(), HandshakeFailure(message))
    }
}

/// The [`ConnectError`] of a client that could not connect to `address`: [`ConnectError::Tls`]
/// for a failed TLS handshake, [`ConnectError::Io`] otherwise.
pub(crate) fn connect_error(address: &str, source: io::Error) -> ConnectError {
    let address = address.to_owned();
    match source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<HandshakeFailure>())
    {
        Some(failure) => ConnectError::Tls {
            address,
            reason: failure.0.clone(),
        },
        None => ConnectError::Io { address, source },
    }
}

/// A network connection, with or without TLS: what the network transports read and write.
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

/// Writes are plain `write`s (no vectored writes): the framing hands over one contiguous buffer,
/// and `writev` of a single slice costs the kernel more than `send` of it.
impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake_error(error: rustls::Error) -> ConnectError {
        let failure = HandshakeFailure::wrap(io::Error::new(io::ErrorKind::InvalidData, error));
        connect_error("wss://example.test/", failure)
    }

    #[test]
    fn certificate_failures_say_so_in_words() {
        let error = handshake_error(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("certificate was refused"), "{message}");
        assert!(
            message.contains("not signed by a certificate authority"),
            "{message}"
        );
        let message = handshake_error(rustls::Error::InvalidCertificate(CertificateError::Expired))
            .to_string();
        assert!(message.contains("expired"), "{message}");
    }

    #[test]
    fn other_connect_failures_stay_io_errors() {
        let error = connect_error(
            "wss://example.test/",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert!(matches!(error, ConnectError::Io { .. }), "{error:?}");
        let eof = HandshakeFailure::wrap(io::ErrorKind::UnexpectedEof.into());
        let error = connect_error("wss://example.test/", eof);
        assert!(error.to_string().contains("does it serve TLS"), "{error}");
    }
}
