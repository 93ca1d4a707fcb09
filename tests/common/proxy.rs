//! A TCP proxy that a test can cut: every connection through it is closed (both ways) at once,
//! as when a network path fails; new connections are accepted as before.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CuttingProxy {
    addr: SocketAddr,
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    upstream: Arc<Mutex<SocketAddr>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// A proxy on a free local port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, watched) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let upstream = Arc::new(Mutex::new(upstream));
        let target = upstream.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = *target.lock().unwrap();
                let mut cut = watched.clone();
                cut.borrow_and_update();
                // Counted only once it listens for cuts: a cut made as soon as the count shows
                // this connection must reach it.
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                    // Both sockets are reset (not closed in order): each side sees its connection
                    // fail, and whatever was still on its way, even in its own receive buffer,
                    // is lost.
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                });
            }
        });
        CuttingProxy {
            addr,
            cuts,
            accepted,
            upstream,
            accept_loop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection open through the proxy.
    pub fn cut(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Sends the connections made from now on to `upstream` (another server).
    pub fn redirect(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// How many connections the proxy has accepted.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.cut();
    }
}
