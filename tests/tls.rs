//! TLS over real sockets: `wss://` and `tls://` clients and servers with certificates made at
//! test time (see `common::tls`), certificates that must be refused, clients and servers that do
//! not agree on TLS, the handshake deadline, reconnection, and configurations from files. The
//! transport suite (tests/transport_suite.rs) runs every scenario over both TLS transports too.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::{SERVER_NAMES, TestCa};
use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trebuchet::middleware::Gateway;
use trebuchet::{
    ActorSystem, Client, ClientConfig, ConnectError, ServerConfig, ServerHandle, TlsClientConfig,
    TlsError, TlsServerConfig, Transport,
};

#[derive(Clone, Copy, Debug)]
enum Wire {
    WebSocket,
    Tcp,
}

fn system() -> ActorSystem {
    let system = ActorSystem::new();
    system
        .expose("probe", ProbeActor::default().into_actor())
        .unwrap();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    system
}

async fn serve_on(
    wire: Wire,
    system: &ActorSystem,
    addr: SocketAddr,
    tls: Option<TlsServerConfig>,
) -> ServerHandle {
    let mut config = ServerConfig::default();
    config.tls = tls;
    let gateway = Gateway::new(system.clone()).config(config);
    match wire {
        Wire::WebSocket => gateway.serve_websocket(addr).await.unwrap(),
        Wire::Tcp => gateway.serve_tcp(addr).await.unwrap(),
    }
}

async fn serve(wire: Wire, tls: Option<TlsServerConfig>) -> ServerHandle {
    serve_on(wire, &system(), "127.0.0.1:0".parse().unwrap(), tls).await
}

/// The server's address with the host `localhost`, in the form of `wire` (TLS).
fn tls_transport(wire: Wire, server: &ServerHandle) -> Transport {
    let port = server.local_addr().port();
    match wire {
        Wire::WebSocket => Transport::WebSocket(format!("wss://localhost:{port}/")),
        Wire::Tcp => Transport::Tcp(format!("tls://localhost:{port}")),
    }
}

fn trusting(tls: TlsClientConfig) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.tls = tls;
    config
}

async fn connect(transport: Transport, config: ClientConfig) -> Result<Client, ConnectError> {
    ActorSystem::new().connect_with(transport, config).await
}

async fn connect_error(transport: Transport, config: ClientConfig) -> ConnectError {
    match tokio::time::timeout(Duration::from_secs(10), connect(transport, config))
        .await
        .expect("the client gave up within 10 s")
    {
        Ok(_) => panic!("the client connected"),
        Err(error) => error,
    }
}

async fn calls_and_streams_by_host_name(wire: Wire) {
    let ca = TestCa::new("Trebuchet test CA");
    let server = serve(wire, Some(ca.server_config(SERVER_NAMES))).await;
    let url = server.url().to_owned();
    let scheme = match wire {
        Wire::WebSocket => "wss://",
        Wire::Tcp => "tls://",
    };
    assert!(url.starts_with(scheme), "{url}");
    let client = connect(tls_transport(wire, &server), trusting(ca.client_config()))
        .await
        .unwrap();
    let probe: ProbeClient = client.actor("probe");
    assert_eq!(probe.echo("over TLS".into()).await.unwrap(), "over TLS");
    let items: Vec<u64> = probe
        .count_up(500)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert!(items.into_iter().eq(1..=500));
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(4).await.unwrap(), 4);
}

#[tokio::test]
async fn calls_and_streams_over_wss_by_host_name() {
    calls_and_streams_by_host_name(Wire::WebSocket).await;
}

#[tokio::test]
async fn calls_and_streams_over_tls_tcp_by_host_name() {
    calls_and_streams_by_host_name(Wire::Tcp).await;
}

/// A certificate signed by a CA the client does not trust is refused, with an error that says
/// so; the same with the default web PKI roots.
async fn a_certificate_from_an_untrusted_ca_is_refused(wire: Wire) {
    let server_ca = TestCa::new("The server's CA");
    let server = serve(wire, Some(server_ca.server_config(SERVER_NAMES))).await;
    let other_ca = TestCa::new("Another CA");
    for config in [trusting(other_ca.client_config()), ClientConfig::default()] {
        let error = connect_error(tls_transport(wire, &server), config).await;
        assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("certificate"), "{message}");
        assert!(
            message.contains("not signed by a certificate authority the client trusts"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_wss_certificate_from_an_untrusted_ca_is_refused() {
    a_certificate_from_an_untrusted_ca_is_refused(Wire::WebSocket).await;
}

#[tokio::test]
async fn a_tls_tcp_certificate_from_an_untrusted_ca_is_refused() {
    a_certificate_from_an_untrusted_ca_is_refused(Wire::Tcp).await;
}

/// A certificate for another name (signed by a trusted CA) is refused, naming the problem.
async fn a_certificate_for_another_name_is_refused(wire: Wire) {
    let ca = TestCa::new("Trebuchet test CA");
    let server = serve(wire, Some(ca.server_config(&["other.example"]))).await;
    let error = connect_error(tls_transport(wire, &server), trusting(ca.client_config())).await;
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("localhost"), "{message}");
}

#[tokio::test]
async fn a_wss_certificate_for_another_name_is_refused() {
    a_certificate_for_another_name_is_refused(Wire::WebSocket).await;
}

#[tokio::test]
async fn a_tls_tcp_certificate_for_another_name_is_refused() {
    a_certificate_for_another_name_is_refused(Wire::Tcp).await;
}

/// A client without TLS is refused at once by a TLS server, and told to use TLS.
#[tokio::test]
async fn a_plain_client_of_a_tls_server_fails_clearly_and_promptly() {
    let ca = TestCa::new("Trebuchet test CA");
    for wire in [Wire::WebSocket, Wire::Tcp] {
        let server = serve(wire, Some(ca.server_config(SERVER_NAMES))).await;
        let addr = server.local_addr();
        let (transport, hint) = match wire {
            Wire::WebSocket => (Transport::WebSocket(format!("ws://{addr}/")), "wss://"),
            Wire::Tcp => (Transport::Tcp(addr.to_string()), "tls://"),
        };
        let started = tokio::time::Instant::now();
        let error = connect_error(transport, ClientConfig::default()).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{wire:?}: refused after {:?}",
            started.elapsed()
        );
        let message = error.to_string();
        assert!(message.contains(hint), "{wire:?}: {message}");
        // The server goes on serving TLS clients.
        let client = connect(tls_transport(wire, &server), trusting(ca.client_config()))
            .await
            .unwrap();
        let probe: ProbeClient = client.actor("probe");
        assert_eq!(probe.echo("still".into()).await.unwrap(), "still");
    }
}

/// A TLS client of a server without TLS fails with a TLS error.
#[tokio::test]
async fn a_tls_client_of_a_plain_server_fails_clearly() {
    for wire in [Wire::WebSocket, Wire::Tcp] {
        let server = serve(wire, None).await;
        let error = connect_error(tls_transport(wire, &server), ClientConfig::default()).await;
        assert!(
            matches!(error, ConnectError::Tls { .. }),
            "{wire:?}: {error}"
        );
        assert!(error.to_string().contains("TLS"), "{wire:?}: {error}");
    }
}

/// A connection that says nothing, or stops in the middle of its TLS handshake, is closed
/// after the server's `handshake_timeout`.
#[tokio::test]
async fn the_tls_handshake_is_bounded_by_the_handshake_timeout() {
    let ca = TestCa::new("Trebuchet test CA");
    for wire in [Wire::WebSocket, Wire::Tcp] {
        let mut config = ServerConfig::default();
        config.tls = Some(ca.server_config(SERVER_NAMES));
        config.handshake_timeout = Duration::from_millis(300);
        let gateway = Gateway::new(system()).config(config);
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = match wire {
            Wire::WebSocket => gateway.serve_websocket(addr).await.unwrap(),
            Wire::Tcp => gateway.serve_tcp(addr).await.unwrap(),
        };
        // Silent; then the first bytes of a TLS record and nothing more.
        for opening in [&[][..], &[0x16, 0x03, 0x01][..]] {
            let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
            stream.write_all(opening).await.unwrap();
            let mut buffer = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("the server closed the connection within 5 s");
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "{wire:?}: the server sent {read:?}"
            );
        }
    }
}

/// After the server restarts (same address, same certificate), the client reconnects over TLS
/// and goes on.
async fn the_client_reconnects_over_tls(wire: Wire) {
    let ca = TestCa::new("Trebuchet test CA");
    let tls = ca.server_config(SERVER_NAMES);
    let system = system();
    let server = serve_on(
        wire,
        &system,
        "127.0.0.1:0".parse().unwrap(),
        Some(tls.clone()),
    )
    .await;
    let addr = server.local_addr();
    let client = connect(tls_transport(wire, &server), trusting(ca.client_config()))
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(2).await.unwrap(), 2);
    server.shutdown().await;
    let _server = serve_on(wire, &system, addr, Some(tls)).await;
    let mut value = None;
    for _ in 0..40 {
        match counter.increment(3).await {
            Ok(total) => {
                value = Some(total);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(value, Some(5), "same system, same actor: the count goes on");
}

#[tokio::test]
async fn the_wss_client_reconnects_after_the_server_restarts() {
    the_client_reconnects_over_tls(Wire::WebSocket).await;
}

#[tokio::test]
async fn the_tls_tcp_client_reconnects_after_the_server_restarts() {
    the_client_reconnects_over_tls(Wire::Tcp).await;
}

/// A unique directory under the system's temporary directory.
fn temporary_directory() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "trebuchet-tls-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

/// Server certificate and key, and the client's roots, from PEM files.
#[tokio::test]
async fn configurations_from_pem_files() {
    let ca = TestCa::new("Trebuchet test CA");
    let (chain, key) = ca.server_pem(SERVER_NAMES);
    let directory = temporary_directory();
    let (chain_path, key_path, ca_path) = (
        directory.join("chain.pem"),
        directory.join("key.pem"),
        directory.join("ca.pem"),
    );
    std::fs::write(&chain_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let tls = TlsServerConfig::from_pem_files(&chain_path, &key_path).unwrap();
    let roots = TlsClientConfig::with_root_pem_file(&ca_path).unwrap();
    let server = serve(Wire::WebSocket, Some(tls)).await;
    let client = connect(tls_transport(Wire::WebSocket, &server), trusting(roots))
        .await
        .unwrap();
    let probe: ProbeClient = client.actor("probe");
    assert_eq!(probe.echo("from files".into()).await.unwrap(), "from files");

    // A key that does not belong to the certificate, a missing file, PEM without what is asked.
    let (_, other_key) = ca.server_pem(SERVER_NAMES);
    let (chain, _) = ca.server_pem(SERVER_NAMES);
    let error = TlsServerConfig::from_pem(chain.as_bytes(), other_key.as_bytes()).unwrap_err();
    assert!(matches!(error, TlsError::Rustls(_)), "{error:?}");
    let missing = directory.join("missing.pem");
    let error = TlsServerConfig::from_pem_files(&missing, &key_path).unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
    let error = TlsClientConfig::with_root_pem_file(&key_path).unwrap_err();
    assert!(matches!(error, TlsError::Pem { .. }), "{error:?}");
    std::fs::remove_dir_all(directory).unwrap();
}
