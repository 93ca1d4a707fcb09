//! Actors and a test bed shared by the integration tests.
#![allow(dead_code)]

mod actors;
pub mod aws;
pub mod fault;
pub mod proxy;
pub mod raw;
pub mod tls;

pub use actors::*;
use trebuchet::{
    ActorSystem, Client, ClientConfig, Encoding, ServerConfig, ServerHandle, TlsClientConfig,
    Transport,
};

/// Which transport a test bed uses.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Local,
    WebSocketBincode,
    WebSocketJson,
    Tcp,
    /// WebSocket over TLS (`wss://`), bincode frames, with a certificate from a test CA.
    WebSocketTls,
    /// TCP over TLS (`tls://`), with a certificate from a test CA.
    TcpTls,
    /// The actors of `src/bin/lambda_test_actors.rs`, running under `cargo lambda watch`, called
    /// with the Lambda invoke transport (see `aws`).
    Lambda,
}

/// An actor system with `probe`, `slow` (another Probe) and `counter` exposed, and a client to it
/// over one transport.
pub struct Bed {
    pub system: ActorSystem,
    pub server: Option<ServerHandle>,
    pub client: Client,
    pub transport: Transport,
    /// The counter of this bed (a Lambda bed gets one of its own in the shared table).
    pub counter_id: String,
    /// How the bed's clients verify its server (TLS kinds trust the bed's own CA).
    pub tls: TlsClientConfig,
}

impl Bed {
    pub async fn start(kind: Kind) -> Bed {
        Bed::start_with(kind, ClientConfig::default()).await
    }

    pub async fn start_with(kind: Kind, config: ClientConfig) -> Bed {
        Bed::start_configured(kind, config, ServerConfig::default()).await
    }

    /// A bed whose client and server (for network transports) have these configurations.
    pub async fn start_configured(
        kind: Kind,
        mut config: ClientConfig,
        mut server_config: ServerConfig,
    ) -> Bed {
        if let Kind::WebSocketTls | Kind::TcpTls = kind {
            let ca = tls::TestCa::new("Trebuchet test CA");
            server_config.tls = Some(ca.server_config(tls::SERVER_NAMES));
            config.tls = ca.client_config();
        }
        let address = "127.0.0.1:0".parse().unwrap();
        let system = ActorSystem::new();
        system
            .expose("probe", ProbeActor::default().into_actor())
            .unwrap();
        system
            .expose("slow", ProbeActor::default().into_actor())
            .unwrap();
        system
            .expose("counter", MemoryCounter::default().into_actor())
            .unwrap();
        let mut counter_id = "counter".to_owned();
        let (server, transport) = match kind {
            Kind::Local => (None, Transport::Local),
            Kind::WebSocketBincode | Kind::WebSocketJson | Kind::WebSocketTls => {
                config.encoding = match kind {
                    Kind::WebSocketJson => Encoding::Json,
                    _ => Encoding::Bincode,
                };
                let server = trebuchet::transport::websocket::serve(
                    address,
                    system.service(),
                    server_config,
                )
                .await
                .unwrap();
                let url = server.url().to_owned();
                (Some(server), Transport::WebSocket(url))
            }
            Kind::Tcp | Kind::TcpTls => {
                let server =
                    trebuchet::transport::tcp::serve(address, system.service(), server_config)
                        .await
                        .unwrap();
                // `host:port`, or `tls://host:port` for a TLS server.
                let address = server.url().to_owned();
                (Some(server), Transport::Tcp(address))
            }
            Kind::Lambda => {
                counter_id = aws::unique("counter");
                (None, aws::test_actors_transport().await.into())
            }
        };
        let tls = config.tls.clone();
        let client = system
            .connect_with(transport.clone(), config)
            .await
            .unwrap();
        Bed {
            system,
            server,
            client,
            transport,
            counter_id,
            tls,
        }
    }

    /// Another client (its own connection, for network transports) to the same actors.
    pub async fn second_client(&self) -> Client {
        let mut config = ClientConfig::default();
        config.tls = self.tls.clone();
        self.system
            .connect_with(self.transport.clone(), config)
            .await
            .unwrap()
    }

    pub fn probe(&self) -> ProbeClient {
        self.client.actor("probe")
    }

    pub fn counter(&self) -> CounterClient {
        self.client.actor(&self.counter_id)
    }
}

/// Increments each of `counters` by one, `times` times, every counter on a task of its own, all
/// at once; returns when all are done.
pub async fn increment_on_tasks(counters: impl IntoIterator<Item = CounterClient>, times: u64) {
    let tasks: Vec<_> = counters
        .into_iter()
        .map(|counter| {
            tokio::spawn(async move {
                for _ in 0..times {
                    counter.increment(1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}
